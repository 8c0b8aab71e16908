"""The encodings' maths: rotations, generators, equivalences, relativity and their applied forms."""

import math

import pytest
import torch

from liere import encodings
from liere.encodings import AngleRotation, BlockRotation

ROTARY = [
    ("liere", {"block_size": 2}),
    ("liere", {"block_size": 4}),
    ("liere", {"block_size": 8, "per_head": False}),
    ("liere", {"block_size": None, "per_layer": False}),
    ("liere", {"block_size": 8, "init": "small"}),
    ("rope_axial", {}),
    ("rope_mixed", {}),
    ("rope_mixed", {"per_layer": False, "per_head": False}),
    ("string", {}),
    ("string_circulant", {}),
    ("comrope_ap", {"block_size": 4}),
    ("comrope_ld", {"block_size": 4}),
    ("rope_mixed_ape", {}),
    ("liere", {"block_size": 4, "share_layers": "official"}),
    ("rope_mixed_paper", {}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o in ROTARY]


def make(name, num_axes=2, head_dim=16, num_heads=2, depth=3, grid=None, **options):
    grid = grid or (4,) * num_axes
    enc = encodings.build(
        name,
        head_dim=head_dim,
        num_heads=num_heads,
        depth=depth,
        num_axes=num_axes,
        grid_shape=grid,
        **options,
    )
    if name == "string":  # move P away from the identity so its role is tested
        with torch.no_grad():
            enc.cayley.normal_(0, 0.3)
    return enc


def exp_reference(enc, pos):
    """float64 matrix_exp(sum_a p_a A_a) from the encoding's generators: (L, H, N, K, g, g)."""
    gen = enc.generator_matrices().detach().double()
    return torch.linalg.matrix_exp(torch.einsum("na,alhkij->lhnkij", pos.double(), gen).contiguous())


def apply_blocks(R, x):
    """Reference application of block rotations R (H, T, K, g, g) to x (B, H, T, d)."""
    g = R.shape[-1]
    return (R @ x.unflatten(-1, (-1, g)).unsqueeze(-1)).squeeze(-1).flatten(-2)


@pytest.mark.parametrize("name, options", ROTARY, ids=IDS)
@pytest.mark.parametrize("num_axes", [1, 2, 3])
def test_rotation_is_orthogonal_and_equals_exp_of_generators(name, options, num_axes):
    enc = make(name, num_axes=num_axes, **options)
    gen = enc.generator_matrices()
    assert torch.allclose(gen, -gen.transpose(-1, -2), atol=1e-6), "generators must be skew-symmetric"
    pos = enc.positions((5,) * num_axes)  # larger than the training grid
    R = enc.rotation(pos)
    shared = options.get("share_layers") == "official" or not options.get("per_layer", True)
    L = 1 if shared or name == "rope_axial" else 3
    H = 2 if options.get("per_head", True) and name != "rope_axial" else 1
    assert R.shape[:3] == (L, H, pos.shape[0])
    eye = torch.eye(R.shape[-1], dtype=R.dtype)
    assert torch.allclose(R @ R.transpose(-1, -2), eye, atol=1e-5)
    assert torch.allclose(R.double(), exp_reference(enc, pos), atol=1e-5)


@pytest.mark.parametrize("name, options", ROTARY, ids=IDS)
def test_applied_state_gives_the_scores_of_the_rotations(name, options):
    """The fast form each encoding applies gives the same q.k scores as R(p) itself, class token
    (identity rotation) included."""
    enc = make(name, **options)
    grid = (3, 5)
    state = enc.prepare(grid, num_prefix=1)
    R = enc.rotation(enc.positions(grid))
    eye = torch.eye(R.shape[-1]).expand(R.shape[0], R.shape[1], 1, R.shape[3], -1, -1)
    R = torch.cat([eye, R], dim=2)  # identity for the class token
    q, k = torch.randn(2, 2, 16, 16), torch.randn(2, 2, 16, 16)  # (B, H, T, d)
    for layer in range(3):
        Rl = R[layer if R.shape[0] > 1 else 0]
        want = apply_blocks(Rl, q) @ apply_blocks(Rl, k).transpose(-1, -2)
        # states are token-major: they rotate (B, T, H, d)
        qr, kr = (state.apply(t.transpose(1, 2), layer).transpose(1, 2) for t in (q, k))
        got = qr @ kr.transpose(-1, -2)
        assert torch.allclose(got, want, atol=1e-4), f"layer {layer}"


def test_block_state_never_builds_a_dense_head_matrix():
    enc = make("liere", head_dim=32, block_size=8)
    state = enc.prepare((4, 4))
    assert isinstance(state, BlockRotation)
    assert state.blocks.shape == (3, 16, 2, 4, 8, 8)  # (L, T, H, d/g, g, g): token-major
    assert isinstance(make("liere", block_size=2).prepare((4, 4)), AngleRotation)
    assert isinstance(make("rope_mixed").prepare((4, 4)), AngleRotation)


def test_liere_with_blocks_of_two_reproduces_rope_mixed():
    rope = make("rope_mixed")
    liere = make("liere", block_size=2, positions="index")
    with torch.no_grad():  # exp(p [[0, u], [-u, 0]]) turns by -p u: u = -f gives RoPE's angles
        liere.upper.copy_(-rope.freqs.unsqueeze(-1))
    pos = rope.positions((6, 4))
    assert torch.allclose(liere.rotation(pos), rope.rotation(pos), atol=1e-5)
    x = torch.randn(2, 24, 2, 16)  # (B, T, H, d)
    sl, sr = liere.prepare((6, 4)), rope.prepare((6, 4))
    for layer in range(3):
        assert torch.allclose(sl.apply(x, layer), sr.apply(x, layer), atol=1e-6)


def test_one_dimensional_liere_is_rope_with_learned_frequencies_in_a_learned_basis():
    """In 1D, A = V diag(i w) V^H, so R(p) = V diag(exp(i p w)) V^H: RoPE with frequencies w."""
    enc = make("liere", num_axes=1, block_size=None, grid=(8,))
    A = enc.generator_matrices()[0, 0, 0, 0].detach().double()  # (d, d)
    w, V = torch.linalg.eig(A)
    assert torch.allclose(w.real, torch.zeros_like(w.real), atol=1e-8), "purely imaginary spectrum"
    pos = enc.positions((11,))
    R = enc.rotation(pos)[0, 0, :, 0].double()  # (N, d, d)
    rope = (V @ torch.diag_embed(torch.exp(pos.double() * w)) @ V.conj().transpose(-1, -2)).real
    assert torch.allclose(R, rope, atol=1e-5)


def relative_scores(enc, pos, q, k):
    """Scores (N, N) between q rotated at pos_i and k rotated at pos_j, layer 0, head 0."""
    R = enc.rotation(pos)[0, 0].double()  # (N, K, g, g)
    qr = (R @ q.unflatten(-1, (R.shape[1], -1)).unsqueeze(-1)).squeeze(-1).flatten(-2)
    kr = (R @ k.unflatten(-1, (R.shape[1], -1)).unsqueeze(-1)).squeeze(-1).flatten(-2)
    return qr @ kr.T


@pytest.mark.parametrize("num_axes", [2, 3])
def test_string_is_exactly_relative_and_dense_liere_is_not(num_axes):
    torch.manual_seed(1)
    pos = torch.rand(12, num_axes) * 4
    shift = torch.rand(1, num_axes) * 3
    q, k = torch.randn(12, 16, dtype=torch.float64), torch.randn(12, 16, dtype=torch.float64)
    string = make("string", num_axes=num_axes)
    a, b = relative_scores(string, pos, q, k), relative_scores(string, pos + shift, q, k)
    assert torch.allclose(a, b, atol=1e-4)
    liere = make("liere", num_axes=num_axes, block_size=None)
    a, b = relative_scores(liere, pos, q, k), relative_scores(liere, pos + shift, q, k)
    assert (a - b).abs().max() > 1e-1, "non-commuting generators cannot be exactly relative"


def test_string_generators_commute():
    gen = make("string").generator_matrices()[:, 0, 0, 0].detach()  # (A, d, d)
    assert torch.allclose(gen[0] @ gen[1], gen[1] @ gen[0], atol=1e-5)
    liere = make("liere", block_size=None).generator_matrices()[:, 0, 0, 0].detach()
    assert not torch.allclose(liere[0] @ liere[1], liere[1] @ liere[0], atol=1e-2)


def test_rope_axial_spectrum_and_axis_split():
    enc = make("rope_axial", head_dim=32)
    f = enc.frequencies()[:, 0, 0]  # (A, K=16): x owns pairs 0-7, y owns 8-15
    assert torch.count_nonzero(f[0, :8]) == 8 and torch.count_nonzero(f[0, 8:]) == 0
    assert torch.count_nonzero(f[1, 8:]) == 8 and torch.count_nonzero(f[1, :8]) == 0
    expected = 100.0 ** (-torch.arange(8) / 8)
    assert torch.allclose(f[0, :8], expected) and torch.allclose(f[1, 8:], expected)
    assert enc.position_scheme == "index"
    assert not list(enc.parameters()), "axial RoPE is fixed"


def test_rope_mixed_init_uses_orthonormal_directions_per_layer_and_head():
    enc = make("rope_mixed", head_dim=32)
    f = enc.frequencies()  # (A, L, H, K)
    magnitudes = f.norm(dim=0)
    expected = 10.0 ** (-(torch.arange(16) // 2).float() / 8)
    assert torch.allclose(magnitudes, expected.expand_as(magnitudes), atol=1e-6)
    d0, d1 = f[:, :, :, 0] / magnitudes[..., 0], f[:, :, :, 1] / magnitudes[..., 1]
    assert torch.allclose((d0 * d1).sum(0), torch.zeros(3, 2), atol=1e-6), "pairs 0 and 1 are orthogonal"
    assert not torch.allclose(d0[:, 0, 0], d0[:, 1, 0]), "directions differ across layers"


@pytest.mark.parametrize("init, low, high", [("paper", 0.0, 2 * math.pi), ("small", -2.0, 2.0)])
def test_liere_initialisations(init, low, high):
    enc = make("liere", head_dim=64, block_size=8, init=init)
    u = enc.upper.detach()
    assert u.shape == (2, 3, 2, 8, 28)
    assert low <= u.min() and u.max() < high
    if init == "paper":
        assert u.mean().item() == pytest.approx(math.pi, abs=0.1)
    else:
        assert u.std().item() == pytest.approx(1 / math.sqrt(8), rel=0.1)


def test_eval_mode_cache_is_reused_and_invalidated_by_updates():
    enc = make("liere", block_size=4).eval()
    with torch.no_grad():
        a = enc.prepare((4, 4), 1)
        assert enc.prepare((4, 4), 1) is a, "eval mode reuses the grid's rotations"
        assert enc.prepare((5, 4), 1) is not a
        enc.upper.add_(0.1)  # an in-place update (optimizer step, load_state_dict)
        b = enc.prepare((4, 4), 1)
    assert b is not a and not torch.allclose(a.blocks, b.blocks)
    enc.train()
    with torch.no_grad():
        assert enc.prepare((4, 4), 1) is not enc.prepare((4, 4), 1), "no cache in training mode"


def test_setting_a_position_scheme_drops_rotations_cached_for_the_old_one():
    enc = make("liere", block_size=4).eval()
    fresh = make("liere", block_size=4, positions="rescale").eval()
    fresh.load_state_dict(enc.state_dict())
    x = torch.randn(2, 37, 2, 16)  # (B, T, H, d) on a 6 x 6 grid and a class token
    with torch.no_grad():
        before = enc.prepare((6, 6), 1).apply(x, 0)
        enc.position_scheme = "rescale"  # what `launch/evaluate.py --positions rescale` does
        after = enc.prepare((6, 6), 1).apply(x, 0)
        assert torch.allclose(after, fresh.prepare((6, 6), 1).apply(x, 0), atol=1e-6)
    assert not torch.allclose(before, after, atol=1e-3)
    with pytest.raises(ValueError, match=r"'grid'.*expected one of"):
        enc.position_scheme = "grid"


def test_rotations_are_computed_in_fp32_under_autocast_then_cast():
    enc = make("liere", block_size=8)
    full = enc.prepare((4, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = enc.prepare((4, 4))
    assert half.blocks.dtype == torch.bfloat16
    assert torch.equal(half.blocks, full.blocks.to(torch.bfloat16))


def test_ape_resamples_to_other_grids_and_sincos_covers_any_grid():
    ape = make("ape", grid=(4, 4))
    tokens = torch.zeros(2, 16, 32)
    assert torch.equal(ape.embed(tokens, (4, 4)), ape.pos_embed.expand(2, -1, -1))
    assert ape.embed(torch.zeros(2, 48, 32), (8, 6)).shape == (2, 48, 32)
    ape3 = make("ape", num_axes=3, grid=(2, 4, 4))
    assert ape3.embed(torch.zeros(1, 128, 32), (4, 4, 8)).shape == (1, 128, 32)
    sincos = make("ape_sincos")
    small = sincos.embed(torch.zeros(1, 16, 32), (4, 4))
    big = sincos.embed(torch.zeros(1, 48, 32), (8, 6))
    assert torch.equal(big[0, 0], small[0, 0]) and not list(sincos.parameters())
    assert torch.allclose(small.norm(dim=-1), torch.full((1, 16), math.sqrt(16)))  # 8 sin/cos pairs per axis


@pytest.mark.parametrize(
    "name, options, error, match",
    [
        ("lier", {}, ValueError, "unknown position encoding 'lier'"),
        ("liere", {"block_size": 3}, ValueError, "block_size 3"),
        ("liere", {"init": "zeros"}, ValueError, "init 'zeros'"),
        ("liere8", {"frequency": 2}, TypeError, "frequency"),
        ("rope_mixed", {"positions": "polar"}, ValueError, "polar"),
        ("ape", {"grid": None}, ValueError, "grid_shape"),
    ],
)
def test_bad_options_are_named(name, options, error, match):
    with pytest.raises(error, match=match):
        if options.get("grid", 1) is None:
            encodings.build(name, head_dim=16, num_heads=2, depth=3, num_axes=2)
        else:
            make(name, **options)


def test_every_contract_name_builds():
    assert set(encodings.list_encodings()) == {
        "none",
        "ape",
        "ape_sincos",
        "rope_axial",
        "rope_mixed",
        "liere",
        "string",
        "liere8",
        "liere64",
        "rope_mixed_ape",
        "string_circulant",
        "comrope_ap",
        "comrope_ld",
        "rope_axial_vjepa2",
        "rope_mixed_paper",
    }
    for name in encodings.list_encodings():
        enc = make(name, head_dim=64)
        assert enc.is_rotary == (name not in {"none", "ape", "ape_sincos"})
    assert make("liere64", head_dim=64).block_size == 64
    assert make("liere8", head_dim=64).block_size == 8


def test_the_registry_is_filled_by_the_classes_own_decorators():
    assert (
        encodings.ENCODINGS["liere"] is encodings.LieRE
        and encodings.ENCODINGS["none"] is encodings.PositionEncoding
    )
    assert encodings.ALIASES == {
        "liere8": ("liere", {"block_size": 8}),
        "liere64": ("liere", {"block_size": 64}),
        "rope_mixed_paper": ("liere", {"block_size": 2, "init": "paper", "positions": "official"}),
        "rope_axial_vjepa2": ("rope_axial", {"theta": 10000.0}),
    }
    with pytest.raises(ValueError, match="'liere8' is already registered"):
        encodings.register_encoding("liere_again", aliases={"liere8": {}})(encodings.LieRE)
    assert "liere_again" not in encodings.ENCODINGS
