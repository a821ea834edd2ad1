"""Multi-view rendering (PyTorch3D cameras), PNG previews and mesh segmentation from 2D masks.

Main entry points::

    from renderers import render_views, render_preview, MeshSegmenter, segment_mesh_file

    out = render_views(mesh, RenderSettings(n_views=12, image_size=256))   # RenderOutput
    render_preview(mesh, "mesh.png")                                       # shaded grid with edges
    result = MeshSegmenter().segment(mesh)                                 # SegmentationResult
    segment_mesh_file("in.obj", "parts.ply", views=12)                     # + parts.npy, parts.png

SAM (optional ``segment-anything``): ``MeshSegmenter(SamMaskGenerator.from_checkpoint(path))``.
See ``docs/segmentation.md``.
"""

from .cameras import ViewRig, rig_from_eyes, sphere_rig
from .masks import GeometricMaskGenerator, GeometricSettings, Mask, MaskGenerator
from .preview import preview_image, render_preview
from .render import MeshRenderer, RenderOutput, RenderSettings, render_views
from .sam import SamArchitecture, SamMaskGenerator, SamSettings, build_sam, load_sam
from .segment import (
    MeshSegmenter,
    RevoteSettings,
    SegmentationResult,
    SegmentSettings,
    revote,
    segment_mesh_file,
)

__all__ = [
    "GeometricMaskGenerator", "GeometricSettings", "Mask", "MaskGenerator", "MeshRenderer", "MeshSegmenter",
    "RenderOutput", "RenderSettings", "RevoteSettings", "SamArchitecture", "SamMaskGenerator", "SamSettings",
    "SegmentSettings", "SegmentationResult", "ViewRig", "build_sam", "load_sam", "preview_image",
    "render_preview", "render_views", "revote", "rig_from_eyes", "segment_mesh_file", "sphere_rig",
]
