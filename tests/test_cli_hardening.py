"""The bad-output catalogue: every file-writing command against outputs it cannot or must not write.

For each command (preview, tokenize, detokenize, segment, generate, dataset, batch tokenize) and each bad
output (a read-only folder, a full file system, an existing directory, a parent that is a regular file, the
input itself, the input through a symbolic link): exit code 2, exactly one stderr line naming the path, no
traceback, and no file on disk changed (the inputs keep their bytes; no partial or temporary file is left).

Commands run in-process through ``meshgen.cli.main`` (a subprocess would import PyTorch again for every
case); a few subprocess tests check the real console entry. Read-only folders: ``chmod 0o555``, or a
read-only tmpfs when running as root (root writes through permissions); full disk: a tiny tmpfs that is
filled up. The tmpfs cases are skipped, with the reason, where mounting is not possible.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import trimesh

from meshgen.cli import main
from tokenizers3d.errors import MeshOutputError
from tokenizers3d.io import atomic_paths, refuse_output_inside, refuse_overwrite

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------------------------------------- fixtures


@dataclass
class Inputs:
    root: Path
    mesh: Path  # box.obj
    tokens: Path  # box.npz, written by `meshgen tokenize`
    mesh_dir: Path  # a folder with one mesh, for `batch tokenize`


@pytest.fixture
def inputs(tmp_path, capfd) -> Inputs:
    root = tmp_path / "in"
    (root / "meshes").mkdir(parents=True)
    mesh = root / "box.obj"
    trimesh.creation.box(extents=(4.0, 2.0, 1.0)).export(mesh)
    shutil.copy(mesh, root / "meshes" / "box.obj")
    tokens = root / "box.npz"
    assert run(["tokenize", mesh, "-o", tokens], capfd)[0] == 0
    return Inputs(root, mesh, tokens, root / "meshes")


def _mount_tmpfs(path: Path, options: str) -> bool:
    if not IS_ROOT or shutil.which("mount") is None:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "meshgen-test", str(path)], capture_output=True)
    return proc.returncode == 0


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def readonly_folder(path: Path):
    """``path`` as a folder nobody can write into: chmod 0o555, or (as root) a read-only tmpfs."""
    path.mkdir()
    if not IS_ROOT:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if not _mount_tmpfs(path, "ro,size=64k"):
        pytest.skip("running as root, where chmod 0o555 does not stop writes, and a read-only tmpfs cannot be "
                    "mounted here")
    try:
        yield path
    finally:
        _unmount(path)


@contextlib.contextmanager
def full_folder(path: Path):
    """``path`` on a tiny tmpfs filled to the last byte (writes fail with ENOSPC)."""
    path.mkdir()
    if not _mount_tmpfs(path, "size=64k"):
        pytest.skip("a full file system needs a tiny tmpfs, and mounting one needs root and mount permission")
    try:
        fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            os.close(fd)
        yield path
    finally:
        _unmount(path)


# ---------------------------------------------------------------------------------------------- helpers


def run(argv, capfd) -> tuple[int, str, str]:
    """``meshgen ARGV`` in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
    out, err = capfd.readouterr()
    return code, out, err


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file below ``roots`` (hidden temporary files included) and a hash of its bytes."""
    files = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def assert_one_line_error(code: int, err: str, path: Path | str, *, match: str | None = None) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and str(path) in lines[0], lines[0]
    if match is not None:
        assert match in lines[0], lines[0]


# ------------------------------------------------------------------------------------- the catalogue

# command -> (argv for an input set and an output path, output file name, which input `-o` may not be)
COMMANDS = {
    "preview": (lambda i, o, c: ["preview", i.mesh, "-o", o, "--views", "2", "--size", "32"], "p.png", "mesh"),
    "tokenize": (lambda i, o, c: ["tokenize", i.mesh, "-o", o], "t.npz", "mesh"),
    "detokenize": (lambda i, o, c: ["detokenize", i.tokens, "-o", o], "m.obj", "tokens"),
    "segment": (lambda i, o, c: ["segment", i.mesh, "-o", o, "--views", "2"], "s.ply", "mesh"),
    "generate": (lambda i, o, c: ["generate", i.mesh, "-o", o, "--checkpoint", c, "--max-faces", "6", "--seed", "1"],
                 "g.obj", "mesh"),
}
FOLDER_COMMANDS = {
    "batch": lambda i, o: ["batch", "tokenize", i.mesh_dir, "-o", o, "--workers", "1"],
    "dataset": lambda i, o: ["dataset", "-o", o, "-n", "2", "--workers", "1", "--family", "box"],
}
BAD = ["readonly", "full", "directory", "parent-is-file", "input", "input-symlink"]
EXPECT = {"directory": "is a directory", "parent-is-file": "is a file, not a folder", "input": "is the input file",
          "input-symlink": "is the input file", "full": "no space left", "readonly": "cannot write"}


@contextlib.contextmanager
def bad_output(kind: str, tmp_path: Path, name: str, the_input: Path):
    """An output path of the given kind for a command that writes the file ``name``."""
    if kind == "readonly":
        with readonly_folder(tmp_path / "ro") as ro:
            yield ro / name
    elif kind == "full":
        with full_folder(tmp_path / "full") as full:
            yield full / name
    elif kind == "directory":
        (tmp_path / name).mkdir()
        yield tmp_path / name
    elif kind == "parent-is-file":
        (tmp_path / "plain").write_text("a file, not a folder\n")
        yield tmp_path / "plain" / name
    elif kind == "input":
        yield Path(os.path.relpath(the_input))  # another spelling of the same file
    elif kind == "input-symlink":
        (tmp_path / "links").mkdir()
        link = tmp_path / "links" / the_input.name
        link.symlink_to(the_input)
        yield link
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_output_file(command, kind, tmp_path, inputs, tiny_checkpoint, capfd, one_thread):
    make_argv, name, input_key = COMMANDS[command]
    the_input = getattr(inputs, input_key)
    with bad_output(kind, tmp_path, name, the_input) as out:
        before = snapshot(tmp_path)
        code, _, err = run(make_argv(inputs, out, tiny_checkpoint), capfd)
        assert_one_line_error(code, err, out, match=EXPECT[kind])
        assert snapshot(tmp_path) == before  # inputs unchanged; no output, partial file or temporary file


@pytest.mark.parametrize("kind", ["readonly", "full", "file", "parent-is-file", "input", "inside-input"])
@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_bad_output_folder(command, kind, tmp_path, inputs, capfd):
    if command == "dataset" and kind in ("input", "inside-input"):
        pytest.skip("`meshgen dataset` reads no input")
    expect = {"file": "is a file, expected a folder", "inside-input": "inside the input folder",
              "input": "inside the input folder"}.get(kind, EXPECT.get(kind))
    with contextlib.ExitStack() as stack:
        if kind == "file":
            out = tmp_path / "shards"
            out.write_text("a file, not a folder\n")
        elif kind == "input":
            out = inputs.mesh_dir
        elif kind == "inside-input":
            out = inputs.mesh_dir / "shards"
        else:
            out = stack.enter_context(bad_output(kind, tmp_path, "shards", inputs.mesh))
        before = snapshot(tmp_path)
        code, _, err = run(FOLDER_COMMANDS[command](inputs, out), capfd)
        assert_one_line_error(code, err, out, match=expect)
        assert snapshot(tmp_path) == before


# -------------------------------------------------------------------- generate: mesh + preview together


def test_generate_commits_mesh_and_preview_together(tmp_path, inputs, tiny_checkpoint, capfd, monkeypatch,
                                                    one_thread):
    import renderers.preview

    out = tmp_path / "g.obj"
    out.write_text("# the old mesh\n")

    def disk_full(path, image):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(renderers.preview, "write_png", disk_full)
    before = snapshot(tmp_path)
    code, _, err = run(COMMANDS["generate"][0](inputs, out, tiny_checkpoint), capfd)
    assert_one_line_error(code, err, out, match="no space left")
    assert snapshot(tmp_path) == before  # the old mesh untouched, no PNG, no temporary file
    monkeypatch.undo()
    code, out_text, err = run(COMMANDS["generate"][0](inputs, out, tiny_checkpoint), capfd)
    assert code == 0, err
    assert out.read_text() != "# the old mesh\n" and out.with_suffix(".png").stat().st_size > 100


def test_atomic_paths_puts_old_files_back_when_a_rename_fails(tmp_path, monkeypatch):
    a, b = tmp_path / "a.obj", tmp_path / "a.png"
    a.write_text("old a")
    b.write_text("old b")
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == b:
            raise PermissionError(13, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(MeshOutputError, match="a.png: cannot write: permission denied"):
        with atomic_paths(a, b) as (ta, tb):
            ta.write_text("new a")
            tb.write_text("new b")
    monkeypatch.undo()
    assert a.read_text() == "old a" and b.read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.obj", "a.png"]


def test_atomic_paths_leaves_other_os_errors_alone(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_paths(tmp_path / "x.obj"):
            open(tmp_path / "no-such-input.obj").close()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_refused_before_the_work(tmp_path, inputs, capfd, monkeypatch):
    """What ``chmod 0o555`` does for a normal user (root ignores it, so ``os.access`` is stood in for)."""
    import renderers.preview

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    monkeypatch.setattr(renderers.preview, "preview_image", lambda *a, **k: pytest.fail("rendered anyway"))
    code, _, err = run(COMMANDS["preview"][0](inputs, tmp_path / "p.png", None), capfd)
    assert_one_line_error(code, err, tmp_path / "p.png", match=f"cannot write: folder {tmp_path} is not writable")


# ------------------------------------------------------------------------------- same-file detection


def test_refuse_overwrite_sees_through_links_and_spellings(tmp_path, monkeypatch):
    src = tmp_path / "a.obj"
    src.write_text("x")
    os.link(src, tmp_path / "hard.obj")
    (tmp_path / "soft.obj").symlink_to(src)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for out in ["../a.obj", tmp_path / "hard.obj", tmp_path / "soft.obj", tmp_path / "sub" / ".." / "a.obj"]:
        with pytest.raises(MeshOutputError, match="is the input file"):
            refuse_overwrite(out, None, src)
    refuse_overwrite(tmp_path / "b.obj", src)  # a new file: fine
    refuse_overwrite(tmp_path / "a.obj.png", src)


def test_refuse_output_inside(tmp_path):
    inp = tmp_path / "meshes"
    (inp / "deep").mkdir(parents=True)
    for out in [inp, inp / "shards", inp / "deep" / "x", tmp_path / "meshes" / ".." / "meshes"]:
        with pytest.raises(MeshOutputError, match="inside the input folder"):
            refuse_output_inside(out, inp)
    refuse_output_inside(tmp_path / "shards", inp)
    refuse_output_inside(tmp_path / "meshes2", inp)  # a sibling whose name starts the same


# ---------------------------------------------------------------------------------------- usage errors


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshgen.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args,match", [
    (["tokenize", "x.obj"], "Missing option '-o' / '--out'"),
    (["tokenize", "x.obj", "-o", "t.npz", "--bits", "many"], "'--bits'"),
    (["tokenize", "x.obj", "-o", "t.npz", "--nosuch"], "No such option: --nosuch"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_usage_errors_are_one_line(args, match):
    proc = _cli(*args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and match in lines[0] and "Traceback" not in proc.stderr
    assert "╭" not in proc.stderr and proc.stdout == ""


def test_help_exits_0():
    proc = _cli("generate", "--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout and proc.stderr == ""
    assert "--constraints" in proc.stdout and "--no-constraints" in proc.stdout
    assert "--no-no-" not in proc.stdout


HEAVY = {"torch", "pytorch3d", "open3d", "trimesh", "scipy"}
_PROBE = ("import sys\nfrom meshgen.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
          f"print('HEAVY', *sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r})), file=sys.stderr)")


@pytest.mark.parametrize("args,allowed", [(["--help"], set()), (["tokenize", "--help"], set()),
                                          (["info", "MESH", "--json"], set())])
def test_start_up_imports_stay_light(args, allowed, inputs):
    """`meshgen --help` and `info` load none of the heavy libraries (`info` reads OBJ/OFF/STL/PLY with numpy)."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, *[str(inputs.mesh) if a == "MESH" else a for a in args]],
                          capture_output=True, text=True, timeout=120)
    heavy = set(proc.stderr.strip().splitlines()[-1].split()[1:])
    assert heavy <= allowed, proc.stderr


