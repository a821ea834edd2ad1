"""The web app (`meshgen app`) end to end in a real browser.

The server runs in a subprocess (a free local port, a tiny random-weight generator so generation takes
seconds, ``TMPDIR`` pointed at a test folder so its files can be watched); Chromium (Debian's, headless,
driven by Playwright's bundled driver, no network) uploads files, runs every tab, downloads the results and
reads the error messages in the page. Skipped only when no Chromium is installed
(``apt-get install chromium``; ``scripts/setup_env.sh`` does it when run as root).

``MESHGEN_APP_SCREENSHOTS=1`` also writes a screenshot of each tab to ``docs/img/app_*.png``, generating
with the bundled checkpoint instead of the random one (slower: about a minute on a busy 2-core CPU).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import trimesh

ROOT = Path(__file__).resolve().parent.parent
DEMO_POINTS = ROOT / "assets" / "demo" / "table_points.ply"
DEMO_MESH = ROOT / "assets" / "demo" / "table.ply"
SCREENSHOTS = os.environ.get("MESHGEN_APP_SCREENSHOTS") == "1"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]  # WebGL in software for the 3D viewers
LOCAL = ("http://127.0.0.1", "data:", "blob:", "about:")
JOB_TIMEOUT_MS = 600_000 if SCREENSHOTS else 90_000

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200 if SCREENSHOTS else 300)]


def find_chromium() -> str | None:
    """``MESHGEN_CHROMIUM``, or Debian's ``chromium``, or another Chromium/Chrome on the PATH."""
    for candidate in (os.environ.get("MESHGEN_CHROMIUM"), shutil.which("chromium"), "/usr/lib/chromium/chromium",
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium; scripts/setup_env.sh installs it as root)")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, chromium, tiny_checkpoint):
    """``meshgen app`` on a free port with a tiny random-weight checkpoint; yields (url, tmpdir, log)."""
    checkpoint = tiny_checkpoint
    model_args = [] if SCREENSHOTS else ["--checkpoint", str(checkpoint)]  # screenshots: the bundled model
    tmpdir = tmp_path_factory.mktemp("server_tmp")
    log_path = tmpdir.parent / "server.log"
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "meshgen.cli", "app", *model_args,
                                 "--port", str(port), "--max-file-size", "1mb"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmpdir)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 150
    while True:
        if proc.poll() is not None:
            pytest.fail(f"`meshgen app` exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"`meshgen app` did not answer within 150 s:\n{log_path.read_text()}")
        time.sleep(0.5)
    yield url, tmpdir, log_path, proc
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def browser(server, chromium, tmp_path_factory):
    """One headless Chromium page (a fresh profile) on the app; records every request that is not local."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: install the 'dev' extra (scripts/setup_env.sh dev,app)")
    url = server[0]
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium_profile")), executable_path=chromium, args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1400, "height": 1000}, accept_downloads=True, timeout=60_000)
        page = context.new_page()
        page.external = []
        page.on("request", lambda r: None if r.url.startswith(LOCAL) else page.external.append(r.url))
        page.goto(url, timeout=60_000)
        page.wait_for_selector("#gen-input", timeout=60_000)
        yield page
        context.close()


def upload(page, elem_id: str, path: Path) -> None:
    """Put ``path`` into the file input of component ``elem_id`` and wait until it is listed."""
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
    page.locator(f"#{elem_id}").get_by_text(path.stem).first.wait_for(timeout=30_000)


def set_slider(page, elem_id: str, value: int) -> None:
    """Type ``value`` into slider ``elem_id``'s number box and wait until the slider itself has it."""
    from playwright.sync_api import expect

    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()
    expect(page.locator(f"#{elem_id} input[type=range]")).to_have_value(str(value), timeout=10_000)


def clear_upload(page, elem_id: str) -> None:
    page.locator(f"#{elem_id}").get_by_role("button", name="Clear").click()


def download(page, elem_id: str, suffix: str, dest: Path) -> Path:
    """Click the download link of the file ending in ``suffix`` in component ``elem_id``; returns the file."""
    link = page.locator(f"#{elem_id} a[download$='{suffix}']").first
    with page.expect_download(timeout=30_000) as info:
        link.click()
    path = dest / info.value.suggested_filename
    info.value.save_as(path)
    return path


def wait_drawn(page, elem_id: str) -> None:
    """Wait until the 3D viewer ``elem_id`` has a canvas and has drawn something on it (WebGL in software):
    over 1% of its pixels differ from the page's background."""
    from PIL import Image

    canvas = page.locator(f"#{elem_id} canvas")
    canvas.wait_for(timeout=JOB_TIMEOUT_MS)
    deadline, share = time.monotonic() + 30, 0.0
    while time.monotonic() < deadline:
        pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), dtype=np.int16)
        share = float((np.abs(pixels - pixels[0, 0]).sum(axis=-1) > 30).mean())
        if share > 0.01:
            return
        time.sleep(0.5)
    pytest.fail(f"the viewer #{elem_id} drew nothing ({100 * share:.2f}% of its pixels)")


