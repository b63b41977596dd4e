"""3D Gaussian splatting .ply files (the layout common splat viewers open) and plain point-cloud .ply files.

Gaussian layout, one ``vertex`` element, every property ``float`` (float32), binary little-endian:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3·(K−1)−1) opacity scale_0..2 rot_0..3``.
Values are the raw (pre-activation) parameters: opacity is a logit, scales are logs, rot is a wxyz
quaternion as optimised (not normalised). ``f_dc_c`` is the degree-0 SH coefficient of channel c;
``f_rest`` is channel-major: the K−1 higher coefficients of red, then green, then blue. Normals are zero.

The reader parses the header itself (no plyfile): binary little / big endian and ascii, any scalar
property types, and other elements (faces) after the vertices.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

__all__ = [
    "GaussianPly",
    "PlyElementData",
    "read_ply",
    "save_gaussian_ply",
    "load_gaussian_ply",
    "write_point_cloud_ply",
    "read_point_cloud_ply",
]

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


@dataclasses.dataclass
class GaussianPly:
    """Raw 3DGS parameters as stored in a .ply (numpy, float32). N Gaussians, K = (sh_degree+1)² SH bases."""

    means: np.ndarray  # [N, 3]
    sh0: np.ndarray  # [N, 1, 3] degree-0 SH coefficients (RGB)
    shN: np.ndarray  # [N, K-1, 3] higher SH coefficients
    opacities: np.ndarray  # [N] logits
    scales: np.ndarray  # [N, 3] log scales
    quats: np.ndarray  # [N, 4] wxyz, raw

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return math.isqrt(self.shN.shape[1] + 1) - 1


@dataclasses.dataclass
class PlyElementData:
    """One element of a .ply: its name, count and one numpy array per scalar property (file order)."""

    name: str
    count: int
    properties: dict[str, np.ndarray]


def _gaussian_property_names(num_rest: int) -> list[str]:
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(num_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def _write_vertex_ply(path: str | os.PathLike, columns: dict[str, np.ndarray], comments: tuple[str, ...] = ()) -> None:
    """Write one `vertex` element, binary little-endian; column dtypes decide the property types."""
    names = list(columns)
    n = len(next(iter(columns.values()))) if columns else 0
    type_names = {np.dtype("f4"): "float", np.dtype("f8"): "double", np.dtype("u1"): "uchar", np.dtype("i4"): "int"}
    dtype = np.dtype([(k, columns[k].dtype.newbyteorder("<")) for k in names])
    rows = np.empty(n, dtype=dtype)
    for k in names:
        rows[k] = columns[k]
    header = ["ply", "format binary_little_endian 1.0", *[f"comment {c}" for c in comments], f"element vertex {n}"]
    header += [f"property {type_names[np.dtype(columns[k].dtype)]} {k}" for k in names]
    header.append("end_header")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(rows.tobytes())
    os.replace(tmp, path)


def save_gaussian_ply(
    path: str | os.PathLike,
    means: np.ndarray,  # [N, 3]
    sh0: np.ndarray,  # [N, 1, 3]
    shN: np.ndarray,  # [N, K-1, 3]
    opacities: np.ndarray,  # [N] or [N, 1] logits
    scales: np.ndarray,  # [N, 3] log scales
    quats: np.ndarray,  # [N, 4] wxyz
) -> None:
    """Write raw Gaussian parameters (numpy or CPU tensors) as a standard 3DGS .ply (float32)."""
    f32 = lambda x: np.ascontiguousarray(np.asarray(x, dtype=np.float32))  # noqa: E731
    means, sh0, shN, scales, quats = f32(means), f32(sh0), f32(shN), f32(scales), f32(quats)
    opacities = f32(opacities).reshape(-1)
    n = means.shape[0]
    if sh0.shape != (n, 1, 3) or shN.ndim != 3 or shN.shape[0] != n or shN.shape[2] != 3:
        raise ValueError(f"expected sh0 [N,1,3] and shN [N,K-1,3]; got {sh0.shape}, {shN.shape}")
    if means.shape != (n, 3) or scales.shape != (n, 3) or quats.shape != (n, 4) or opacities.shape != (n,):
        raise ValueError("expected means [N,3], scales [N,3], quats [N,4], opacities [N]")
    rest = shN.transpose(0, 2, 1).reshape(n, -1)  # channel-major, as 3DGS writes it
    cols: dict[str, np.ndarray] = {"x": means[:, 0], "y": means[:, 1], "z": means[:, 2]}
    zeros = np.zeros(n, dtype=np.float32)
    cols.update({"nx": zeros, "ny": zeros, "nz": zeros})
    cols.update({f"f_dc_{c}": sh0[:, 0, c] for c in range(3)})
    cols.update({f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])})
    cols["opacity"] = opacities
    cols.update({f"scale_{i}": scales[:, i] for i in range(3)})
    cols.update({f"rot_{i}": quats[:, i] for i in range(4)})
    assert list(cols) == _gaussian_property_names(rest.shape[1])
    _write_vertex_ply(path, cols)


def read_ply(path: str | os.PathLike) -> dict[str, PlyElementData]:
    """Parse a .ply file (header read here, no plyfile) -> {element name: data}. List properties (faces) are
    returned as an object array of per-row arrays."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a .ply file (no 'ply' magic or no end_header)")
    nl = data.find(b"\n", end)
    body = memoryview(data)[nl + 1 :]
    lines = [ln.strip() for ln in data[:end].decode("ascii", errors="replace").splitlines()]
    fmt = None
    elements: list[tuple[str, int, list[tuple]]] = []
    for ln in lines[1:]:
        tok = ln.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise ValueError(f"{path}: property before any element")
            if tok[1] == "list":
                elements[-1][2].append(("list", tok[4], _PLY_TYPES[tok[2]], _PLY_TYPES[tok[3]]))
            else:
                elements[-1][2].append(("scalar", tok[2], _PLY_TYPES[tok[1]]))
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise ValueError(f"{path}: unsupported ply format {fmt!r}")

    out: dict[str, PlyElementData] = {}
    if fmt == "ascii":
        text = bytes(body).decode("ascii").split("\n")
        row = 0
        for name, count, props in elements:
            rows = [text[row + i].split() for i in range(count)]
            row += count
            cols: dict[str, list] = {p[1]: [] for p in props}
            for r in rows:
                j = 0
                for p in props:
                    if p[0] == "scalar":
                        cols[p[1]].append(r[j])
                        j += 1
                    else:
                        k = int(r[j])
                        cols[p[1]].append(np.array(r[j + 1 : j + 1 + k], dtype=p[3]))
                        j += 1 + k
            arrays = {}
            for p in props:
                arrays[p[1]] = np.array(cols[p[1]], dtype=p[2]) if p[0] == "scalar" else _obj_array(cols[p[1]])
            out[name] = PlyElementData(name, count, arrays)
        return out

    endian = "<" if fmt == "binary_little_endian" else ">"
    offset = 0
    for name, count, props in elements:
        if all(p[0] == "scalar" for p in props):
            dtype = np.dtype([(p[1], endian + p[2]) for p in props])
            rows = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
            offset += dtype.itemsize * count
            arrays = {p[1]: rows[p[1]].astype(np.dtype(p[2])) for p in props}
        else:  # rows of variable length: walk them (faces of a mesh; not on the Gaussian path)
            cols = {p[1]: [] for p in props}
            for _ in range(count):
                for p in props:
                    if p[0] == "scalar":
                        dt = np.dtype(endian + p[2])
                        cols[p[1]].append(np.frombuffer(body, dt, 1, offset)[0])
                        offset += dt.itemsize
                    else:
                        ct, it = np.dtype(endian + p[2]), np.dtype(endian + p[3])
                        k = int(np.frombuffer(body, ct, 1, offset)[0])
                        offset += ct.itemsize
                        cols[p[1]].append(np.frombuffer(body, it, k, offset).astype(np.dtype(p[3])))
                        offset += it.itemsize * k
            arrays = {
                p[1]: (np.array(cols[p[1]], dtype=p[2]) if p[0] == "scalar" else _obj_array(cols[p[1]])) for p in props
            }
        out[name] = PlyElementData(name, count, arrays)
    return out


