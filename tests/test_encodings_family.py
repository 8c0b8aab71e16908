"""ComRoPE, circulant STRING, RoPE-Mixed + APE, the paper's RoPE-Mixed, shared generators and
coordinate augmentation: their maths, their sources' formulas, and their life in a model."""

import math

import pytest
import torch

import liere
from liere import encodings
from liere.encodings import grid_positions

NEW = [
    "comrope_ap",
    "comrope_ld",
    "string_circulant",
    "rope_mixed_ape",
    "rope_mixed_paper",
    "rope_axial_vjepa2",
]


def make(name, num_axes=2, head_dim=16, num_heads=2, depth=3, grid=None, **options):
    grid = grid or (4,) * num_axes
    return encodings.build(
        name,
        head_dim=head_dim,
        num_heads=num_heads,
        depth=depth,
        num_axes=num_axes,
        grid_shape=grid,
        **options,
    )


def scores(enc, pos, q, k):
    """q at pos_i against k at pos_j through R(p) (layer 0, head 0), float64: (N, N)."""
    R = enc.rotation(pos)[0, 0].double()  # (N, K, g, g)
    g = R.shape[-1]
    qr = (R @ q.unflatten(-1, (-1, g)).unsqueeze(-1)).squeeze(-1).flatten(-2)
    kr = (R @ k.unflatten(-1, (-1, g)).unsqueeze(-1)).squeeze(-1).flatten(-2)
    return qr @ kr.T


@pytest.mark.parametrize("name", ["comrope_ap", "comrope_ld", "string_circulant"])
@pytest.mark.parametrize("num_axes", [2, 3])
def test_commuting_generators_and_exact_shift_invariance(name, num_axes):
    torch.manual_seed(0)
    enc = make(name, num_axes=num_axes, head_dim=24)
    gen = enc.generator_matrices().detach().double()  # (A, L, H, K, g, g)
    for i in range(num_axes):
        for j in range(num_axes):
            comm = gen[i] @ gen[j] - gen[j] @ gen[i]
            scale = max(1.0, gen.abs().max().item() ** 2)  # generators are made in fp32
            assert comm.abs().max() < 16 * torch.finfo(torch.float32).eps * scale, "rounding level"
    pos, shift = torch.rand(10, num_axes) * 3, torch.rand(1, num_axes) * 2
    q, k = torch.randn(10, 24, dtype=torch.float64), torch.randn(10, 24, dtype=torch.float64)
    assert torch.allclose(scores(enc, pos, q, k), scores(enc, pos + shift, q, k), atol=1e-4)
    dense = make("liere", num_axes=num_axes, head_dim=24, block_size=None)
    assert (scores(dense, pos, q, k) - scores(dense, pos + shift, q, k)).abs().max() > 1e-1


def test_comrope_ap_axes_own_disjoint_blocks_round_robin():
    enc = make("comrope_ap", num_axes=3, head_dim=48, block_size=8)  # 6 blocks: axis j mod 3
    nonzero = enc.generator_matrices().detach().abs().sum(dim=(-1, -2)) > 0  # (A, L, H, K)
    assert nonzero.sum(0).eq(1).all(), "every block belongs to exactly one axis"
    for a in range(3):
        assert nonzero[a, 0, 0].tolist() == [j % 3 == a for j in range(6)]
    assert enc.position_scheme == "cells"


def test_comrope_ld_axes_are_multiples_of_one_block():
    enc = make("comrope_ld", num_axes=3, head_dim=16, block_size=8)
    gen = enc.generator_matrices().detach()  # (A, L, H, K, g, g)
    base = enc.skew(enc.upper.detach())  # (L, H, K, g, g)
    ratio = enc.multiplier.detach()  # (A, L, 1, K)
    assert torch.allclose(gen, ratio[..., None, None] * base.unsqueeze(0), atol=1e-6)
    flat = gen.flatten(-2)  # every axis's block is parallel to the same S
    cos = torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=-1).abs()
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    assert enc.multiplier.shape == (3, 3, 1, 2), "per axis, layer and block; shared by the heads"


