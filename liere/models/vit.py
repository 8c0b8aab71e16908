"""One vision transformer for 2D images and 3D volumes or video, with any position encoding.

The number of spatial axes follows ``img_size``: length 1 (a signal), 2 (an image) or 3 (a volume
or video); an int means a square image. Any input whose size is a multiple of the patch works at
inference, including non-square and larger-than-training grids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from liere import encodings
from liere.models.layers import Block, PatchEmbed
from liere.models.patches import to_ntuple

POOLS = ("token", "avg")
INITS = ("trunc_normal", "official")  # ours (timm/DeiT) or the official LieRE code's (PyTorch defaults)
DROP_PATH_SCHEDULES = (
    "linear",
    "uniform",
)  # rate rising linearly over the blocks (timm) or the same in all (DeiT III)


def drop_path_rates(rate: float, depth: int, schedule: str) -> list[float]:
    """Stochastic-depth rate of each block: linear from 0 to ``rate`` (timm's rule) or ``rate`` in every
    block (DeiT III, ``models_v2.py`` ``dpr = [drop_path_rate for i in range(depth)]``)."""
    if schedule not in DROP_PATH_SCHEDULES:
        raise ValueError(f"drop_path_schedule {schedule!r}: expected one of {DROP_PATH_SCHEDULES}")
    if schedule == "uniform":
        return [rate] * depth
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


def _spatial_sizes(
    img_size: int | Sequence[int], patch_size: int | Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(img_size, patch_size) as one entry per spatial axis; an int ``img_size`` is a square image."""
    img = to_ntuple(img_size, 2, "img_size") if isinstance(img_size, int) else tuple(img_size)
    if len(img) not in (1, 2, 3):
        raise ValueError(f"img_size {img}: expected 1 (signal), 2 (image) or 3 (volume, video) axes")
    return img, to_ntuple(patch_size, len(img), "patch_size")


def _check_options(global_pool: str, init: str, layer_scale: float | None) -> None:
    if global_pool not in POOLS:
        raise ValueError(f"global_pool {global_pool!r}: expected one of {POOLS}")
    if init not in INITS:
        raise ValueError(f"init {init!r}: expected one of {INITS}")
    if layer_scale is not None and not layer_scale > 0:
        raise ValueError(f"layer_scale {layer_scale!r}: expected a positive initial gain or None")


class VisionTransformer(nn.Module):
    """Pre-norm ViT with patch or tubelet embedding, class-token or mean pooling, stochastic depth.

    ``encoding`` is a name accepted by ``liere.encodings.build`` (``encoding_options`` are passed
    on); the built module is ``self.encoding``. Rotations are computed once per forward pass for
    all layers and handed to every block.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        encoding: str = "liere8",
        encoding_options: dict | None = None,
        global_pool: str = "token",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        init: str = "trunc_normal",
        norm_eps: float = 1e-6,
        head_drop: bool = True,
        layer_scale: float | None = None,
        drop_path_schedule: str = "linear",
        position_grid: Sequence[int] | None = None,
        generator_init: str | None = None,
    ) -> None:
        super().__init__()
        self.img_size, self.patch_size = _spatial_sizes(img_size, patch_size)
        n = len(self.img_size)
        _check_options(global_pool, init, layer_scale)
        self.num_classes, self.embed_dim, self.global_pool = num_classes, embed_dim, global_pool
        self.grad_checkpointing = grad_checkpointing

        self.patch_embed = PatchEmbed(self.patch_size, in_chans, embed_dim)
        self.grid_shape = self.patch_embed.grid(self.img_size)  # the training grid
        self.num_prefix_tokens = 1 if global_pool == "token" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.num_prefix_tokens else None
        self.encoding = encodings.build(
            encoding, head_dim=embed_dim // num_heads, num_heads=num_heads, depth=depth, num_axes=n,
            grid_shape=self.grid_shape, reference_grid=position_grid, generator_init=generator_init,
            **(encoding_options or {}),
        )  # fmt: skip
        self.pos_drop = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, depth, drop_path_schedule)
        options = dict(
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
            norm_eps=norm_eps, layer_scale=layer_scale,
        )  # fmt: skip
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, drop_path=rate, **options) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate) if head_drop else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init = init
        self._initialise(init)

    def _initialise(self, init: str) -> None:
        """``trunc_normal``: timm/DeiT's; ``official``: the modules keep PyTorch's own initialisation,
        the class token and an APE table are N(0, 1) (official ``models/vit.py:174-177``)."""
        if init == "trunc_normal":
            self.apply(self._init_weights)
        elif isinstance(getattr(self.encoding, "pos_embed", None), nn.Parameter):
            nn.init.normal_(self.encoding.pos_embed, std=1.0)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02 if init == "trunc_normal" else 1.0)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, *spatial) -> normalized tokens (B, prefix + N, D)."""
        grid = self.patch_embed.grid(x.shape[2:])
        x = self.encoding.embed(self.patch_embed(x), grid)  # additive encodings act here
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        rotation = self.encoding.prepare(grid, self.num_prefix_tokens)  # once for every layer
        x = self.pos_drop(x)
        for layer, block in enumerate(self.blocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rotation, layer, use_reentrant=False)
            else:
                x = block(x, rotation, layer)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x[:, 0] if self.global_pool == "token" else x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) or (B, C, T/D, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def no_weight_decay(self) -> set[str]:
        """Parameter names that an optimizer should not decay: tokens and position encodings."""
        names = {"cls_token"}
        names.update(f"encoding.{n}" for n, _ in self.encoding.named_parameters())
        return names
