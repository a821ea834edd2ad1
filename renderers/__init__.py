"""Multi-view rendering (PyTorch3D cameras), PNG previews and mesh segmentation from 2D masks.

Main entry points::

    from renderers import render_views, render_preview, MeshSegmenter, segment_mesh_file

    out = render_views(mesh, RenderSettings(n_views=12, image_size=256))   # RenderOutput
    render_preview(mesh, "mesh.png")                                       # shaded grid with edges
    result = MeshSegmenter().segment(mesh)                                 # SegmentationResult
    segment_mesh_file("in.obj", "parts.ply", views=12)                     # + parts.npy, parts.png

SAM (optional ``segment-anything``): ``MeshSegmenter(SamMaskGenerator.from_checkpoint(path))``.
See ``docs/segmentation.md``. The names are imported on first use (PyTorch3D loads only when needed).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ViewRig": "cameras", "rig_from_eyes": "cameras", "sphere_rig": "cameras",
    "GeometricMaskGenerator": "masks", "GeometricSettings": "masks", "Mask": "masks", "MaskGenerator": "masks",
    "get_mask_generator": "masks", "register_mask_generator": "masks",
    "preview_image": "preview", "render_preview": "preview",
    "MeshRenderer": "render", "RenderOutput": "render", "RenderSettings": "render", "render_views": "render",
    "SamArchitecture": "sam", "SamMaskGenerator": "sam", "SamSettings": "sam", "build_sam": "sam", "load_sam": "sam",
    "MeshSegmenter": "segment", "RevoteSettings": "segment", "SegmentationResult": "segment",
    "SegmentSettings": "segment", "revote": "segment", "segment_mesh_file": "segment",
    "segment_by_concave_edges": "segment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"renderers.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'renderers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