def test_comrope_matches_the_sources_construction():
    """Longin-Yu/ComRoPE: A = (P - P^T) * multiplier (LD), (P - P^T) * mask[i, i::n] (AP), R = matrix_exp."""
    torch.manual_seed(3)
    P = torch.randn(2, 2, 8, 8, dtype=torch.float64)  # (H, K, g, g): one layer of the source's freqs
    mult = torch.randn(2, 2, dtype=torch.float64)  # (A, K)
    ld = make("comrope_ld", head_dim=16, depth=1, block_size=8)
    skew = P - P.transpose(-1, -2)
    rows, cols = torch.triu_indices(8, 8, 1)
    with torch.no_grad():
        ld.upper.copy_(skew[..., rows, cols].unsqueeze(0))
        ld.multiplier.copy_(mult[:, None, None, :])
    pos = grid_positions((4, 4), scheme="cells").double()
    theirs = torch.linalg.matrix_exp(torch.einsum("na,ak,hkij->hnkij", pos, mult, skew))
    assert torch.allclose(ld.rotation(pos.float())[0].double(), theirs, atol=1e-5)
    ap = make("comrope_ap", head_dim=16, depth=1, block_size=8)
    with torch.no_grad():
        ap.upper.copy_(skew[..., rows, cols].unsqueeze(0))
    mask = torch.zeros(2, 2, dtype=torch.float64)
    for i in range(2):
        mask[i, i::2] = 1
    theirs = torch.linalg.matrix_exp(torch.einsum("na,ak,hkij->hnkij", pos, mask, skew))
    assert torch.allclose(ap.rotation(pos.float())[0].double(), theirs, atol=1e-5)
    # the source's positions: (index + 0.5) / n per axis
    assert torch.allclose(pos[:4, 1], (torch.arange(4) + 0.5).double() / 4)


def test_comrope_init_matches_the_sources_distribution():
    torch.manual_seed(0)
    enc = make("comrope_ld", head_dim=64, num_heads=6, depth=12, block_size=8)
    # the source: P ~ N(0, 1), so entries of P - P^T ~ N(0, 2); its multiplier ~ N(0, 1)
    assert enc.upper.std().item() == pytest.approx(math.sqrt(2), rel=0.05)
    assert enc.multiplier.std().item() == pytest.approx(1.0, rel=0.2)


def test_circulant_string_is_orthogonal_circulant_and_its_generators_are_c_minus_ct():
    torch.manual_seed(0)
    enc = make("string_circulant", head_dim=16)
    with torch.no_grad():
        enc.circ.normal_(0, 0.5)  # any first rows, not only the initial ones
    direct = enc.circulant_generators().detach()  # (A, L, H, d, d) from C - C^T
    c = enc.circ.detach()[0, 0, 0]
    C = torch.stack([c.roll(i) for i in range(16)])  # row i = first row shifted right by i
    assert torch.allclose(direct[0, 0, 0], C - C.T, atol=1e-6)
    assert torch.allclose(enc.generator_matrices().detach()[:, :, :, 0], direct, atol=1e-5)
    R = enc.rotation(torch.tensor([[1.3, -0.7], [2.0, 0.5]]))[..., 0, :, :].double()  # (L, H, N, d, d)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(16, dtype=torch.float64), atol=1e-5)
    for i in range(16):  # circulant: every row is the first one rotated
        assert torch.allclose(R[..., i, :], R[..., 0, :].roll(i, -1), atol=1e-5)


