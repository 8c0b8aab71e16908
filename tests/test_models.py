"""The N-d ViT and its registry: shapes, gradients, resolutions, precision, caching, errors."""

import math

import pytest
import torch

import liere
from liere.models.patches import patchify, to_ntuple, unpatchify

ENCODINGS = liere.encodings.list_encodings()
MICRO = dict(num_classes=5, embed_dim=64, depth=3, num_heads=2)  # head dim 32


def micro(encoding, img_size=(16, 16), patch_size=4, **kwargs):
    kw = {**MICRO, **kwargs}
    return liere.VisionTransformer(img_size=img_size, patch_size=patch_size, encoding=encoding, **kw)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_2d_forward_backward_at_training_and_larger_non_square_sizes(encoding):
    model = micro(encoding, embed_dim=128 if encoding == "liere64" else 64)  # liere64: dense at head dim 64
    x = torch.randn(2, 3, 16, 16)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad()
    big = model(torch.randn(2, 3, 28, 20))  # 7 x 5 grid vs 4 x 4 in training
    assert big.shape == (2, 5) and torch.isfinite(big).all()
    big.sum().backward()


@pytest.mark.parametrize(
    "encoding", ["ape", "ape_sincos", "rope_axial", "rope_mixed", "liere8", "string", "none"]
)
def test_3d_forward_backward_at_training_and_larger_sizes(encoding):
    model = micro(encoding, img_size=(4, 16, 16), patch_size=(2, 4, 4), global_pool="avg")
    assert model.grid_shape == (2, 4, 4)
    x = torch.randn(2, 3, 4, 16, 16)
    model(x).sum().backward()
    out = model(torch.randn(1, 3, 8, 20, 12))  # 4 x 5 x 3 grid
    assert out.shape == (1, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("encoding", ["liere8", "rope_mixed", "string"])
def test_every_layers_generators_receive_gradient_and_matter(encoding):
    """The official LieRE code reuses layer 0's rotations in every layer; here each layer's own."""
    model = micro(encoding)
    if encoding == "string":  # at P = I the Cayley gradient is non-zero too, but move off it
        with torch.no_grad():
            model.encoding.cayley.normal_(0, 0.1)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    for name, p in model.encoding.named_parameters():
        layer_axis = 0 if name == "cayley" else 1  # (L, H, m) for STRING's P, (A, L, ...) otherwise
        assert p.shape[layer_axis] == 3, f"{name} is per layer"
        per_layer = p.grad.movedim(layer_axis, 0).reshape(3, -1)
        assert (per_layer.abs().sum(1) > 0).all(), f"{name}: some layer got no gradient"
    # changing only the last layer's generators changes the output
    model.eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        param = model.encoding.cayley if encoding == "string" else next(model.encoding.parameters())
        (param[2] if encoding == "string" else param[:, 2]).add_(0.5)
        after = model(x)
    assert not torch.allclose(before, after, atol=1e-4)


def test_rotations_are_computed_once_per_forward_pass():
    model = micro("liere8")
    calls = []
    original = model.encoding._state
    model.encoding._state = lambda pos: calls.append(pos.shape) or original(pos)
    model(torch.randn(4, 3, 16, 16))
    assert calls == [torch.Size([16, 2])], "one computation for all layers, heads and samples"


@pytest.mark.parametrize("encoding", ["liere8", "string", "ape"])
def test_bf16_autocast_is_finite_and_close_to_fp32(encoding):
    model = micro(encoding).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert torch.allclose(half.float(), full, atol=0.05, rtol=0.05)
    # training step under autocast: gradients finite
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("encoding", ["liere8", "rope_mixed", "string"])
def test_eval_mode_cache_gives_identical_outputs(encoding):
    model = micro(encoding, drop_path_rate=0.1).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        first, cached = model(x), model(x)
        model.encoding._cache.clear()
        fresh = model(x)
        big = model(torch.randn(1, 3, 24, 16))
    assert torch.equal(first, cached) and torch.equal(first, fresh)
    assert big.shape == (1, 5)
    with torch.no_grad():  # after a parameter update the cache is not served
        next(model.encoding.parameters()).mul_(1.5)
        assert not torch.allclose(model(x), first)


def test_class_token_and_mean_pooling_and_stochastic_depth():
    tok = micro("liere8")
    assert tok.num_prefix_tokens == 1 and tok.forward_features(torch.randn(1, 3, 16, 16)).shape == (1, 17, 64)
    avg = micro("liere8", global_pool="avg")
    assert avg.num_prefix_tokens == 0 and avg.cls_token is None
    deep = micro("liere8", drop_path_rate=0.3)
    assert [b.drop_path for b in deep.blocks] == pytest.approx([0.0, 0.15, 0.3])
    deep.train()
    x = torch.randn(8, 3, 16, 16)
    assert not torch.equal(deep(x), deep(x)), "stochastic depth is random in training"
    deep.eval()
    with torch.no_grad():
        assert torch.equal(deep(x), deep(x))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(3)
    plain = micro("liere8")
    ckpt = micro("liere8", grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    plain(x).sum().backward()
    ckpt(x).sum().backward()
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), n


def test_no_weight_decay_names_tokens_and_encoding_parameters():
    model = micro("liere8")
    names = dict(model.named_parameters())
    assert model.no_weight_decay() == {"cls_token", "encoding.upper"}
    assert model.no_weight_decay() <= set(names)


@pytest.mark.parametrize(
    "make, shape, match",
    [
        (lambda: micro("liere8"), (1, 3, 18, 16), "axis 0 is not a positive multiple of patch size 4"),
        (lambda: micro("liere8"), (1, 1, 16, 16), "in_chans=3"),
        (lambda: micro("liere8"), (1, 3, 4, 16, 16), "3 spatial axes"),
    ],
)
def test_bad_inputs_are_named(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make()(torch.randn(*shape))


def test_bad_constructor_arguments_are_named():
    with pytest.raises(ValueError, match=r"patch_size=.* has 2 entries"):
        micro("liere8", img_size=(4, 16, 16), patch_size=(4, 4))
    with pytest.raises(ValueError, match="global_pool"):
        micro("liere8", global_pool="max")
    with pytest.raises(ValueError, match="block_size 64 must be >= 2 and divide head_dim 32"):
        micro("liere64")
    with pytest.raises(ValueError, match="unknown model 'vit_huge_patch16'"):
        liere.create_model("vit_huge_patch16")


def test_registry_presets_have_the_expected_sizes():
    names = liere.list_models()
    assert len(names) == 18 and liere.list_models("vit_small_*") == [
        "vit_small_patch16",
        "vit_small_patch4",
        "vit_small_patch8",
    ]
    expected = {
        "vit_tiny_patch16": 5.7e6,
        "vit_small_patch16": 22.0e6,
        "vit_base_patch16": 86.6e6,
        "vit_large_patch16": 304.3e6,
    }
    with torch.device("meta"):  # full-size presets without allocating them
        for name in names:
            model = liere.create_model(name, encoding="ape", num_classes=1000, img_size=224)
            count = sum(p.numel() for p in model.parameters())
            if name in expected:
                assert count == pytest.approx(expected[name], rel=0.01), name


def test_contract_example_2d_and_3d():
    model = liere.create_model("vit_micro_patch16", encoding="liere8", num_classes=100, img_size=64)
    assert model.encoding.block_size == 8 and model(torch.randn(1, 3, 64, 96)).shape == (1, 100)
    video = liere.create_model(
        "vit_micro_patch16",
        encoding="liere8",
        img_size=(4, 32, 32),
        patch_size=(2, 16, 16),
        in_chans=3,
        num_classes=7,
    )
    assert video.encoding.num_axes == 3 and video(torch.randn(1, 3, 4, 32, 32)).shape == (1, 7)
    enc = liere.encodings.build(
        "liere", head_dim=64, num_heads=6, depth=12, num_axes=2, block_size=8, per_layer=True, per_head=True
    )
    assert enc.generator_matrices().shape == (2, 12, 6, 8, 8, 8)
    assert enc.rotation(torch.rand(10, 2)).shape == (12, 6, 10, 8, 8, 8)


def test_flop_counts_match_the_known_vit_b_cost_and_the_papers_overheads():
    """ViT-B/16 at 224 is 17.6 GMACs; LieRE reports +0.04% (RoPE-Mixed), +0.18% (LieRE_8) and
    +1.38% (LieRE_64) over APE at ViT-B."""
    with torch.device("meta"):
        totals = {
            enc: liere.count_flops(liere.create_model("vit_base_patch16", encoding=enc))["total"]
            for enc in ["ape", "rope_mixed", "liere8", "liere64"]
        }
    assert totals["ape"] / 2 == pytest.approx(17.6e9, rel=0.01)
    overhead = {k: 100 * (v / totals["ape"] - 1) for k, v in totals.items()}
    assert overhead["rope_mixed"] == pytest.approx(0.04, abs=0.02)
    assert overhead["liere8"] == pytest.approx(0.18, abs=0.03)
    assert overhead["liere64"] == pytest.approx(1.38, abs=0.1)
    small = liere.create_model("vit_micro_patch4", encoding="liere8", img_size=16)
    assert liere.count_flops(small, (32, 32))["total"] > liere.count_flops(small)["total"]


@pytest.mark.parametrize(
    "shape,p", [((2, 3, 8, 12), (4, 4)), ((2, 1, 4, 8, 8), (2, 4, 4)), ((1, 2, 12), (3,))]
)
def test_patchify_cuts_row_major_patches_and_unpatchify_inverts_it(shape, p):
    x = torch.randn(shape)
    tiles = patchify(x, p)
    grid = [s // q for s, q in zip(shape[2:], p)]
    assert tiles.shape == (shape[0], math.prod(grid), shape[1], *p)
    last = [g - 1 for g in grid]  # the last patch of the grid is the last token
    corner = x[(..., *(slice(i * q, (i + 1) * q) for i, q in zip(last, p)))]
    assert torch.equal(tiles[:, -1], corner)
    assert torch.equal(unpatchify(tiles, grid), x)
    with pytest.raises(ValueError, match="not a whole grid"):
        patchify(x[..., :-1], p)


def test_to_ntuple_expands_ints_and_checks_lengths():
    assert to_ntuple(4, 3, "patch_size") == (4, 4, 4) and to_ntuple([2, 3], 2, "s") == (2, 3)
    with pytest.raises(ValueError, match=r"patch_size=\(2, 3\) has 2 entries, expected 3"):
        to_ntuple((2, 3), 3, "patch_size")


def test_register_model_as_a_decorator_and_as_a_call():
    from liere.models import registry

    def tiny_test_model(**kwargs):
        return liere.create_model("vit_nano_patch4", **kwargs)

    try:
        assert liere.register_model(tiny_test_model) is tiny_test_model
        liere.register_model("tiny_test_model_2", tiny_test_model)
        assert liere.list_models("tiny_test_model*") == ["tiny_test_model", "tiny_test_model_2"]
        assert liere.create_model("tiny_test_model", img_size=16).encoding.block_size == 8
        with pytest.raises(ValueError, match="already registered"):
            liere.register_model(tiny_test_model)
    finally:
        registry._MODELS.pop("tiny_test_model", None)
        registry._MODELS.pop("tiny_test_model_2", None)
