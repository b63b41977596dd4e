"""Writing meshes: OBJ (+ MTL + PNG albedo texture, or vertex colours), GLB and PLY.

OBJ/MTL is written directly (the layout threestudio's exporter uses: material "default", Ka 0, Kd 1, Ks 0,
map_Kd); GLB and PLY go through trimesh. By default the world frame (z up) is turned so +z becomes +y, the up
axis of glTF and of Blender's OBJ importer, so models stand upright there; up_axis="z" keeps world coordinates.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config.errors import ConfigError
from ..scene.field import RadianceField
from ..scene.isosurface import Mesh, vertex_albedo
from .uv_texture import bake_texture, unwrap_uv

MeshFormat = Literal["obj", "obj-mtl", "glb", "ply"]
FORMATS = ("obj", "obj-mtl", "glb", "ply")


def to_up_axis(vertices: np.ndarray, up_axis: str) -> np.ndarray:
    """World (z up) -> file frame: unchanged for "z"; (x, z, −y) for "y" (a rotation, so faces keep their winding)."""
    if up_axis == "z":
        return vertices
    if up_axis == "y":
        return np.stack([vertices[:, 0], vertices[:, 2], -vertices[:, 1]], -1)
    raise ValueError(f"up_axis must be 'y' or 'z'; got {up_axis!r}")


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def write_obj(mesh: Mesh, path: Path, vertices: np.ndarray) -> list[Path]:
    """OBJ with uv + MTL + PNG texture when the mesh has a texture, else OBJ with vertex colours."""
    faces = mesh.faces.numpy() + 1
    written = [path]
    with open(path, "w") as fh:
        fh.write("# hash3d mesh export\n")
        if mesh.texture is not None:
            mtl, png = path.with_suffix(".mtl"), path.with_name(path.stem + "_albedo.png")
            fh.write(f"mtllib {mtl.name}\n")
            np.savetxt(fh, vertices, fmt="v %.6f %.6f %.6f")
            np.savetxt(fh, mesh.uv.numpy(), fmt="vt %.6f %.6f")
            fh.write("usemtl default\n")
            np.savetxt(fh, np.repeat(faces, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
            mtl.write_text(f"newmtl default\nKa 0.0 0.0 0.0\nKd 1.0 1.0 1.0\nKs 0.0 0.0 0.0\nillum 1\nmap_Kd {png.name}\n")
            from PIL import Image

            Image.fromarray(_to_uint8(mesh.texture)).save(png)
            written += [mtl, png]
        else:
            if mesh.colors is not None:
                np.savetxt(fh, np.concatenate([vertices, mesh.colors.clamp(0, 1).numpy()], 1), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
            else:
                np.savetxt(fh, vertices, fmt="v %.6f %.6f %.6f")
            np.savetxt(fh, faces, fmt="f %d %d %d")
    return written


def _trimesh(mesh: Mesh, vertices: np.ndarray):
    import trimesh

    if mesh.texture is not None:
        from PIL import Image

        visual = trimesh.visual.TextureVisuals(
            uv=mesh.uv.numpy(),
            material=trimesh.visual.material.PBRMaterial(
                baseColorTexture=Image.fromarray(_to_uint8(mesh.texture)), metallicFactor=0.0, roughnessFactor=1.0
            ),
        )
        return trimesh.Trimesh(vertices, mesh.faces.numpy(), visual=visual, process=False)
    colors = None if mesh.colors is None else np.concatenate([_to_uint8(mesh.colors), np.full((mesh.n_vertices, 1), 255, np.uint8)], 1)
    return trimesh.Trimesh(vertices, mesh.faces.numpy(), vertex_colors=colors, process=False)


def export_mesh(
    mesh: Mesh,
    path: str | Path,
    fmt: MeshFormat | None = None,
    texture_size: int = 1024,
    field: RadianceField | None = None,
    up_axis: Literal["y", "z"] = "y",
    device: torch.device | str | None = None,
) -> list[Path]:
    """Write `mesh` to `path`; returns the files written.

    fmt (default: from the suffix): "obj" writes OBJ + MTL + `<stem>_albedo.png` when a texture is available
    (the mesh has one, or `field` is given and texture_size > 0: the mesh is UV-unwrapped with xatlas and the
    field's albedo baked per texel), else an OBJ with vertex colours; "obj-mtl" insists on the texture; "glb"
    is textured under the same rule (else vertex colours); "ply" always has vertex colours.
    """
    path = Path(path)
    fmt = fmt or {".obj": "obj", ".glb": "glb", ".ply": "ply"}.get(path.suffix.lower())
    if fmt not in FORMATS:
        raise ConfigError(f"unknown mesh format {fmt!r} for {path}; choose one of {', '.join(FORMATS)}")
    if mesh.n_faces == 0:
        raise ValueError("the mesh has no faces")
    path = path.with_suffix(".obj" if fmt in ("obj", "obj-mtl") else "." + fmt)
    path.parent.mkdir(parents=True, exist_ok=True)

    if field is not None and device is None:
        device = next((p.device for p in field.parameters()), torch.device("cpu")) if hasattr(field, "parameters") else "cpu"
    want_texture = fmt in ("obj", "obj-mtl", "glb") and mesh.texture is None and field is not None and texture_size > 0
    if fmt == "obj-mtl" and mesh.texture is None and not want_texture:
        raise ConfigError("fmt 'obj-mtl' needs a textured mesh or a field to bake the texture from (and texture_size > 0)")
    if want_texture:
        mesh = unwrap_uv(mesh, texture_size)
        mesh = bake_texture(mesh, lambda p: vertex_albedo(field, p), texture_size, device=device)
    if mesh.colors is None and field is not None and mesh.texture is None:
        mesh = replace(mesh, colors=vertex_albedo(field, mesh.vertices.to(device)).cpu())

    vertices = to_up_axis(mesh.vertices.numpy().astype(np.float64), up_axis)
    if fmt in ("obj", "obj-mtl"):
        return write_obj(mesh, path, vertices)
    if fmt == "ply":
        mesh = Mesh(mesh.vertices, mesh.faces, mesh.colors)
    _trimesh(mesh, vertices).export(str(path), file_type=fmt)
    return [path]