def test_circulant_string_starts_as_rope_mixed_in_the_fourier_basis():
    torch.manual_seed(0)
    enc = make("string_circulant", head_dim=32)
    f = enc.frequencies().detach()  # (A, L, H, 16): 15 pairs turn, the last does not
    assert torch.equal(f[..., -1], torch.zeros_like(f[..., -1]))
    magnitudes = f[..., :-1].norm(dim=0)
    expected = 10.0 ** (-(torch.arange(15) // 2).float() / 8)
    assert torch.allclose(magnitudes, expected.expand_as(magnitudes), atol=1e-5)


def test_rope_axial_vjepa2_equals_vjepa2_rotation_in_3d():
    """V-JEPA 2 (facebookresearch/vjepa2 ``rotate_queries_or_keys``, fixed pairing): the head dim in
    thirds of 2 * ((d // 3) // 2) channels over t, h, w, omega_j = 10000^(-j / (D/2)), integer
    positions, interleaved pairs, the remaining channels unrotated."""
    d = 64
    enc = make("rope_axial_vjepa2", num_axes=3, head_dim=d, grid=(2, 3, 3))
    pos = enc.positions((2, 3, 3))
    x = torch.randn(1, pos.shape[0], 1, d, dtype=torch.float64)
    ours = enc.prepare((2, 3, 3)).to(torch.float64).apply(x, 0)[0, :, 0]
    D = 2 * ((d // 3) // 2)
    omega = 1.0 / 10000 ** (torch.arange(D // 2, dtype=torch.float64) / (D / 2))
    parts = []
    for a in range(3):
        ang = pos[:, a : a + 1].double() * omega  # (N, D/2)
        y = x[0, :, 0, a * D : (a + 1) * D].unflatten(-1, (-1, 2))
        y0, y1 = y.unbind(-1)
        parts.append(
            torch.stack([y0 * ang.cos() - y1 * ang.sin(), y1 * ang.cos() + y0 * ang.sin()], -1).flatten(-2)
        )
    theirs = torch.cat([*parts, x[0, :, 0, 3 * D :]], dim=-1)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_rope_mixed_ape_adds_a_learned_table_and_rotates():
    enc = make("rope_mixed_ape", head_dim=16)
    tokens = torch.zeros(1, 16, 32)
    assert torch.equal(enc.embed(tokens, (4, 4)), enc.ape.pos_embed)
    assert enc.is_rotary and enc.prepare((4, 4)) is not None
    assert enc.apply_flops(17) == make("rope_mixed").apply_flops(17) + 17 * 32


def test_rope_mixed_paper_is_the_official_g2_liere():
    """StanfordMIMI/LieRE: generator_dim=2, raw ~ U[0, 2 pi), A = triu(raw) - triu(raw)^T (its -0.5
    cancels), sequential positions linspace(0, n / n_train, n)."""
    enc = make("rope_mixed_paper", head_dim=64, grid=(4, 4))
    assert enc.block_size == 2 and enc.init == "paper" and enc.position_scheme == "official"
    u = enc.upper.detach()
    assert 0 <= u.min() and u.max() < 2 * math.pi
    pos = enc.positions((6, 6))
    official = torch.cartesian_prod(torch.linspace(0, 1.5, 6), torch.linspace(0, 1.5, 6))
    assert torch.allclose(pos, official, atol=1e-6)
    raw = torch.rand(2, 3, 2 * 32, 2, 2) * 2 * math.pi  # (A, L, H*K, g, g), as the official init
    upper = torch.triu(raw, diagonal=1) - 0.5
    bases = upper - upper.transpose(-1, -2)
    with torch.no_grad():
        enc.upper.copy_(raw[..., 0, 1].reshape(2, 3, 2, 32, 1))
    assert torch.allclose(enc.generator_matrices().detach(), bases.reshape(2, 3, 2, 32, 2, 2), atol=1e-6)


@pytest.mark.parametrize("grid, train, gap", [((6, 6), (4, 4), 1 / 6), ((20, 20), (14, 14), 0.0330)])
def test_official_positions_agree_on_the_training_grid_and_differ_elsewhere(grid, train, gap):
    assert torch.allclose(grid_positions(train, train, "official"), grid_positions(train, train))
    official, ours = grid_positions(grid, train, "official"), grid_positions(grid, train)
    n, t = grid[0], train[0]
    axis = torch.linspace(0, n / t, n)
    assert torch.allclose(official, torch.cartesian_prod(axis, axis), atol=1e-6)
    assert (official - ours).abs().max().item() == pytest.approx(gap, abs=5e-4)


def test_centered_and_cells_schemes():
    c = grid_positions((4,), scheme="centered")[:, 0]
    assert torch.allclose(c, torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(grid_positions((4,), scheme="cells")[:, 0], (c + 1) / 2)


def test_shared_official_generators_give_layers_after_the_first_exactly_zero_gradient():
    """As StanfordMIMI/LieRE's layer loop computes it: every layer uses layer 0's rotations."""
    torch.manual_seed(0)
    kw = dict(num_classes=5, embed_dim=64, depth=3, num_heads=2, img_size=16, patch_size=4)
    model = liere.VisionTransformer(encoding="liere8", encoding_options={"share_layers": "official"}, **kw)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    grad = model.encoding.upper.grad
    assert grad.shape[1] == 3 and grad[:, 0].abs().sum() > 0
    assert torch.equal(grad[:, 1:], torch.zeros_like(grad[:, 1:])), "copies 1..L-1 get exactly zero"
    # and it computes what one shared set (per_layer=False) holding layer 0's generators computes
    torch.manual_seed(0)
    shared = liere.VisionTransformer(encoding="liere8", encoding_options={"per_layer": False}, **kw)
    state = dict(model.state_dict())
    state["encoding.upper"] = state["encoding.upper"][:, :1]
    shared.load_state_dict(state)
    x = torch.randn(1, 3, 20, 16)
    model.eval(), shared.eval()
    assert torch.allclose(model(x), shared(x), atol=1e-5)


def test_share_layers_is_validated():
    with pytest.raises(ValueError, match="share_layers"):
        make("liere", share_layers="all")


# -- coordinate augmentation ---------------------------------------------------------------------


def augmented(enc, grid, step=None):
    """What training-mode prepare would use as positions at ``step``."""
    pos = enc.positions(grid)
    return enc.augment.draw(pos, tuple(grid), enc.augment.generator(step))


def test_augmentation_is_off_in_eval_and_on_in_training():
    enc = make("rope_mixed", augment={"shift": 0.5, "jitter": 1.5, "rescale": 2.0})
    x = torch.randn(1, 16, 2, 16)
    enc.eval()
    with torch.no_grad():
        a, b = enc.prepare((4, 4)).apply(x, 0), make("rope_mixed").prepare((4, 4))
    assert int(enc.augment.step) == 0, "eval passes draw nothing"
    clean = encodings.build("rope_mixed", head_dim=16, num_heads=2, depth=3, num_axes=2, grid_shape=(4, 4))
    clean.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("augment.")})
    assert torch.allclose(a, clean.eval().prepare((4, 4)).apply(x, 0)), "eval = no augmentation"
    enc.train()
    t1, t2 = enc.prepare((4, 4)).apply(x, 0), enc.prepare((4, 4)).apply(x, 0)
    assert int(enc.augment.step) == 2 and not torch.allclose(t1, t2) and not torch.allclose(t1, a)
    del b


def test_augmentation_is_identical_after_resume():
    torch.manual_seed(7)
    enc = make("liere", block_size=4, augment={"shift": 0.3, "perturb": 1.0})
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    runs = [enc.prepare((4, 4)).blocks for _ in range(3)]  # steps 0, 1, 2
    assert int(enc.augment.step) == 3
    torch.manual_seed(123)  # a different process: other global RNG, same checkpoint
    resumed = make("liere", block_size=4, augment={"shift": 0.3, "perturb": 1.0})
    state["augment.step"] = torch.tensor(1)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.prepare((4, 4)).blocks, runs[1])
    assert torch.equal(resumed.prepare((4, 4)).blocks, runs[2])
    fresh = make("liere", block_size=4, augment={"shift": 0.3})
    assert int(fresh.augment.seed) != int(enc.augment.seed), "the seed comes from the run's generator"


@pytest.mark.parametrize("scheme", ["proportional", "index", "centered"])
def test_augmentation_stays_within_its_stated_amounts(scheme):
    grid = (5, 7)
    for step in range(20):
        enc = make("rope_mixed", positions=scheme, grid=grid, augment={"shift": 0.25})
        base = enc.positions(grid).double()
        lo, hi = base.min(0).values, base.max(0).values
        spacing = (hi - lo) / (torch.tensor(grid) - 1)
        half = (hi - lo) / 2 + spacing / 2
        d = augmented(enc, grid, step).double() - base
        assert torch.allclose(d, d[:1].expand_as(d), atol=1e-6), "a shift moves every token alike"
        assert (d[0].abs() <= 0.25 * half + 1e-6).all()
        enc = make("rope_mixed", positions=scheme, grid=grid, augment={"jitter": 1.5, "rescale": 2.0})
        center = (lo + hi) / 2
        ratio = (augmented(enc, grid, step).double() - center) / (base - center)
        ratio = ratio[(base - center).abs().min(1).values > 1e-6]
        assert torch.allclose(ratio, ratio[:1].expand_as(ratio), atol=1e-6), "one factor per axis"
        assert ((ratio >= 1 / 3 - 1e-6) & (ratio <= 3 + 1e-6)).all(), "jitter 1.5 x rescale 2"
        enc = make("rope_mixed", positions=scheme, grid=grid, augment={"perturb": 3.0})
        d = augmented(enc, grid, step).double() - base
        assert (d.abs() <= 0.5 * spacing + 1e-6).all() and d.abs().max() > 0


def test_augmentation_on_centered_coordinates_is_dinov3s_computation():
    """dinov3 RopePositionEmbedding.forward: coords (2i+1)/n - 1, + U[-s, s] per axis, * exp(U[-log j,
    log j]) per axis, * exp(U[-log r, log r]) for all axes, in that order."""
    enc = make(
        "rope_axial", positions="centered", grid=(6, 4), augment={"shift": 0.1, "jitter": 1.2, "rescale": 2.0}
    )
    gen = enc.augment.generator(5)
    u_shift = torch.rand(2, generator=gen, dtype=torch.float64) * 2 - 1
    u_jitter = torch.rand(2, generator=gen, dtype=torch.float64) * 2 - 1
    u_rescale = torch.rand(1, generator=gen, dtype=torch.float64) * 2 - 1
    coords = torch.cartesian_prod((torch.arange(6) + 0.5) / 6, (torch.arange(4) + 0.5) / 4).double() * 2 - 1
    coords = coords + 0.1 * u_shift
    coords = coords * torch.exp(math.log(1.2) * u_jitter)
    coords = coords * torch.exp(math.log(2.0) * u_rescale)
    assert torch.allclose(augmented(enc, (6, 4), 5).double(), coords, atol=1e-6)


def test_augment_presets_and_errors():
    assert make("rope_axial", augment="dinov3").augment.amounts["rescale"] == 2.0
    assert make("rope_axial", augment={}).augment is None
    with pytest.raises(ValueError, match="spin"):
        make("rope_axial", augment={"spin": 1})
    with pytest.raises(ValueError, match="jitter"):
        make("rope_axial", augment={"jitter": 0.5})


# -- every new name in a model -------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("img, patch", [((16, 16), 4), ((4, 16, 16), (2, 4, 4))])
def test_new_encodings_build_train_export_and_reload(name, img, patch, tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    kw = dict(num_classes=5, embed_dim=96, depth=2, num_heads=2, img_size=img, patch_size=patch)
    opts = {"augment": {"shift": 0.1, "rescale": 1.5}} if name != "rope_mixed_ape" else {}
    model = liere.VisionTransformer(encoding=name, encoding_options=opts, **kw)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, *img), torch.randint(0, 5, (4,))
    before = {k: v.clone() for k, v in model.encoding.state_dict().items()}
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    moved = [
        k
        for k, v in model.encoding.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert moved or not list(model.encoding.parameters()), f"{name}: the encoding trained"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    torch.manual_seed(1)
    again = liere.VisionTransformer(encoding=name, encoding_options=opts, **kw)
    again.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
