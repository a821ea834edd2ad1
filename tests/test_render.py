"""Multi-view rendering and previews: cameras, pix_to_face against projections, backends, PNG grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from renderers import MeshRenderer, RenderSettings, render_preview, rig_from_eyes, sphere_rig
from renderers.cameras import fibonacci_directions, framing_distance, ring_directions
from renderers.preview import face_edges, preview_image
from renderers.render import project_to_ndc
from tokenizers3d.errors import MeshInputError


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def unit_cube() -> trimesh.Trimesh:
    return trimesh.creation.box((1.0, 1.0, 1.0))


def asymmetric_mesh() -> trimesh.Trimesh:
    a = trimesh.creation.box((0.6, 0.3, 0.2)).apply_translation((0.1, 0.05, 0.0))
    b = trimesh.creation.icosphere(subdivisions=1, radius=0.15).apply_translation((-0.3, -0.1, 0.2))
    return trimesh.util.concatenate([a, b])


def test_camera_on_plus_z_sees_only_the_top_faces():
    d = 3.0
    rig = rig_from_eyes(np.array([[0.0, 0.0, d]]), fov=40.0)
    out = MeshRenderer(RenderSettings(image_size=64)).render(unit_cube(), rig=rig)
    p2f = out.pix_to_face[0]
    visible = np.unique(p2f[p2f >= 0])
    assert len(visible) == 2  # the two triangles of the +z square
    assert np.allclose(out.face_normals[visible], [0.0, 0.0, 1.0], atol=1e-6)
    centre = p2f[32, 32]
    assert centre in visible
    assert out.depth[0, 32, 32] == pytest.approx(d - 0.5, abs=1e-4)
    assert np.allclose(out.normals[0, 32, 32], [0.0, 0.0, 1.0], atol=1e-6)
    assert np.allclose(out.points[0, 32, 32, 2], 0.5, atol=1e-5)
    # the square spans tan-projected 0.5 / (d - 0.5) of the half-height: corners are background
    assert p2f[0, 0] == -1 and p2f[-1, -1] == -1
    assert out.depth[0, 0, 0] == -1.0


def test_pix_to_face_agrees_with_camera_projection():
    mesh = asymmetric_mesh()
    rig = sphere_rig(6, distance=2.5, fov=40.0)
    out = MeshRenderer(RenderSettings(image_size=96, normalize=False)).render(mesh, rig=rig)
    centres = torch.as_tensor(np.array(mesh.triangles_center), dtype=torch.float32)
    checked = 0
    for v in range(rig.n_views):
        screen = out.cameras[v].transform_points_screen(centres[None], image_size=((96, 96),))[0].numpy()
        p2f = out.pix_to_face[v]
        counts = np.bincount(p2f[p2f >= 0], minlength=len(mesh.faces))
        for f in np.nonzero(counts >= 40)[0]:  # clearly visible faces: their centroid pixel shows them
            x, y = screen[f, :2]
            assert p2f[int(y), int(x)] == f
            checked += 1
    assert checked >= 10


def test_indices_refer_to_the_original_mesh_in_every_view():
    mesh = asymmetric_mesh()
    out = MeshRenderer(RenderSettings(n_views=5, image_size=48)).render(mesh)
    assert out.pix_to_face.shape == (5, 48, 48) and out.pix_to_face.dtype == np.int64
    assert out.rgb.shape == (5, 48, 48, 3) and out.normals.shape == (5, 48, 48, 3)
    seen = out.pix_to_face[out.pix_to_face >= 0]
    assert seen.max() < len(mesh.faces)
    # every view sees something, and later views are not offset by v * F
    assert all((out.pix_to_face[v] >= 0).any() for v in range(5))
    fg = out.foreground
    assert np.allclose(np.linalg.norm(out.normals[fg], axis=-1), 1.0, atol=1e-5)


def test_torch_backend_matches_pytorch3d_kernel():
    mesh = trimesh.util.concatenate([asymmetric_mesh(), trimesh.creation.icosphere(subdivisions=2, radius=0.3)])
    outs = {b: MeshRenderer(RenderSettings(n_views=3, image_size=64, backend=b, faces_per_pixel=2)).render(mesh)
            for b in ("torch", "pytorch3d")}
    a, b = outs["torch"], outs["pytorch3d"]
    mismatch = (a.pix_to_face_layers != b.pix_to_face_layers).mean()
    assert mismatch < 1e-3
    same = a.pix_to_face == b.pix_to_face
    assert np.allclose(a.depth[same], b.depth[same], atol=1e-4)
    assert np.allclose(a.points[same], b.points[same], atol=1e-4)


def test_dense_mesh_renders_on_cpu():
    mesh = trimesh.creation.icosphere(subdivisions=5)  # 20k faces
    out = MeshRenderer(RenderSettings(n_views=2, image_size=64)).render(mesh)
    assert (out.pix_to_face >= 0).mean() > 0.3
    assert len(np.unique(out.pix_to_face[0])) > 500


def test_cameras_are_deterministic_and_frame_the_unit_cube():
    assert np.allclose(fibonacci_directions(12), fibonacci_directions(12))
    assert np.allclose(np.linalg.norm(fibonacci_directions(7), axis=1), 1.0)
    rings = ring_directions(8, (30.0, -20.0))
    assert np.allclose(np.degrees(np.arcsin(rings[:, 2]))[[0, 1]], [30.0, -20.0])
    rig = sphere_rig(12, fov=40.0)
    assert np.allclose(np.linalg.norm(rig.eyes, axis=1), framing_distance(40.0))
    corners = torch.as_tensor(unit_cube().vertices, dtype=torch.float32)
    ndc = project_to_ndc(corners, rig.to_pytorch3d())
    assert float(ndc[..., :2].abs().max()) < 1.0
    # a camera straight above still gets a valid rotation
    top = rig_from_eyes(np.array([[0.0, 0.0, 2.0]]))
    assert np.allclose(top.R[0].T @ top.R[0], np.eye(3), atol=1e-9)


def test_settings_and_inputs_are_validated():
    with pytest.raises(ValueError):
        RenderSettings(n_views=0)
    with pytest.raises(ValueError):
        RenderSettings(backend="opengl")
    with pytest.raises(MeshInputError):
        MeshRenderer().render(trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), dtype=np.int64), process=False))
    with pytest.raises(ValueError, match="face_colors"):
        MeshRenderer(RenderSettings(n_views=1, image_size=16)).render(unit_cube(), face_colors=np.zeros((3, 3)))


def test_face_edges_mark_changes_and_silhouettes():
    p2f = np.array([[-1, -1, -1, -1],
                    [-1, 0, 0, -1],
                    [-1, 0, 1, 1],
                    [-1, 0, 1, 1]])
    interior, silhouette = face_edges(p2f)  # the image border counts as background
    assert np.argwhere(interior).tolist() == [[2, 2]]
    assert silhouette.sum() == (p2f >= 0).sum() - 1
    assert not silhouette[0].any()


def test_preview_png_shows_the_mesh_centred(tmp_path):
    path = render_preview(unit_cube(), tmp_path / "cube.png", n_views=4, image_size=64)
    assert path.exists() and not list(tmp_path.glob(".cube.png*"))  # written atomically
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 100 and image.shape[1] > 100
    tile = image[:image.shape[0] // 2 - 2, :image.shape[1] // 2 - 2]  # first view
    h, w = tile.shape[:2]
    assert tile[h // 2, w // 2].max() < 250  # mesh at the centre
    for corner in (tile[0, 0], tile[0, -1], tile[-1, 0], tile[-1, -1]):
        assert corner.min() == 255  # background in the corners
    assert (image.sum(axis=-1) < 200).any()  # dark edge lines drawn


def test_preview_uses_face_colors_and_can_skip_edges():
    mesh = unit_cube()
    colors = np.tile([255, 0, 0, 255], (len(mesh.faces), 1)).astype(np.uint8)
    image = preview_image(mesh, n_views=1, image_size=48, face_colors=colors, edges=False)
    fg = image.min(axis=-1) < 250
    assert fg.any()
    px = image[fg].astype(int)
    assert (px[:, 0] >= px[:, 1]).all() and (px[:, 0] >= px[:, 2]).all()