def expect_error(page, text: str) -> str:
    """Wait for an error toast containing ``text``; returns its text and closes every toast."""
    toast = page.locator(".toast-body", has_text=text).first
    toast.wait_for(timeout=JOB_TIMEOUT_MS)
    message = toast.inner_text()
    for close in page.locator(".toast-close").all():
        close.click()
    return message


def shot(page, name: str) -> None:
    if SCREENSHOTS:
        page.wait_for_timeout(1500)  # let the 3D viewers draw
        page.screenshot(path=str(ROOT / "docs" / "img" / f"app_{name}.png"), full_page=True)


def corrupt_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\nthis is not a number\n" + os.urandom(64))
    return path


def test_generate_tab(browser, server, tmp_path):
    page = browser
    page.get_by_role("tab", name="Generate").click()
    upload(page, "gen-input", DEMO_POINTS)
    if SCREENSHOTS:  # as `make demo`: the best of 8 samples (4 guided, 4 free)
        set_slider(page, "gen-samples", 8)
    else:
        page.locator("#gen-max-faces input").fill("30")
    page.click("#gen-run")
    for viewer in ("gen-mesh", "gen-points", "gen-baseline"):  # the viewers show the result
        wait_drawn(page, viewer)
    assert "faces" in page.locator("#gen-summary").inner_text()
    obj = download(page, "gen-downloads", ".obj", tmp_path)
    mesh = trimesh.load(obj, file_type="obj", process=False, force="mesh")
    assert len(mesh.faces) > 0
    # back at the input's scale and place: inside the input points' bounding box (up to the guide's slack)
    from tokenizers3d.io import load_point_cloud

    points = load_point_cloud(DEMO_POINTS).points
    lo, hi = points.min(axis=0), points.max(axis=0)
    slack = 0.1 * float((hi - lo).max())
    assert np.all(mesh.vertices >= lo - slack) and np.all(mesh.vertices <= hi + slack)
    shot(page, "generate")

    clear_upload(page, "gen-input")
    upload(page, "gen-input", corrupt_file(tmp_path, "broken.ply"))
    page.click("#gen-run")
    message = expect_error(page, "broken.ply")
    assert "broken.ply:" in message and str(server[1]) not in message  # names the file, not the server's folders


def test_tokenize_tab(browser, tmp_path):
    page = browser
    page.get_by_role("tab", name="Tokenize").click()
    upload(page, "tok-input", DEMO_MESH)
    page.get_by_label("Tokenizer").click()
    page.get_by_role("option", name="adjacent").click()
    page.click("#tok-run")
    wait_drawn(page, "tok-decoded")
    summary = page.locator("#tok-summary").inner_text()
    assert "adjacent" in summary and "decodes exactly" in summary and "yes" in summary
    page.locator("#tok-strip img").wait_for(timeout=10_000)
    npz = download(page, "tok-downloads", ".npz", tmp_path)
    # the file `meshgen tokenize` writes: `meshgen detokenize` reads it back to the table's faces
    from tokenizers3d.tokenfile import load_tokens

    decoded = load_tokens(npz).decode().mesh
    assert len(decoded.faces) == len(trimesh.load(DEMO_MESH, process=False).faces)
    shot(page, "tokenize")

    clear_upload(page, "tok-input")
    upload(page, "tok-input", corrupt_file(tmp_path, "broken_mesh.ply"))
    page.click("#tok-run")
    assert "broken_mesh.ply:" in expect_error(page, "broken_mesh.ply")


def test_segment_tab(browser, tmp_path):
    page = browser
    page.get_by_role("tab", name="Segment").click()
    upload(page, "seg-input", DEMO_MESH)
    n_views, size = (6, "192") if SCREENSHOTS else (3, "96")  # the test: few views, small images
    set_slider(page, "seg-views", n_views)
    page.get_by_label("Image size (pixels a view)").click()
    page.get_by_role("option", name=size, exact=True).click()
    page.click("#seg-run")
    wait_drawn(page, "seg-mesh")
    assert page.locator("#seg-masks img").count() == n_views  # one image of masks per view
    assert "segments" in page.locator("#seg-summary").inner_text()
    ply = download(page, "seg-downloads", ".ply", tmp_path)
    from tokenizers3d.io import read_ply_face_labels

    labels = read_ply_face_labels(ply)
    assert len(labels) == len(trimesh.load(ply, process=False).faces) > 0 and labels.min() >= 0
    shot(page, "segment")

    clear_upload(page, "seg-input")
    upload(page, "seg-input", corrupt_file(tmp_path, "broken_seg.obj"))
    page.click("#seg-run")
    assert "broken_seg.obj:" in expect_error(page, "broken_seg.obj")