def _obj_array(items: list) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def load_gaussian_ply(path: str | os.PathLike) -> GaussianPly:
    """Read a 3DGS .ply (any SH degree) -> raw parameters, float32. Errors name what is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Gaussian .ply not found: {path}")
    elements = read_ply(path)
    if "vertex" not in elements:
        raise ValueError(f"{path}: no 'vertex' element")
    v = elements["vertex"].properties
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2"]
    need += ["rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [k for k in need if k not in v]
    if missing:
        raise ValueError(
            f"{path}: not a 3D Gaussian splatting .ply (missing {', '.join(missing)}); "
            "a plain point cloud can be read with read_point_cloud_ply"
        )
    n = elements["vertex"].count
    col = lambda k: np.asarray(v[k], dtype=np.float32)  # noqa: E731
    rest_names = sorted((k for k in v if k.startswith("f_rest_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if len(rest_names) % 3 or math.isqrt(len(rest_names) // 3 + 1) ** 2 != len(rest_names) // 3 + 1:
        raise ValueError(f"{path}: {len(rest_names)} f_rest properties is not 3·((d+1)²−1) for any SH degree d")
    k1 = len(rest_names) // 3
    rest = np.stack([col(k) for k in rest_names], 1) if rest_names else np.zeros((n, 0), np.float32)
    return GaussianPly(
        means=np.stack([col("x"), col("y"), col("z")], 1),
        sh0=np.stack([col(f"f_dc_{c}") for c in range(3)], 1)[:, None, :],
        shN=np.ascontiguousarray(rest.reshape(n, 3, k1).transpose(0, 2, 1)),
        opacities=col("opacity"),
        scales=np.stack([col(f"scale_{i}") for i in range(3)], 1),
        quats=np.stack([col(f"rot_{i}") for i in range(4)], 1),
    )


def write_point_cloud_ply(
    path: str | os.PathLike,
    points: np.ndarray,  # [N, 3]
    colors: np.ndarray | None = None,  # [N, 3] floats in [0, 1] (stored as uchar) or uint8
) -> None:
    """Write a coloured point cloud (x y z float, red green blue uchar) that any ply viewer opens."""
    pts = np.asarray(points, dtype=np.float32)
    cols = {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]}
    if colors is not None:
        c = np.asarray(colors)
        if c.dtype != np.uint8:
            c = np.clip(np.round(c.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        cols.update({"red": c[:, 0], "green": c[:, 1], "blue": c[:, 2]})
    _write_vertex_ply(path, cols)


def read_point_cloud_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Points [N, 3] float32 and colours [N, 3] float32 in [0, 1] (or None) from any vertex .ply: plain
    point clouds (red/green/blue as uchar or float) or 3DGS files (colour from the degree-0 SH term)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point cloud .ply not found: {path}")
    elements = read_ply(path)
    if "vertex" not in elements or not all(k in elements["vertex"].properties for k in "xyz"):
        raise ValueError(f"{path}: no vertex element with x, y, z")
    v = elements["vertex"].properties
    pts = np.stack([np.asarray(v[k], dtype=np.float32) for k in "xyz"], 1)
    colors = None
    if all(k in v for k in ("red", "green", "blue")):
        c = np.stack([v["red"], v["green"], v["blue"]], 1)
        colors = c.astype(np.float32) / 255.0 if c.dtype.kind in "ui" else c.astype(np.float32)
    elif all(f"f_dc_{i}" in v for i in range(3)):
        sh = np.stack([v[f"f_dc_{i}"] for i in range(3)], 1).astype(np.float32)
        colors = np.clip(sh * 0.28209479177387814 + 0.5, 0.0, 1.0)
    return pts, colors