def test_unwritable_output_in_a_subprocess(tmp_path, inputs):
    """The console entry itself: one line, exit 2, nothing written (a parent that is a file fails for root too)."""
    out = inputs.mesh / "t.npz"
    proc = _cli("tokenize", inputs.mesh, "-o", out)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {out}: cannot write: {inputs.mesh} is a file, not a folder"]


def test_boolean_options_old_and_new_spellings(tmp_path, inputs, tiny_checkpoint, capfd, one_thread):
    base = ["generate", inputs.mesh, "--checkpoint", tiny_checkpoint, "--max-faces", "4", "--seed", "1"]
    code, _, err = run([*base, "-o", tmp_path / "a.obj", "--no-constraints", "--no-preview"], capfd)
    assert code == 0, err
    assert (tmp_path / "a.obj").exists() and not (tmp_path / "a.png").exists()
    code, _, err = run([*base, "-o", tmp_path / "b.obj", "--constraints", "--preview"], capfd)
    assert code == 0, err
    assert (tmp_path / "b.png").exists()
    for flag in ["--lenient", "--strict"]:
        code, _, err = run(["detokenize", inputs.tokens, "-o", tmp_path / f"d{flag}.obj", flag], capfd)
        assert code == 0, err
    mesh = trimesh.load(tmp_path / "d--strict.obj", process=False)
    assert len(mesh.faces) == 12 and np.ptp(mesh.vertices, axis=0).max() == pytest.approx(4.0, abs=0.01)


