"""Volume renderer against closed forms on analytic fields; chunking, occupancy grid, gradients, cameras."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hash3d.data.cameras import orbit_c2w
from hash3d.render import (
    MaterialConfig,
    OccupancyGrid,
    OccupancyGridConfig,
    Shading,
    VolumeRenderConfig,
    choose_shading,
    exclusive_segment_sum,
    ray_aabb,
    render_cameras,
    render_rays,
    render_weights,
    shade,
)
from hash3d.scene import FieldOutput, HashGridConfig, ImplicitVolume, ImplicitVolumeConfig, MLPConfig


class SphereField(nn.Module):
    """Constant density σ and colour inside a ball of radius a at the origin, nothing outside."""

    def __init__(self, radius: float = 1.0, ball: float = 0.6, sigma: float = 3.0, color=(0.9, 0.3, 0.1)):
        super().__init__()
        self.radius, self.ball = radius, ball
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))
        self.color = nn.Parameter(torch.tensor(color))

    def forward_density(self, points):
        inside = (points.norm(dim=-1, keepdim=True) < self.ball).float()
        return self.log_sigma.exp() * inside

    def forward(self, points, with_normal=False):
        density = self.forward_density(points)
        albedo = self.color.expand(points.shape[0], 3)
        normal = F.normalize(points, dim=-1) if with_normal else None
        return FieldOutput(density, albedo, normal)


class BoxField(nn.Module):
    """Constant density in the cube [−h, h]³ (aligned with occupancy cells), colour varying with position."""

    def __init__(self, radius: float = 1.0, half: float = 0.5, sigma: float = 5.0):
        super().__init__()
        self.radius, self.half, self.sigma = radius, half, sigma

    def forward_density(self, points):
        return self.sigma * (points.abs() < self.half).all(-1, keepdim=True).float()

    def forward(self, points, with_normal=False):
        normal = F.normalize(points, dim=-1) if with_normal else None
        return FieldOutput(self.forward_density(points), (points + 1) / 2, normal)


def sphere_rays(n_side=20, distance=3.0, fovy=40.0):
    c2w = orbit_c2w(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([distance]))
    from hash3d.data.cameras import rays

    o, d = rays(c2w, torch.tensor([fovy]), n_side, n_side)
    return o.reshape(-1, 3), d.reshape(-1, 3)


def tiny_volume(seed=0, **kw) -> ImplicitVolume:
    torch.manual_seed(seed)
    grid = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)
    field = ImplicitVolume(ImplicitVolumeConfig(radius=1.0, pos_encoding_config=grid, mlp_network_config=MLPConfig(n_neurons=16), **kw))
    with torch.no_grad():
        field.encoding.table.normal_(0, 0.5)
    return field


PLAIN = dict(prune_alpha_threshold=0.0, early_stop_eps=0.0, grid=OccupancyGridConfig(enabled=False))


def test_ray_aabb_hits_and_misses():
    o = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 5.0, 0.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    near, far, hit = ray_aabb(o, d, 1.0)
    assert hit.tolist() == [True, False, True]
    torch.testing.assert_close(near[[0, 2]], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(far[[0, 2]], torch.tensor([4.0, 1.0]))


def test_exclusive_segment_sum_matches_per_ray_loop():
    torch.manual_seed(0)
    ray_indices = torch.sort(torch.randint(0, 7, (200,))).values
    values = torch.rand(200) * 100
    got = exclusive_segment_sum(values, ray_indices)
    expected = torch.zeros(200)
    for r in range(9):
        idx = (ray_indices == r).nonzero().squeeze(-1)
        if idx.numel():
            expected[idx] = torch.cumsum(values[idx], 0) - values[idx]
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-4)


def test_sphere_matches_closed_form():
    field = SphereField()
    o, d = sphere_rays()
    config = VolumeRenderConfig(num_samples_per_ray=2048, **PLAIN)
    bg = torch.tensor([0.2, 0.4, 0.6])
    with torch.no_grad():
        out = render_rays(field, o, d, config, background=bg)
    # chord of each ray through the ball
    t_closest = -(o * d).sum(-1)
    b2 = (o + d * t_closest[:, None]).square().sum(-1)
    half = (field.ball**2 - b2).clamp(min=0).sqrt()
    sigma = 3.0
    opacity = 1 - torch.exp(-sigma * 2 * half)
    assert (opacity > 0.5).sum() > 50 and (opacity == 0).sum() > 50  # both hits and misses in view
    torch.testing.assert_close(out.opacity.squeeze(-1), opacity, atol=1e-2, rtol=0)
    color = torch.tensor([0.9, 0.3, 0.1])
    torch.testing.assert_close(out.rgb, color * opacity[:, None] + bg * (1 - opacity[:, None]), atol=1e-2, rtol=0)
    # depth = ∫ t σ T dt over the chord starting at t0
    t0, L = t_closest - half, 2 * half
    e = torch.exp(-sigma * L)
    depth = t0 * (1 - e) + 1 / sigma - (L + 1 / sigma) * e
    torch.testing.assert_close(out.depth.squeeze(-1), depth, atol=2e-2, rtol=0)
    # normals: unit where the sphere is hit, facing the camera
    hit = opacity > 0.5
    torch.testing.assert_close(out.normal[hit].norm(dim=-1), torch.ones(int(hit.sum())))
    assert ((out.normal[hit] * d[hit]).sum(-1) < 0).all()


def test_weights_are_a_partition_of_at_most_one():
    field = tiny_volume()
    o, d = sphere_rays(12, distance=2.5)
    out = render_rays(field, o, d, VolumeRenderConfig(num_samples_per_ray=128, **PLAIN))
    assert (out.weights >= 0).all()
    per_ray = torch.zeros(o.shape[0]).index_add(0, out.ray_indices, out.weights.squeeze(-1))
    assert per_ray.max() <= 1 + 1e-5
    torch.testing.assert_close(per_ray, out.opacity.squeeze(-1))
    w, transmittance, alphas = render_weights(
        torch.tensor([1.0, 2.0, 0.0, 5.0]), torch.full((4,), 0.5), torch.tensor([0, 0, 0, 1]), 2
    )
    torch.testing.assert_close(transmittance, torch.tensor([1.0, math.exp(-0.5), math.exp(-1.5), 1.0]))
    torch.testing.assert_close(w, transmittance * alphas)


def test_background_compositing():
    field = SphereField()
    o, d = sphere_rays(10)
    config = VolumeRenderConfig(num_samples_per_ray=256, **PLAIN)
    with torch.no_grad():
        white = render_rays(field, o, d, config)
        per_ray_bg = torch.rand(o.shape[0], 3)
        custom = render_rays(field, o, d, config, background=per_ray_bg)
    torch.testing.assert_close(white.rgb, white.rgb_fg + (1 - white.opacity))
    torch.testing.assert_close(custom.rgb, custom.rgb_fg + per_ray_bg * (1 - custom.opacity))
    torch.testing.assert_close(custom.rgb_fg, white.rgb_fg)


def test_chunked_equals_unchunked():
    field = tiny_volume()
    o, d = sphere_rays(12, distance=2.5)
    whole = VolumeRenderConfig(num_samples_per_ray=96, eval_chunk_size=10**6)
    chunked = VolumeRenderConfig(num_samples_per_ray=96, eval_chunk_size=37, march_chunk_elements=500, field_chunk_size=100)
    bg = torch.rand(o.shape[0], 3)
    with torch.no_grad():
        a = render_rays(field, o, d, whole, background=bg)
        b = render_rays(field, o, d, chunked, background=bg)
    assert b.weights is None and a.weights is not None
    for name in ("rgb", "rgb_fg", "opacity", "depth", "normal", "normal_vis"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-5, rtol=1e-5)


def test_occupancy_grid_path_equals_plain_path_when_the_grid_is_exact():
    field = BoxField()
    o, d = sphere_rays(16, distance=2.8)
    config = VolumeRenderConfig(num_samples_per_ray=256, prune_alpha_threshold=0.0, grid=OccupancyGridConfig(resolution=16))
    grid = OccupancyGrid(field.radius, config.grid)
    with torch.no_grad():
        plain = render_rays(field, o, d, config)  # no grid passed
        untouched = render_rays(field, o, d, config, occupancy=grid)  # all cells start occupied
        assert grid.update(0, field.forward_density, config.step_size(field.radius))
        assert not grid.update(3, field.forward_density, config.step_size(field.radius))  # not a multiple of 16
        # exactly the 8³ cells of the cube are occupied
        assert int(grid.binary.sum()) == 8**3 and bool(grid.binary[4:12, 4:12, 4:12].all())
        gridded = render_rays(field, o, d, config, occupancy=grid)
    assert len(gridded.weights) < 0.6 * len(plain.weights)
    for other in (untouched, gridded):
        for name in ("rgb", "opacity", "depth", "normal"):
            torch.testing.assert_close(getattr(other, name), getattr(plain, name), atol=1e-5, rtol=1e-5)


def test_occupancy_grid_after_warmup_samples_cells_and_decays():
    field = BoxField()
    grid = OccupancyGrid(1.0, OccupancyGridConfig(resolution=8, warmup_steps=16, update_every=16))
    grid.update(0, field.forward_density, 0.05)
    before = grid.occupancy.clone()
    empty = lambda p: torch.zeros(p.shape[0], 1)  # noqa: E731
    grid.update(16, empty, 0.05)  # after warm-up: decays only the sampled cells
    changed = grid.occupancy != before
    assert changed.any() and not changed.all()
    torch.testing.assert_close(grid.occupancy[changed], before[changed] * 0.95)


def test_alpha_pruning_changes_little():
    field = tiny_volume()
    o, d = sphere_rays(10, distance=2.5)
    with torch.no_grad():
        full = render_rays(field, o, d, VolumeRenderConfig(num_samples_per_ray=128, **PLAIN))
        pruned = render_rays(
            field, o, d, VolumeRenderConfig(num_samples_per_ray=128, prune_alpha_threshold=0.01, grid=OccupancyGridConfig(enabled=False))
        )
    assert len(pruned.weights) <= len(full.weights)
    torch.testing.assert_close(pruned.rgb, full.rgb, atol=5e-2, rtol=0)


def test_early_stop_drops_only_samples_behind_an_opaque_surface():
    field = BoxField(sigma=60.0)  # about 30 steps of 1/40 inside: transmittance falls to ~1e-26
    o, d = sphere_rays(12)
    with torch.no_grad():
        full = render_rays(field, o, d, VolumeRenderConfig(num_samples_per_ray=256, **PLAIN))
        early = render_rays(field, o, d, VolumeRenderConfig(num_samples_per_ray=256, **{**PLAIN, "early_stop_eps": 1e-4}))
    assert VolumeRenderConfig().early_stop_eps == 1e-4  # nerfacc's default, kept by threestudio
    inside = lambda out: int((field.forward_density(out.positions) > 0).sum())  # noqa: E731
    assert inside(early) < 0.5 * inside(full)  # most samples inside the box lie behind its opaque front
    # what is left out carries at most the transmittance at the cut (< 1e-4 per ray)
    torch.testing.assert_close(early.opacity, full.opacity, atol=1e-4, rtol=0)
    torch.testing.assert_close(early.rgb, full.rgb, atol=1e-4, rtol=0)


def test_gradients_reach_every_field_parameter():
    field = tiny_volume()
    o, d = sphere_rays(8, distance=2.5)
    out = render_rays(field, o, d, VolumeRenderConfig(num_samples_per_ray=64), training=True, generator=torch.Generator().manual_seed(0))
    orient = (out.weights.detach() * (out.sample_normals * d[out.ray_indices]).sum(-1, keepdim=True).clamp(min=0) ** 2).sum()
    loss = out.rgb.mean() + out.normal_vis.mean() + out.opacity.mean() + orient
    loss.backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_stratified_jitter_only_in_training():
    field = tiny_volume()
    o, d = sphere_rays(6, distance=2.5)
    cfg = VolumeRenderConfig(num_samples_per_ray=64, **PLAIN)
    with torch.no_grad():
        e1, e2 = render_rays(field, o, d, cfg), render_rays(field, o, d, cfg)
        t1 = render_rays(field, o, d, cfg, training=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(e1.rgb, e2.rgb)
    assert not torch.equal(t1.t_starts[:5], e1.t_starts[:5])


def test_render_cameras_shapes_and_orientation():
    class HalfRed(BoxField):
        def forward(self, points, with_normal=False):
            red = (points[:, :1] > 0).float()  # red on the +x side, blue on −x
            albedo = torch.cat([red, torch.zeros_like(red), 1 - red], -1)
            return FieldOutput(self.forward_density(points), albedo, F.normalize(points, dim=-1) if with_normal else None)

    field = HalfRed(sigma=50.0)
    c2w = orbit_c2w(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 180.0]), torch.tensor([3.0, 3.0]))
    with torch.no_grad():
        out = render_cameras(field, c2w, torch.tensor([40.0, 40.0]), 12, 16, VolumeRenderConfig(num_samples_per_ray=128))
    assert out.rgb.shape == (2, 12, 16, 3) and out.opacity.shape == (2, 12, 16, 1) and out.normal.shape == (2, 12, 16, 3)
    centre = out.rgb[:, 6, 8]
    assert centre[0, 0] > 0.9 and centre[0, 2] < 0.1  # camera on +x sees the red side
    assert centre[1, 2] > 0.9 and centre[1, 0] < 0.1  # camera on −x sees the blue side
    assert out.opacity[:, 0, 0].max() < 1e-3  # corners miss the cube


def test_diffuse_point_light_shading():
    albedo = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    normals = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    positions = torch.zeros(2, 3)
    shading = Shading("diffuse", torch.tensor([0.0, 0.0, 5.0]), 0.1, 0.9)
    got = shade(albedo, normals, positions, torch.zeros(2, dtype=torch.long), shading)
    torch.testing.assert_close(got, torch.tensor([[0.5] * 3, [0.05] * 3]))
    textureless = shade(albedo, normals, positions, torch.zeros(2, dtype=torch.long), Shading("textureless", torch.tensor([0.0, 0.0, 5.0])))
    torch.testing.assert_close(textureless, torch.tensor([[1.0] * 3, [0.1] * 3]))
    cfg = MaterialConfig(ambient_only_steps=100)
    assert choose_shading(cfg, 50, True) == "albedo"
    assert choose_shading(cfg, 500, False) == "diffuse"
    # through render_cameras with a light per camera
    field = SphereField(sigma=40.0, color=(1.0, 1.0, 1.0))
    c2w = orbit_c2w(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]))
    lit = Shading("diffuse", torch.tensor([[3.0, 0.0, 0.0]]), 0.1, 0.9)
    with torch.no_grad():
        out = render_cameras(field, c2w, torch.tensor([40.0]), 9, 9, VolumeRenderConfig(num_samples_per_ray=256, **PLAIN), shading=lit)
    assert out.rgb[0, 4, 4].min() > 0.9  # facing the light


def test_renderer_component_owns_and_checkpoints_its_grid():
    from hash3d.config.registry import build
    from hash3d.render import NeRFVolumeRenderer, SolidColorBackground, SolidColorBackgroundConfig

    field = BoxField()
    config = VolumeRenderConfig(num_samples_per_ray=128, prune_alpha_threshold=0.0, grid=OccupancyGridConfig(resolution=16))
    renderer = build("renderer", "nerf-volume-renderer", config)
    assert isinstance(renderer, NeRFVolumeRenderer)
    assert renderer.refresh_occupancy(0, field) and not renderer.refresh_occupancy(5, field)
    assert int(renderer.grid.binary.sum()) == 8**3
    restored = NeRFVolumeRenderer(config)
    restored.load_state_dict(renderer.state_dict())
    assert torch.equal(restored.grid.binary, renderer.grid.binary)
    c2w = orbit_c2w(torch.tensor([10.0]), torch.tensor([20.0]), torch.tensor([2.8]))
    bg = SolidColorBackground(SolidColorBackgroundConfig(color=(0.0, 0.0, 0.0)))
    renderer.eval()
    with torch.no_grad():
        a = renderer(field, c2w, torch.tensor([40.0]), 8, 8, background=bg())
        b = render_cameras(field, c2w, torch.tensor([40.0]), 8, 8, replace_grid(config, False), background=torch.zeros(3))
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.rgb, a.rgb_fg)  # black background


def replace_grid(config, enabled):
    from dataclasses import replace

    return replace(config, grid=replace(config.grid, enabled=enabled))


# --- marching: the tight occupied box must give exactly the samples of a full-box march -----------------------------


def reference_march(rays_o, rays_d, radius, step_size, near_plane=0.0, jitter=None, occupancy=None):
    """The former march_rays: every step of the whole box, the occupancy test on every candidate (no chunks)."""
    n_rays = rays_o.shape[0]
    t_near, t_far, hit = ray_aabb(rays_o, rays_d, radius, near_plane)
    if jitter is None:
        jitter = torch.zeros(n_rays)
    t_first = t_near + jitter * step_size
    span = torch.where(hit, t_far - t_first, torch.zeros_like(t_far)).clamp(min=0)
    max_steps = int(math.ceil(span.max().item() / step_size)) + 1 if n_rays else 0
    k = torch.arange(max_steps, dtype=rays_o.dtype)
    start = t_first[:, None] + k[None, :] * step_size
    far = t_far[:, None]
    valid = hit[:, None] & (start < far)
    end = torch.minimum(start + step_size, far)
    if occupancy is not None:
        mid = 0.5 * (start + end)
        points = rays_o[:, None, :] + rays_d[:, None, :] * mid[..., None]
        valid = valid & occupancy.query(points.reshape(-1, 3)).view_as(valid)
    r, s = valid.nonzero(as_tuple=True)
    return r, start[r, s], end[r, s]


def random_rays(n, radius, gen, dtype=torch.float32):
    """Origins inside and outside the box, aimed near the centre or anywhere; a quarter axis-aligned, some of those
    on cell-corner planes (rays grazing cell faces)."""
    origins = (torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1) * radius * 2.5
    target = (torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1) * radius * 0.7
    dirs = torch.where(torch.rand(n, 1, generator=gen) < 0.5, target - origins, torch.randn(n, 3, generator=gen, dtype=torch.float64))
    axis = torch.randint(0, 3, (n,), generator=gen)
    sign = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
    aligned = torch.rand(n, generator=gen) < 0.25
    dirs[aligned] = F.one_hot(axis[aligned], 3).double() * sign[aligned, None]
    on_planes = aligned & (torch.rand(n, generator=gen) < 0.5)
    corners = (torch.randint(0, 17, (n, 3), generator=gen).double() / 8 - 1) * radius  # cell corners of res 8 and 16
    origins[on_planes] = torch.where(F.one_hot(axis[on_planes], 3).bool(), origins[on_planes], corners[on_planes])
    return origins.to(dtype), F.normalize(dirs, dim=-1).to(dtype)


def grid_with(radius, resolution, pattern, gen):
    grid = OccupancyGrid(radius, OccupancyGridConfig(resolution=resolution))
    res = resolution
    ijk = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).float()
    if pattern == "full":
        binary = torch.ones(res, res, res, dtype=torch.bool)
    elif pattern == "empty":
        binary = torch.zeros(res, res, res, dtype=torch.bool)
    elif pattern == "single":
        binary = torch.zeros(res, res, res, dtype=torch.bool)
        binary[tuple(torch.randint(0, res, (3,), generator=gen).tolist())] = True
    elif pattern == "blob":
        centre = res / 2 + (torch.rand(3, generator=gen) - 0.5) * res / 3
        binary = (ijk + 0.5 - centre).norm(dim=-1) < res / 5
    elif pattern == "corner":  # touching the box faces
        binary = (ijk < res / 4).all(-1) | (ijk >= res - 2).all(-1)
    elif pattern == "sparse":
        binary = torch.rand(res, res, res, generator=gen) < 0.03
    else:
        raise ValueError(pattern)
    grid.binary.copy_(binary)
    grid.refresh_bounds()
    return grid


@pytest.mark.parametrize("pattern", ["disabled", "full", "empty", "single", "blob", "corner", "sparse"])
def test_march_rays_equals_the_full_box_march(pattern):
    from hash3d.render import march_rays

    gen = torch.Generator().manual_seed(sum(map(ord, pattern)))  # str hash() varies between runs
    cases = [(1.0, 8, 16, 0.0, torch.float32), (2.0, 16, 512, 0.0, torch.float32), (1.3, 16, 97, 0.4, torch.float32),
             (2.0, 32, 200, 0.0, torch.float64), (0.7, 8, 5, 0.0, torch.float32)]
    for radius, res, n_steps, near, dtype in cases:
        grid = None if pattern == "disabled" else grid_with(radius, res, pattern, gen)
        o, d = random_rays(300, radius, gen, dtype)
        cams = orbit_c2w(torch.tensor([-10.0, 30.0, 80.0]), torch.tensor([0.0, 45.0, -120.0]), torch.full((3,), radius * 1.9))
        from hash3d.data.cameras import rays

        co, cd = rays(cams, torch.full((3,), 20.0), 6, 6)
        o, d = torch.cat([o, co.reshape(-1, 3).to(dtype)]), torch.cat([d, cd.reshape(-1, 3).to(dtype)])
        step = 1.732 * 2 * radius / n_steps
        for jitter in (None, torch.rand(o.shape[0], generator=gen, dtype=dtype)):
            expected = reference_march(o, d, radius, step, near, jitter, grid)
            for chunk in (2**22, 777):
                got = march_rays(o, d, radius, step, near, jitter, grid, chunk)
                label = f"{pattern} r={radius} res={res} n={n_steps} near={near} {dtype} jitter={jitter is not None} chunk={chunk}"
                assert torch.equal(got.ray_indices, expected[0]), label
                assert torch.equal(got.t_starts, expected[1]), label
                assert torch.equal(got.t_ends, expected[2]), label
    if pattern == "empty":
        assert len(got) == 0


def test_march_rays_examines_fewer_candidates_for_a_small_blob():
    from hash3d.render import march_rays

    o, d = sphere_rays(24, distance=3.8, fovy=40.0)
    radius, step = 2.0, 1.732 * 4 / 512
    jitter = torch.rand(o.shape[0], generator=torch.Generator().manual_seed(0))
    blob = OccupancyGrid(radius, OccupancyGridConfig(resolution=32))
    assert blob.update(0, SphereField(radius, ball=0.5).forward_density, step)  # cells within 0.5 of the centre
    full = OccupancyGrid(radius, OccupancyGridConfig(resolution=32))
    plain, everything, tight = (march_rays(o, d, radius, step, 0.0, jitter, g) for g in (None, full, blob))
    assert plain.n_candidates == everything.n_candidates > 0
    assert 0 < len(tight) and tight.n_candidates < 0.3 * plain.n_candidates
    assert tight.n_candidates >= len(tight)


def test_occupancy_grid_keeps_the_box_of_its_occupied_cells():
    grid = OccupancyGrid(2.0, OccupancyGridConfig(resolution=16))
    lo, hi, any_occupied = grid.occupied_box()  # all cells occupied from the start
    assert torch.equal(lo, torch.full((3,), -2.0)) and torch.equal(hi, torch.full((3,), 2.0)) and bool(any_occupied)
    assert grid.update(0, BoxField(radius=2.0, half=0.5).forward_density, 0.01)  # cells [6, 10) per axis
    lo, hi, any_occupied = grid.occupied_box()
    assert torch.equal(lo, torch.full((3,), -0.5)) and torch.equal(hi, torch.full((3,), 0.5)) and bool(any_occupied)
    assert "occupied_cells" not in grid.state_dict()  # derived from binary, refreshed on load
    restored = OccupancyGrid(2.0, OccupancyGridConfig(resolution=16))
    restored.load_state_dict(grid.state_dict())
    assert torch.equal(restored.occupied_cells, grid.occupied_cells)
    grid.binary.zero_()
    grid.binary[3, 15, 0] = True
    grid.refresh_bounds()
    lo, hi, _ = grid.occupied_box()
    assert torch.equal(lo, torch.tensor([-1.25, 1.75, -2.0])) and torch.equal(hi, torch.tensor([-1.0, 2.0, -1.75]))
    grid.binary.zero_()
    grid.refresh_bounds()
    assert not bool(grid.occupied_box()[2])


def test_pruning_selects_samples_and_their_positions_together():
    from dataclasses import replace

    from hash3d.render import PackedSamples

    field = tiny_volume()
    o, d = sphere_rays(10, distance=2.5)
    config = VolumeRenderConfig(num_samples_per_ray=96, prune_alpha_threshold=0.02, early_stop_eps=1e-3)
    out = render_rays(field, o, d, config, training=True, generator=torch.Generator().manual_seed(0))
    full = render_rays(field, o, d, replace_grid(replace(config, prune_alpha_threshold=0.0, early_stop_eps=0.0), True),
                       training=True, generator=torch.Generator().manual_seed(0))
    assert 0 < len(out.ray_indices) < len(full.ray_indices)
    mid = 0.5 * (out.t_starts + out.t_ends)
    assert torch.equal(out.positions, o[out.ray_indices] + d[out.ray_indices] * mid[:, None])
    samples = PackedSamples(full.ray_indices, full.t_starts, full.t_ends, 7)
    mask = torch.rand(len(samples), generator=torch.Generator().manual_seed(1)) < 0.4
    for picked in (samples.select(mask), samples.select(mask.nonzero().squeeze(-1))):
        assert picked.n_candidates == 7
        for name in ("ray_indices", "t_starts", "t_ends"):
            assert torch.equal(getattr(picked, name), getattr(samples, name)[mask])