def test_body_tab(browser, tmp_path):
    page = browser
    page.get_by_role("tab", name="Body").click()
    upload(page, "body-input", ROOT / "assets" / "body" / "person-0.png")
    page.click("#body-run")
    wait_drawn(page, "body-mesh")
    page.locator("#body-overlay img").wait_for(timeout=JOB_TIMEOUT_MS)
    assert "pose tokens" in page.locator("#body-summary").inner_text()
    obj = download(page, "body-downloads", ".obj", tmp_path)
    mesh = trimesh.load(obj, file_type="obj", process=False, force="mesh")
    assert len(mesh.faces) == 27420  # the full Anny mesh of `meshgen body`
    shot(page, "body")

    clear_upload(page, "body-input")
    broken = tmp_path / "broken_person.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    upload(page, "body-input", broken)
    page.click("#body-run")
    assert "broken_person.png:" in expect_error(page, "broken_person.png")


def test_upload_over_the_limit_is_refused(browser, server, tmp_path):
    page = browser
    page.get_by_role("tab", name="Generate").click()
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((200_000, 3), np.float32))  # 2.4 MB, the server was started with --max-file-size 1mb
    clear_upload(page, "gen-input")
    page.locator("#gen-input input[type=file]").set_input_files(str(big))
    message = expect_error(page, "big.npy")
    assert "maximum allowed size" in message and "1.0 Mb" in message  # refused in the page; the server stays up
    assert not list(server[1].rglob("big.npy"))  # never stored


def test_no_network_and_files_removed(browser, server):
    url, tmpdir, log_path, proc = server
    page = browser
    assert page.external == [], f"the page asked for something outside the machine: {page.external[:5]}"
    roots = list(tmpdir.glob("meshgen-app-*"))
    assert len(roots) == 1 and any((roots[0] / "sessions").iterdir())  # every file lives in the one folder
    page.close()  # closing the tab ends the session: its folder goes
    deadline = time.monotonic() + 30
    while any((roots[0] / "sessions").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any((roots[0] / "sessions").iterdir())
    proc.terminate()  # stopping the server removes the rest
    proc.wait(timeout=60)
    assert not roots[0].exists(), log_path.read_text()


# ---- without a browser ------------------------------------------------------------------------------------


def test_cancel_stops_a_generation_at_the_next_token(tmp_path, tiny_checkpoint):
    from meshgen.app import JobCancelled, generate_job, progress_reporter
    from meshgen.pipeline import load_generator

    model = load_generator(tiny_checkpoint).eval()

    cancel, reports = threading.Event(), []
    callback = progress_reporter(lambda fraction, text: reports.append(fraction), cancel, every=0.0)
    (tmp_path / "a").mkdir()
    res = generate_job(model, DEMO_POINTS, tmp_path / "a", max_faces=5, baseline=False, progress=callback)
    assert res.summary["faces"] > 0 and reports and all(0 <= f <= 1 for f in reports)
    cancel.set()  # what the Cancel button does
    (tmp_path / "b").mkdir()
    with pytest.raises(JobCancelled):
        generate_job(model, DEMO_POINTS, tmp_path / "b", max_faces=5, baseline=False, progress=callback)
    assert not any((tmp_path / "b").iterdir())  # stopped before anything was written


def test_cancel_stops_a_segmentation_between_views(tmp_path):
    from meshgen.app import EXAMPLE_MESH, JobCancelled, progress_reporter, segment_job

    cancel, reports = threading.Event(), []

    def report(fraction, text):
        reports.append(text)
        if len(reports) == 2:
            cancel.set()  # the Cancel button, pressed while the second view's masks are made

    callback = progress_reporter(report, cancel, every=0.0, unit="views")
    with pytest.raises(JobCancelled):
        segment_job(EXAMPLE_MESH, tmp_path, views=4, image_size=64, progress=callback)
    assert reports[:2] == ["0 of 4 views", "1 of 4 views"]
    assert not any(tmp_path.iterdir())  # nothing written


def test_viewer_file_is_y_up_in_the_unit_cube_with_exact_face_colours():
    from meshgen.app import viewer_glb

    box = trimesh.creation.box(extents=(4.0, 2.0, 1.0))  # Z-up, 4 x 2 x 1
    box.apply_translation([10.0, 0.0, 0.0])
    colors = np.array([[255 * (i % 2), 17 * i, 200, 255] for i in range(12)], dtype=np.uint8)
    glb = trimesh.load(io.BytesIO(viewer_glb(box, face_colors=colors)), file_type="glb", force="mesh", process=False)
    assert np.allclose(glb.extents, [1.0, 0.25, 0.5])  # longest side 1; height (z = 1 -> 0.25) is now y
    assert np.allclose(glb.bounds.mean(axis=0), 0.0)
    assert len(glb.faces) == 24  # each face twice, wound both ways (seen from both sides)
    assert np.allclose(glb.triangles[12:], glb.triangles[:12, ::-1])
    corner_colors = glb.visual.vertex_colors[glb.faces]  # (2F, 3, 4): every corner has its face's colour
    assert np.array_equal(corner_colors, np.repeat(np.tile(colors, (2, 1))[:, None], 3, axis=1))


def test_missing_gradio_names_the_extra(monkeypatch):
    from meshgen.app import import_gradio
    from tokenizers3d.errors import MeshgenError

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    with pytest.raises(MeshgenError, match=r"'app' extra.*meshgen\[app\]"):
        import_gradio()
