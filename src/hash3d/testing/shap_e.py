"""A tiny Shap-E text-to-3D model in the real diffusers `ShapEPipeline` layout, for offline tests.

``write_shap_e(DIR)`` writes ``model_index.json`` and the subfolders ``prior/`` (`PriorTransformer`),
``text_encoder/`` (`CLIPTextModelWithProjection`), ``tokenizer/`` (the written CLIP tokenizer), ``scheduler/``
(`HeunDiscreteScheduler` with Shap-E's Karras settings) and ``shap_e_renderer/`` (`ShapERenderer`), exactly as
``openai/shap-e`` stores them, so ``ShapEPipeline.from_pretrained(DIR)`` loads it through the same path as the
real weights. Every width is shrunk so that sampling and mesh decoding take well under a second on a CPU.

The prior and the text encoder have random (seeded) weights. The renderer's weights are *designed* instead, so
that decoding any latent gives a closed surface rather than noise: its MLP computes a signed distance that is
positive inside a ball of radius ≈ 0.5 around the origin (slightly perturbed by the latent, so the prompt still
matters), and colours that vary with position (red along x, green along z). Its marching-cubes tables (buffers
that the real checkpoint also stores) are computed here for diffusers' edge numbering.
"""

from __future__ import annotations

import contextlib
from itertools import combinations
from pathlib import Path

import torch

from hash3d.testing.tokenizer import CLIP_TOKENIZER_VOCAB_SIZE, write_clip_tokenizer

__all__ = ["write_shap_e", "marching_cubes_tables", "SHAP_E_SUBFOLDERS", "TINY_BALL_RADIUS"]

SHAP_E_SUBFOLDERS = ("prior", "text_encoder", "tokenizer", "scheduler", "shap_e_renderer")

# sizes of the tiny model (the real openai/shap-e: hidden 256, latent 1024 x 1024, CLIP ViT-L/14 text tower)
_HIDDEN = 8  # renderer MLP width
_LATENT_DIM = 16  # prior embedding_dim = renderer d_latent
_TEXT_DIM = 32
_PROJ_DIM = 16

# the designed renderer field
TINY_BALL_RADIUS = 0.5
"""Radius (Shap-E units, the cube [-1, 1]³) of the surface that the tiny renderer decodes to."""
_CARRY = 12.0  # offset that carries values through SiLU layers almost unchanged (silu(v) ≈ v for v ≫ 0)
_SHARPNESS = 2.0  # q(p) = Σ a·p_i·tanh(a·p_i / 2) with a = _SHARPNESS: ≈ a²|p|²/2 near the origin
_SDF_GAIN = 4.0
_COLOR_GAIN = 2.0
_LATENT_INFLUENCE = 1e-4  # LayerNorm gain of the latent-to-weights projection: how much the latent bends the ball


# ------------------------------------------------------------------------------------------------ marching cubes

# diffusers' MeshDecoder numbers the 8 corners of a cell c = x + 2y + 4z (bit order of its bitmasks) and its
# 12 edges as in `_create_flat_edge_indices`: 4 along x, 4 along y, 4 along z.
_EDGES = (
    (0, 1), (2, 3), (4, 5), (6, 7),  # along x at (y, z) = 00, 10, 01, 11
    (0, 2), (1, 3), (4, 6), (5, 7),  # along y at (x, z) = 00, 10, 01, 11
    (0, 4), (1, 5), (2, 6), (3, 7),  # along z at (x, y) = 00, 10, 01, 11
)  # fmt: skip


def _corner(c: int) -> tuple[int, int, int]:
    return c & 1, (c >> 1) & 1, (c >> 2) & 1


def _faces() -> list[tuple[int, ...]]:
    """The 6 faces of a cell, each as its 4 corners."""
    return [tuple(c for c in range(8) if _corner(c)[axis] == side) for axis in range(3) for side in (0, 1)]