def test_generate_open_edge_weight_option(tmp_path, inputs, tiny_checkpoint, capfd, one_thread):
    """--open-edge-weight reaches the ranking; a negative weight is refused before any work, nothing written."""
    base = ["generate", inputs.mesh, "--checkpoint", tiny_checkpoint, "--max-faces", "4", "--seed", "1", "--samples", "2",
            "--no-preview"]
    code, _, err = run([*base, "-o", tmp_path / "a.obj", "--open-edge-weight", "4"], capfd)
    assert code == 0, err
    assert (tmp_path / "a.obj").exists()
    code, _, err = run([*base, "-o", tmp_path / "b.obj", "--open-edge-weight", "-1"], capfd)
    assert code == 2 and "open-edge-weight" in err and not (tmp_path / "b.obj").exists()


def test_generate_edges_once_option(tmp_path, inputs, tiny_checkpoint, capfd, one_thread, monkeypatch):
    """--edges-once reaches the sampler; an unknown value is refused before any work, nothing written."""
    import meshgen.generate as G

    seen = []
    real = G.sample_sequences
    monkeypatch.setattr(G, "sample_sequences", lambda *a, **kw: seen.append(kw["edges_once"]) or real(*a, **kw))
    base = ["generate", inputs.mesh, "--checkpoint", tiny_checkpoint, "--max-faces", "4", "--seed", "1",
            "--samples", "2", "--no-preview"]
    code, _, err = run([*base, "-o", tmp_path / "a.obj", "--edges-once", "all"], capfd)
    assert code == 0, err
    assert (tmp_path / "a.obj").exists() and seen == ["all"]
    code, _, err = run([*base, "-o", tmp_path / "b.obj", "--edges-once", "maybe"], capfd)
    assert code == 2 and "--edges-once" in err and not (tmp_path / "b.obj").exists()
