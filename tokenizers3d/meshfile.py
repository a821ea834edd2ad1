"""Mesh files read with numpy alone: OBJ, OFF, STL and PLY into the triangles trimesh reads from them.

``meshgen info``, ``tokenize`` and ``detokenize`` start in a fraction of a second because they read meshes
here instead of importing trimesh (which loads SciPy and networkx, most of a second).
:func:`read_mesh_file` gives the triangles ``trimesh.load(path, process=False)`` gives: the same corner
coordinates, the same triangles in the same order, polygons split the way trimesh splits them. The vertex
lists agree too, except in OBJ files with texture or normal references, where trimesh splits a vertex per
texture coordinate (the same coordinates, repeated); :func:`~tokenizers3d.mesh.canonicalize` makes the two
results identical. Anything this module does not read exactly as trimesh does gives None, and the caller
reads the file with trimesh instead: other formats (GLB/GLTF), OBJ files with materials, tabs, line
continuations, comments after data or relative indices into vertices defined later; PLY files with texture
coordinates, edges or an unusual header; several solids in one ASCII STL; OFF files with comments or
colours on faces; and every file trimesh would refuse or read in some surprising way (these then get
trimesh's error message).

:func:`check_obj`, the pre-scan that refuses OBJ files trimesh would read into a wrong mesh without an error,
lives here too; the OBJ reader uses the face references it parsed.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MeshInputError

Arrays = tuple[np.ndarray, np.ndarray]  # vertices (V, 3) float64, faces (F, 3) int64


# ---- the OBJ pre-scan --------------------------------------------------------------------------------------
_OBJ_INT = rb"-?\d+"
_OBJ_REF_FORMS = (  # v, v/vt, v/vt/vn, v//vn
    _OBJ_INT,
    _OBJ_INT + b"/" + _OBJ_INT,
    _OBJ_INT + b"/" + _OBJ_INT + b"/" + _OBJ_INT,
    _OBJ_INT + b"//" + _OBJ_INT,
)
_OBJ_FACE = re.compile(  # a whole face line: three or more references, all of one form, optional comment
    rb"f(?:" + rb"|".join(rb"(?:[ \t]+" + form + rb"){3,}" for form in _OBJ_REF_FORMS) + rb")[ \t]*(?:#.*)?\r?"
)
_OBJ_VERTEX = re.compile(rb"v(?:[ \t]+\S+){3,}[ \t]*\r?")  # three or more coordinates
_OBJ_FACE_BODIES = re.compile(rb"\nf[ \t]([^\n]*)")
_OBJ_SENTINEL = b" -4611686018427387904 "  # ends each face line in the vectorized pass (-2**62: no real reference)


@dataclass(frozen=True)
class ObjFaces:
    """The face lines of an OBJ file as :func:`check_obj` read them.

    Attributes
    ----------
    refs : (R,) int64
        The vertex reference of every corner of every face line, in file order, as written: 1-based, or
        negative (relative to the end of the vertices read so far).
    sizes : (L,) int64
        Corners on each face line (at least 3).
    n_vertices : int
        ``v`` lines in the file.
    """

    refs: np.ndarray
    sizes: np.ndarray
    n_vertices: int


def _obj_lines(data: bytes) -> list[bytes]:
    return data.replace(b"\\\r\n", b" ").replace(b"\\\n", b" ").split(b"\n")  # joins continued lines


def _check_obj_slow(data: bytes) -> str | None:
    """Line by line: the first problem with a vertex or face line of an OBJ file (messages name the line)."""
    n_vertices = 0
    late: tuple[int, int] | None = None  # first (line, index) above the vertices defined so far
    for no, raw in enumerate(_obj_lines(data), 1):
        if raw[:1] not in (b"v", b"f") or raw[1:2] not in (b" ", b"\t"):
            continue
        line = raw.decode("utf-8", "replace").strip()
        if raw[:1] == b"v":
            if not _OBJ_VERTEX.fullmatch(raw.rstrip(b"\r")):
                return f"line {no}: vertex {line!r} has fewer than 3 coordinates (file cut short?)"
            n_vertices += 1
            continue
        if not _OBJ_FACE.fullmatch(raw.rstrip(b"\r")):
            return f"line {no}: malformed face {line!r} (fewer than 3 vertices, or a reference cut short?)"
        refs = [int(r.split("/", 1)[0]) for r in line.split("#", 1)[0].split()[1:]]
        if 0 in refs:
            return f"line {no}: face {line!r} refers to vertex 0; OBJ vertex indices start at 1"
        if min(refs) < -n_vertices:
            return f"line {no}: face {line!r} refers {-min(refs)} vertices back, but only {n_vertices} come before it"
        if max(refs) > n_vertices and late is None:
            late = (no, max(refs))
    if late is not None and late[1] > n_vertices:
        return f"line {late[0]}: face refers to vertex {late[1]}, but the file has only {n_vertices} vertices"
    return None


def check_obj(path: Path, max_faces: int | None, data: bytes | None = None) -> ObjFaces | None:
    """Refuse OBJ files that trimesh would read into a wrong mesh without an error.

    trimesh maps a face index 0 (OBJ indices start at 1) to another vertex, and keeps a last line cut
    short (``f 1 2``, ``f 1/1 2/2 3/``, ``v 1 2``) as a wrong face or 2-D vertices. One vectorized pass
    checks the common case; a line-by-line pass finds the offending line when something looks wrong.
    Polygons count as one face each for ``max_faces`` here (the exact check follows the triangulation).

    Parameters
    ----------
    path : Path
        Named in the errors; read unless ``data`` is given.
    max_faces : int or None
    data : bytes, optional
        The file's content.

    Returns
    -------
    ObjFaces or None
        The face references the vectorized pass read (also when the careful pass then had to check
        relative or out-of-range indices; empty arrays for a file without face lines); None when only the
        careful pass could read the face lines (comments on them, continued lines, mixed reference forms).

    Raises
    ------
    MeshInputError
        Naming the file and, where there is one, the offending line.
    """
    if data is None:
        data = path.read_bytes()
    lines = data.rstrip().rsplit(b"\n", 1)
    last = lines[-1].strip()
    if last[:2] in (b"f ", b"f\t", b"v ", b"v\t"):
        matcher = _OBJ_FACE if last[:1] == b"f" else _OBJ_VERTEX
        if not matcher.fullmatch(last):
            raise MeshInputError(path, f"last line {last.decode('utf-8', 'replace')!r} is incomplete (file cut short?)")
    bodies = _OBJ_FACE_BODIES.findall(b"\n" + data)
    if max_faces is not None and len(bodies) > max_faces:
        raise MeshInputError(path, f"has at least {len(bodies):,} faces, more than the limit of {max_faces:,}")
    n_vertices = data.count(b"\nv ") + data.count(b"\nv\t") + (data[:2] in (b"v ", b"v\t"))
    if not bodies:
        return ObjFaces(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), n_vertices)
    blob = _OBJ_SENTINEL.join(bodies) + _OBJ_SENTINEL  # a sentinel after each face line
    found = None
    suspect = b"#" in blob or b"\\" in data  # comments or continued lines: let the careful pass decide
    if not suspect:
        first_ref = bodies[0].split(maxsplit=1)[0] if bodies[0].split() else b""
        parts, slashes = 1, 0  # integers per reference (v, v/vt, v/vt/vn; v//vn is read as v/0/vn)
        if b"/" in blob:
            blob = blob.replace(b"//", b"/0/")
            parts, slashes = first_ref.replace(b"//", b"/0/").count(b"/") + 1, blob.count(b"/")
            blob = blob.replace(b"/", b" ")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a token that is not an integer stops np.fromstring with a warning
            try:
                flat = np.fromstring(blob, dtype=np.int64, sep=" ")
            except (DeprecationWarning, ValueError):
                flat = None
        if flat is not None:
            ends = np.flatnonzero(flat == int(_OBJ_SENTINEL))
            per_line = np.diff(ends, prepend=-1) - 1  # integers on each face line
            flat = flat[flat != int(_OBJ_SENTINEL)]
        if (flat is None or len(ends) != len(bodies) or np.any(per_line % parts) or np.any(per_line < 3 * parts)
                or slashes != len(flat) // parts * (parts - 1)):
            suspect = True  # fewer than 3 references, mixed reference forms or stray tokens
        else:
            idx = flat[::parts]
            found = ObjFaces(idx, per_line // parts, n_vertices)
            suspect = bool(idx.min() <= 0 or idx.max() > n_vertices)  # 0, relative, or out of range
    if suspect:
        problem = _check_obj_slow(data)
        if problem is not None:
            raise MeshInputError(path, problem)
    return found


# ---- shared helpers ----------------------------------------------------------------------------------------
def _numbers(blob: bytes, n_lines: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray] | None:
    """Tokens on each of the ``n_lines`` lines of ``blob`` (lines joined by newlines) and all tokens read as
    numbers by ``np.fromstring`` (trimesh's parser); None when a token is not exactly one number."""
    if n_lines == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=dtype)
    a = np.frombuffer(blob, dtype=np.uint8)
    newline = a == 10
    if int(newline.sum()) != n_lines - 1:
        return None
    space = newline | (a == 32) | (a == 9) | (a == 13)
    start = ~space
    start[1:] &= space[:-1]
    counts = np.bincount(np.cumsum(newline)[start], minlength=n_lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(blob, dtype=dtype, sep=" ")
        except (DeprecationWarning, ValueError):
            return None
    if len(values) != int(counts.sum()):  # "1-2" is one token but two numbers
        return None
    return counts, values


def _triangulate(sizes: np.ndarray, corners: np.ndarray, *, in_order: bool = False) -> np.ndarray:
    """Split polygons into triangles as trimesh does.

    A polygon of ``k`` corners ``c0 .. c(k-1)`` becomes the fan ``(c0, ci, ci+1)``, except that a quad
    becomes ``(c0, c1, c2), (c2, c3, c0)``. With ``in_order`` (trimesh's OBJ reader when face lines have
    different lengths) each polygon's triangles stay at its place; otherwise
    (``trimesh.geometry.triangulate_quads``) the triangles come first, then the first halves of all quads,
    then their second halves, then the fans of the larger polygons.

    Parameters
    ----------
    sizes : (P,) int
        Corners of each polygon, at least 3.
    corners : (sum(sizes),) int
        The polygons' corners, one polygon after the other.

    Returns
    -------
    (T, 3) int64
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    corners = np.asarray(corners, dtype=np.int64)
    if len(sizes) and bool(np.all(sizes == 3)):
        return corners.reshape(-1, 3)
    n_tri = sizes - 2
    poly = np.repeat(np.arange(len(sizes)), n_tri)
    j = np.arange(int(n_tri.sum())) - np.repeat(np.cumsum(n_tri) - n_tri, n_tri)  # triangle within its polygon
    s = (np.cumsum(sizes) - sizes)[poly]  # the polygon's first corner
    tri = np.stack([corners[s], corners[s + j + 1], corners[s + j + 2]], axis=1)
    quad = sizes[poly] == 4
    second = np.flatnonzero(quad & (j == 1))
    tri[second] = np.stack([corners[s[second] + 2], corners[s[second] + 3], corners[s[second]]], axis=1)
    if not in_order:
        group = np.where(sizes[poly] == 3, 0, np.where(quad, 1 + j, 3))
        tri = tri[np.argsort(group, kind="stable")]
    return tri


def _split_lines(data: bytes) -> bytes | None:
    """``data`` with CRLF line ends made LF; None when it has other line breaks ``str.splitlines`` knows
    (lone CR, form feed, ...) or bytes outside ASCII."""
    if re.search(rb"[\x0b\x0c\x1c-\x1e\x80-\xff]", data):
        return None
    if b"\r" in data:
        if data.count(b"\r") != data.count(b"\r\n"):
            return None
        data = data.replace(b"\r\n", b"\n")
    return data


def _used_vertices(vertices: np.ndarray, faces: np.ndarray) -> Arrays:
    """Only the vertices the faces use, in their order, and the faces renumbered."""
    used = np.zeros(len(vertices), dtype=bool)
    used[faces] = True
    remap = np.cumsum(used) - 1
    return vertices[used], remap[faces]


# ---- OBJ ---------------------------------------------------------------------------------------------------
_OBJ_OTHER_LINE = re.compile(rb"^(?!(?:v|vt|vn|vp|f|o|g|s) |#| *$)", re.M)  # any other kind of line
_OBJ_BODIES = {key: re.compile(rb"^" + key + rb" ([^\n]*)", re.M) for key in (b"v", b"vt", b"vn", b"f")}
_OBJ_FACE_LINES = {  # every face line, references all of the form of the file's first one
    form.count(b"/") + 2 * (b"//" in form): re.compile(rb"(?: *R(?: +R)+ *\n)*".replace(b"R", form))
    for form in _OBJ_REF_FORMS
}


def _read_obj(path: Path, max_faces: int | None) -> Arrays | None:
    """The ``v`` lines and the ``f`` lines (polygons split as trimesh splits them) of an OBJ file; ``vt``,
    ``vn``, ``o``, ``g``, ``s`` and comment lines are read past, any other line leaves the file to trimesh.

    Like trimesh, keeps only the vertices the faces use. Refuses what :func:`check_obj` refuses.
    """
    data = path.read_bytes()
    scan = check_obj(path, max_faces, data)
    if scan is None or not len(scan.sizes):  # the careful pass had to read the faces, or no faces (a point cloud)
        return None
    text = _split_lines(data)
    if text is None or any(s in text for s in (b"\t", b"\\", b"usemtl", b"mtllib")) or _OBJ_OTHER_LINE.search(text):
        return None
    faces = _OBJ_BODIES[b"f"].findall(text)
    first = faces[0].split(maxsplit=1)[0]
    lines = _OBJ_FACE_LINES.get(first.count(b"/") + 2 * (b"//" in first))
    if lines is None or not lines.fullmatch(b"\n".join(faces) + b"\n"):
        return None  # a reference of another form, or cut by a space ("3 /1/1"): trimesh reads these differently
    rows = {}
    for key in (b"v", b"vt", b"vn"):  # vt and vn lines only need to read cleanly, as trimesh reads them
        bodies = _OBJ_BODIES[key].findall(text)
        blob = b"\n".join(bodies)
        if b"#" in blob or b"+e" in blob or b"-e" in blob:  # trimesh edits "+e" and "-e" out of these lines
            return None
        got = _numbers(blob, len(bodies))
        if got is None or (len(bodies) and bool(np.any(got[0] != got[0][0]))):
            return None  # trimesh reshapes by the first line's count: all lines must have it
        rows[key] = got
    counts, values = rows[b"v"]
    if len(counts) != scan.n_vertices or not len(counts) or counts[0] < 3:
        return None
    vertices = values.reshape(len(counts), -1)[:, :3]
    refs, n = scan.refs, len(vertices)
    lined = b"\n" + text
    if np.any(refs < 0) and lined.rfind(b"\nv ") > lined.find(b"\nf "):
        return None  # trimesh counts relative indices back from the last vertex of the file, not of the line
    corners = np.where(refs < 0, refs + n, refs - 1)
    in_order = bool(np.any(scan.sizes != scan.sizes[0]))  # trimesh's loop over lines of different lengths
    return _used_vertices(vertices, _triangulate(scan.sizes, corners, in_order=in_order))


# ---- PLY ---------------------------------------------------------------------------------------------------
_PLY_TYPES = {  # trimesh's names of PLY types
    b"char": "i1", b"uchar": "u1", b"short": "i2", b"ushort": "u2", b"int": "i4", b"int8": "i1",
    b"int16": "i2", b"int32": "i4", b"int64": "i8", b"uint": "u4", b"uint8": "u1", b"uint16": "u2",
    b"uint32": "u4", b"uint64": "u8", b"float": "f4", b"float16": "f2", b"float32": "f4", b"float64": "f8",
    b"double": "f8",
}
_PLY_FORMATS = {b"ascii": "<", b"binary_little_endian": "<", b"binary_big_endian": ">"}
_PLY_UV = (("texture_u", "texture_v"), ("u", "v"), ("s", "t"))  # vertex texture coordinates trimesh reads
_PLY_INDEX_NAMES = ("vertex_indices", "vertex_index")


@dataclass
class _PlyElement:
    name: str
    length: int
    props: list[tuple[str, str, str | None]]  # (name, numpy type, numpy type of the list length or None)

    def names(self) -> list[str]:
        return [p[0] for p in self.props]


def _ply_header(data: bytes) -> tuple[bool, dict[str, _PlyElement], int] | None:
    """(ascii, elements in file order, offset of the data); None for a header this reader does not take."""
    end = re.search(rb"^[ \t]*end_header[ \t\r]*\n", data[:65536], re.M)
    if end is None:
        return None
    lines = data[:end.start()].split(b"\n")
    if len(lines) < 2 or lines[0].strip() != b"ply":
        return None
    fmt = lines[1].split()
    if len(fmt) != 3 or fmt[0] != b"format" or fmt[1] not in _PLY_FORMATS or fmt[2] != b"1.0":
        return None
    endian = _PLY_FORMATS[fmt[1]]
    elements: dict[str, _PlyElement] = {}
    current = None
    for raw in lines[2:-1] if lines[-1] == b"" else lines[2:]:
        words = raw.split()
        if not words or b"end_header" in words or any(b > 127 for b in raw):
            return None  # (trimesh ends the header at any line with an end_header word)
        if words[0] in (b"comment", b"obj_info"):
            continue
        if words[0] == b"element" and len(words) == 3 and words[2].isdigit():
            name = words[1].decode()
            if name in elements:
                return None
            current = elements[name] = _PlyElement(name, int(words[2]), [])
        elif words[0] == b"property" and current is not None and len(words) in (3, 5):
            if len(words) == 3 and words[1] in _PLY_TYPES:
                prop = (words[2].decode(), endian + _PLY_TYPES[words[1]], None)
            elif len(words) == 5 and words[1] == b"list" and words[2] in _PLY_TYPES and words[3] in _PLY_TYPES:
                prop = (words[4].decode(), endian + _PLY_TYPES[words[3]], endian + _PLY_TYPES[words[2]])
            else:
                return None
            if prop[0] in current.names():
                return None
            current.props.append(prop)
        else:
            return None
    return fmt[1] == b"ascii", elements, end.end()


def _ply_elements_ok(elements: dict[str, _PlyElement]) -> bool:
    """Vertices with x, y, z and no texture coordinates; faces with one list of vertex indices and no texture
    coordinates; no edges; every other property a single number; no element without properties."""
    vertex, face = elements.get("vertex"), elements.get("face")
    if vertex is None or not vertex.length or "edge" in elements:
        return False
    names = set(vertex.names())
    if not {"x", "y", "z"} <= names or any({u, v} <= names for u, v in _PLY_UV):
        return False
    for el in elements.values():
        lists = [p for p in el.props if p[2] is not None]
        if not el.props:
            return False
        if el is face:
            if len(lists) != 1 or lists[0][0] not in _PLY_INDEX_NAMES or "texcoord" in el.names():
                return False
        elif lists:
            return False
    return True


def _ply_ascii(body: bytes, elements: dict[str, _PlyElement]) -> dict[str, dict[str, np.ndarray]] | None:
    """Each element's properties, one row per line, values read as trimesh reads them (as float64, then cast
    to the property's type); a list property gives its length per row, and its entries under ``NAME + '\\0corners'``."""
    body = _split_lines(body)
    if body is None:
        return None
    needed = sum(el.length for el in elements.values())
    lines = body.split(b"\n", needed)
    if len(lines) < needed:
        return None
    got = _numbers(b"\n".join(lines[:needed]), needed)
    if got is None:
        return None
    counts, values = got
    offsets = np.cumsum(counts) - counts
    out: dict[str, dict[str, np.ndarray]] = {}
    row = 0
    for el in elements.values():
        c, o = counts[row:row + el.length], offsets[row:row + el.length]
        row += el.length
        k_list = next((k for k, p in enumerate(el.props) if p[2] is not None), None)
        n = np.zeros(el.length, dtype=np.int64)  # entries of the list property in each row
        if k_list is not None:
            if np.any(c <= k_list):
                return None
            n = values[o + k_list]
            if np.any(n != np.floor(n)) or np.any(n < 3):
                return None
            n = n.astype(np.int64)
        if np.any(c != len(el.props) + n):
            return None
        cols: dict[str, np.ndarray] = {}
        for k, (name, dtype, count_dtype) in enumerate(el.props):
            at = o + k + (n if k_list is not None and k > k_list else 0)
            if count_dtype is None:
                cols[name] = values[at].astype(dtype)
                continue
            entries = np.repeat(at + 1, n) + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            cols[name] = n
            cols[name + "\0corners"] = values[entries].astype(dtype)
        out[el.name] = cols
    return out


def _ply_binary(data: bytes, offset: int, elements: dict[str, _PlyElement]) -> dict[str, dict[str, np.ndarray]] | None:
    """Each element's properties read as trimesh reads them: a list has, in every row, the length it has in
    the element's first row."""
    out: dict[str, dict[str, np.ndarray]] = {}
    pos = offset
    for el in elements.values():
        if el.length == 0:
            continue
        fields, lists = [], {}
        for k, (_, dtype, count_dtype) in enumerate(el.props):
            if count_dtype is None:
                fields.append((f"p{k}", dtype))
                continue
            at = pos + np.dtype(fields).itemsize if fields else pos
            size = np.dtype(count_dtype).itemsize
            if at + size > len(data):
                return None
            n = int(np.frombuffer(data, dtype=count_dtype, count=1, offset=at)[0])
            if n < 3 or n * np.dtype(dtype).itemsize > len(data):
                return None
            fields += [(f"n{k}", count_dtype), (f"p{k}", dtype, (n,))]
            lists[k] = n
        rec_type = np.dtype(fields)
        if pos + el.length * rec_type.itemsize > len(data):
            return None
        rec = np.frombuffer(data, dtype=rec_type, count=el.length, offset=pos)
        pos += el.length * rec_type.itemsize
        cols: dict[str, np.ndarray] = {}
        for k, (name, _, _) in enumerate(el.props):
            if k in lists:
                cols[name] = np.full(el.length, lists[k], dtype=np.int64)
                cols[name + "\0corners"] = rec[f"p{k}"].reshape(-1)
            else:
                cols[name] = rec[f"p{k}"]
        out[el.name] = cols
    if pos != len(data):  # trimesh refuses a file longer or shorter than its header says
        return None
    return out


def _read_ply(data: bytes) -> Arrays | None:
    header = _ply_header(data)
    if header is None:
        return None
    ascii_, elements, offset = header
    if not _ply_elements_ok(elements):
        return None
    cols = _ply_ascii(data[offset:], elements) if ascii_ else _ply_binary(data, offset, elements)
    if cols is None:
        return None
    vertex = cols["vertex"]
    vertices = np.column_stack([vertex[c] for c in "xyz"]).astype(np.float64)
    face = elements.get("face")
    if face is None or face.length == 0:
        return vertices, np.zeros((0, 3), dtype=np.int64)  # a point cloud
    name = next(p[0] for p in face.props if p[2] is not None)
    sizes, corners = cols["face"][name], cols["face"][name + "\0corners"].astype(np.int64)
    if corners.min() < 0 or corners.max() >= len(vertices):
        return None  # trimesh keeps such faces; load_mesh then refuses them
    return vertices, _triangulate(sizes, corners)


# ---- STL ---------------------------------------------------------------------------------------------------
_STL_RECORD = np.dtype([("normal", "<f4", (3,)), ("corners", "<f4", (3, 3)), ("attribute", "<u2")])


def _read_stl(data: bytes) -> Arrays | None:
    if len(data) >= 84:
        n = int(np.frombuffer(data, dtype="<u4", count=1, offset=80)[0])
        if len(data) - 84 == n * _STL_RECORD.itemsize:  # binary, as trimesh decides
            if n == 0:
                return None
            rec = np.frombuffer(data, dtype=_STL_RECORD, count=n, offset=84)
            return rec["corners"].reshape(-1, 3).astype(np.float64), np.arange(3 * n, dtype=np.int64).reshape(-1, 3)
    if re.search(rb"[\x80-\xff]", data):
        return None
    text = data.strip().lower()
    if not text.startswith(b"solid") or text.count(b"solid") != 2 or text.count(b"endsolid") != 1:
        return None  # one solid only: trimesh reads several into a scene
    solid = text[:text.find(b"endsolid")]
    pieces = solid.split(b"vertex")[1:]  # trimesh reads each "vertex" up to the end of its line
    if not pieces or any(b"\n" not in p for p in pieces):
        return None
    got = _numbers(b"\n".join(p[:p.find(b"\n")] for p in pieces), len(pieces))
    if got is None or np.any(got[0] != 3) or len(pieces) % 3:
        return None
    vertices = got[1].reshape(-1, 3)
    return vertices, np.arange(len(vertices), dtype=np.int64).reshape(-1, 3)


# ---- OFF ---------------------------------------------------------------------------------------------------
_OFF_DECIMAL = re.compile(rb"[^0-9+\-.eE \t\n]")  # anything else: read by trimesh with Python's float()
_OFF_INTEGER = re.compile(rb"[^0-9\- \t\n]")


def _read_off(data: bytes) -> Arrays | None:
    text = _split_lines(data)
    if text is None or b"#" in text:  # trimesh's comment stripping repeats lines of some files
        return None
    lines = [line.strip() for line in text.strip().split(b"\n")]
    lines = [line for line in lines if line]
    first = lines[0].split(maxsplit=1) if lines else []
    if not first or first[0] not in (b"OFF", b"COFF"):
        return None
    lines = ([first[1]] if len(first) > 1 else []) + lines[1:]
    counts = lines[0].split() if lines else []
    if len(counts) < 2 or not all(c.isdigit() for c in counts):
        return None
    n_vertices, n_faces = int(counts[0]), int(counts[1])
    vertex_lines = lines[1:n_vertices + 1]
    face_lines = lines[n_vertices + 1:n_vertices + n_faces + 1]  # trimesh reads fewer faces when lines are missing
    if n_vertices == 0 or len(vertex_lines) != n_vertices or not face_lines:
        return None
    blob = b"\n".join(vertex_lines)
    got = None if _OFF_DECIMAL.search(blob) else _numbers(blob, n_vertices)
    if got is None or np.any(got[0] < 3):
        return None
    counts_v, values = got
    starts = np.cumsum(counts_v) - counts_v
    vertices = values[starts[:, None] + np.arange(3)]
    blob = b"\n".join(face_lines)
    got = None if _OFF_INTEGER.search(blob) else _numbers(blob, len(face_lines), np.int64)
    if got is None:
        return None
    counts_f, values = got
    starts = np.cumsum(counts_f) - counts_f
    sizes = values[starts]
    if np.any(sizes < 3) or np.any(counts_f < sizes + 1):
        return None
    if np.any(sizes != sizes[0]) and np.any(sizes > 4):
        return None  # trimesh fails on these (it fans polygons of index strings); let it say so
    corners = values[np.repeat(starts + 1, sizes) + np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)]
    if corners.min() < 0 or corners.max() >= n_vertices:
        return None
    return vertices, _triangulate(sizes, corners)


# ---- entry point -------------------------------------------------------------------------------------------
def read_mesh_file(path: str | Path, *, max_faces: int | None = None) -> Arrays | None:
    """The vertices (V, 3) float64 and triangles (F, 3) int64 of an OBJ, OFF, STL or PLY file, as trimesh
    reads them (see the module docstring); None for a file this module does not read exactly as trimesh.

    Faces are empty for a PLY point cloud. Nothing is checked beyond the OBJ pre-scan (:func:`check_obj`,
    which ``max_faces`` is for): the caller checks counts and coordinates.

    Raises
    ------
    MeshInputError
        What :func:`check_obj` refuses.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".obj":
        return _read_obj(path, max_faces)
    reader = {".ply": _read_ply, ".stl": _read_stl, ".off": _read_off}.get(ext)
    return None if reader is None else reader(path.read_bytes())