def marching_cubes_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """(cases [256, 5, 3] long, masks [256, 5] bool): for each corner sign pattern (bit c set = corner c inside,
    field > 0), up to 5 triangles as triples of local edge indices, in diffusers' `MeshDecoder` numbering.

    Built from first principles: on every cell face the edges with a sign change are joined by segments (on a
    face with four sign changes, each inside corner is cut off by its own segment, the same rule for every cell,
    so neighbouring cells agree on their shared face and the surface is closed); the segments close into loops,
    each fanned into triangles facing from inside to outside.
    """
    cases = torch.zeros(256, 5, 3, dtype=torch.long)
    masks = torch.zeros(256, 5, dtype=torch.bool)
    faces = _faces()
    for case in range(256):
        inside = [bool(case >> c & 1) for c in range(8)]
        crossing = [e for e, (a, b) in enumerate(_EDGES) if inside[a] != inside[b]]
        links: dict[int, list[int]] = {e: [] for e in crossing}
        cofacial: set[frozenset[int]] = set()
        for face in faces:
            cut = [e for e in crossing if _EDGES[e][0] in face and _EDGES[e][1] in face]
            cofacial.update(frozenset(p) for p in combinations(cut, 2))
            if len(cut) == 2:
                pairs = [tuple(cut)]
            elif len(cut) == 4:  # saddle face: each inside corner is cut off by its own segment
                pairs = [tuple(e for e in cut if c in _EDGES[e]) for c in face if inside[c]]
            else:
                pairs = []
            for a, b in pairs:
                links[a].append(b)
                links[b].append(a)
        triangles: list[tuple[int, int, int]] = []
        seen: set[int] = set()
        for start in crossing:
            if start in seen:
                continue
            loop, prev, cur = [start], None, start
            seen.add(start)
            while True:
                nxt = next(e for e in links[cur] if e != prev) if prev is not None else links[cur][0]
                if nxt == start:
                    break
                loop.append(nxt)
                seen.add(nxt)
                prev, cur = cur, nxt
            triangles += _triangulate(_outward(loop, inside), cofacial)
        if len(triangles) > 5:
            raise AssertionError(f"marching-cubes case {case} needs {len(triangles)} triangles")
        for k, tri in enumerate(triangles):
            cases[case, k] = torch.tensor(tri)
            masks[case, k] = True
    return cases, masks


def _triangulations(poly: tuple[int, ...]):
    """Every triangulation of a convex polygon given by its vertex sequence (lists of triangles)."""
    if len(poly) < 3:
        yield []
        return
    first, last = poly[0], poly[-1]
    for k in range(1, len(poly) - 1):  # the triangle on the edge (first, last) has its third corner at poly[k]
        for left in _triangulations(poly[: k + 1]):
            for right in _triangulations(poly[k:]):
                yield [*left, (first, poly[k], last), *right]


def _triangulate(loop: list[int], cofacial: set[frozenset[int]]) -> list[tuple[int, int, int]]:
    """Triangles closing a loop of edge vertices without a diagonal between two vertices of one cell face: such a
    diagonal would also be drawn by the neighbouring cell, and the edge would have four triangles (not a surface)."""
    n = len(loop)
    boundary = {frozenset((loop[i], loop[(i + 1) % n])) for i in range(n)}
    best, best_bad = None, None
    for tris in _triangulations(tuple(loop)):
        sides = {frozenset(p) for t in tris for p in combinations(t, 2)} - boundary
        bad = len(sides & cofacial)
        if best_bad is None or bad < best_bad:
            best, best_bad = tris, bad
            if bad == 0:
                break
    assert best is not None
    return best


def _outward(loop: list[int], inside: list[bool]) -> list[int]:
    """The loop in the order whose right-hand normal points from the inside corners it wraps to the outside ones
    (its triangles keep that order, so the surface faces outwards, towards negative field values)."""
    corner = lambda c: torch.tensor(_corner(c), dtype=torch.float32)  # noqa: E731
    mids = [(corner(_EDGES[e][0]) + corner(_EDGES[e][1])) / 2 for e in loop]
    area = sum(torch.linalg.cross(mids[i], mids[(i + 1) % len(mids)]) for i in range(len(mids)))
    ins = torch.stack([corner(a if inside[a] else b) for a, b in (_EDGES[e] for e in loop)]).mean(0)
    outs = torch.stack([corner(b if inside[a] else a) for a, b in (_EDGES[e] for e in loop)]).mean(0)
    return loop if float(area @ (outs - ins)) > 0 else loop[::-1]


# ------------------------------------------------------------------------------------------------ the renderer


def _design_renderer(renderer: torch.nn.Module) -> None:
    """Set the ShapERenderer's weights so that its field is a ball with position-dependent colours (see the module
    docstring). Layers 0-3 of its MLP get their weights from the latent through `params_proj`: each projection's
    output is LayerNorm(latent · W)·γ + β + b, so with γ tiny the designed b decides the layer almost alone."""
    h, a, B = _HIDDEN, _SHARPNESS, _CARRY
    with torch.no_grad():
        weights = [torch.zeros(h, 93)] + [torch.zeros(h, h) for _ in range(3)]
        # layer 0: ±a·x, ±a·y, ±a·z, and x, z carried (position encoding starts with x, y, z)
        for i in range(3):
            weights[0][2 * i, i] = a
            weights[0][2 * i + 1, i] = -a
        weights[0][6, 0] = 1.0
        weights[0][7, 2] = 1.0
        # layer 1: q = Σ silu(±a p_i) = Σ a p_i tanh(a p_i / 2) into channel 0; the carried x, z into 1, 2
        weights[1][0, :6] = 1.0
        weights[1][1, 6] = 1.0
        weights[1][2, 7] = 1.0
        for w in weights[2:]:
            w[:3, :3] = torch.eye(3)
        biases = [torch.zeros(h) for _ in range(6)]
        biases[0][6:8] = B
        biases[1][0] = B
        for k, name in enumerate(renderer.params_proj.config.param_names):
            proj = renderer.params_proj.projections[name.replace(".", "__")]
            proj.norm.weight.fill_(_LATENT_INFLUENCE)
            proj.norm.bias.zero_()
            proj.proj.bias.copy_(weights[k].reshape(-1))
        mlp = renderer.mlp.mlp
        for k, layer in enumerate(mlp[:6]):
            layer.bias.copy_(biases[k])
        for k in (4, 5):  # layers with fixed weights (layer 4 also sees the direction encoding: zero there)
            mlp[k].weight.zero_()
            mlp[k].weight[:3, :3] = torch.eye(3)
        # output: sdf = tanh(g·(T − q)), densities alike; colours sigmoid(±k·x), sigmoid(k·z), blue constant
        threshold = 3 * (a * TINY_BALL_RADIUS / 3**0.5) * torch.tanh(torch.tensor(a * TINY_BALL_RADIUS / 3**0.5 / 2))
        out = mlp[6]
        out.weight.zero_()
        out.bias.zero_()
        for row in (0, 1, 2):  # sdf, density_coarse, density_fine
            out.weight[row, 0] = -_SDF_GAIN
            out.bias[row] = _SDF_GAIN * (float(threshold) + B)
        for first in (3, 6, 9):  # stf, nerf_coarse, nerf_fine colour heads
            out.weight[first, 1] = _COLOR_GAIN
            out.bias[first] = -_COLOR_GAIN * B
            out.weight[first + 1, 2] = _COLOR_GAIN
            out.bias[first + 1] = -_COLOR_GAIN * B
            out.bias[first + 2] = -1.0
        cases, masks = marching_cubes_tables()
        renderer.mesh_decoder.cases.copy_(cases)
        renderer.mesh_decoder.masks.copy_(masks)


# ------------------------------------------------------------------------------------------------ writing


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def write_shap_e(path: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny Shap-E pipeline (see the module docstring) into `path` and return the folder."""
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    h = _HIDDEN
    eos = CLIP_TOKENIZER_VOCAB_SIZE - 1
    with _seeded(seed):
        text_encoder = CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=CLIP_TOKENIZER_VOCAB_SIZE, hidden_size=_TEXT_DIM, intermediate_size=2 * _TEXT_DIM,
                projection_dim=_PROJ_DIM, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                hidden_act="gelu", bos_token_id=eos - 1, eos_token_id=eos, pad_token_id=eos,
            )
        ).eval()  # fmt: skip
    with _seeded(seed + 1):
        prior = PriorTransformer(
            num_attention_heads=2, attention_head_dim=8, num_layers=1, embedding_dim=_LATENT_DIM,
            num_embeddings=4 * h, additional_embeddings=0, time_embed_act_fn="gelu", norm_in_type="layer",
            embedding_proj_norm_type="layer", encoder_hid_proj_type=None, added_emb_type=None,
            time_embed_dim=4 * _LATENT_DIM, embedding_proj_dim=_PROJ_DIM, clip_embed_dim=2 * _LATENT_DIM,
        ).eval()  # fmt: skip
    with _seeded(seed + 2):
        renderer = ShapERenderer(
            param_shapes=((h, 93), (h, h), (h, h), (h, h)), d_latent=_LATENT_DIM, d_hidden=h, n_output=12,
            n_hidden_layers=6, act_fn="swish", insert_direction_at=4, background=(255.0, 255.0, 255.0),
        ).eval()  # fmt: skip
        _design_renderer(renderer)
    scheduler = HeunDiscreteScheduler(
        beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample", use_karras_sigmas=True,
        clip_sample=True, clip_sample_range=1.0,
    )  # fmt: skip
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(path / "tokenizer"))
    pipe = ShapEPipeline(
        prior=prior, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, shap_e_renderer=renderer
    )
    from hash3d.testing.models import quiet_progress_bars  # noqa: PLC0415 - shares the transformers switch

    with quiet_progress_bars():
        pipe.save_pretrained(path, safe_serialization=True)
    return path
