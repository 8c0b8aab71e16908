"""The one typed schema for a training run: every knob, its default and what it does.

A run's config is this schema, merged with a YAML file, merged with dotted ``key=value``
overrides (OmegaConf). A YAML file may start from another with ``base: other.yaml`` (a path
relative to the file): the base is merged first, so a variant holds only what it changes. A wrong
key, type or value fails before any work starts, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from liere.engine.precision import PRECISIONS
from liere.engine.regularizer import METHODS as SPARSITY_METHODS

SCHEDULES = ("cosine", "constant", "step")
LOSSES = ("cross_entropy", "bce")


class ConfigError(ValueError):
    """A config that cannot run; the message names the file, key and value."""


@dataclass
class ModelConfig:
    name: str = "vit_micro_patch4"  # a registered preset (liere.list_models())
    encoding: str = "liere8"  # a name accepted by liere.encodings.build
    encoding_options: dict[str, Any] = field(default_factory=dict)  # e.g. {block_size: 4, init: small}
    img_size: list[int] = field(default_factory=lambda: [32, 32])  # training input size: 2 or 3 axes
    patch_size: list[int] | None = None  # default: the preset's patch on every axis
    in_chans: int | None = None  # default: the data set's channels
    num_classes: int | None = None  # default: the data set's classes
    global_pool: str = "token"  # token (class token) or avg
    drop_path_rate: float = 0.0  # stochastic depth at the last block (linear from 0)
    drop_rate: float = 0.0  # dropout after the embedding, on attention and MLP outputs, before the head
    attn_drop_rate: float = 0.0  # dropout on the attention probabilities
    grad_checkpointing: bool = False  # recompute blocks in backward to save memory
    drop_path_schedule: str = (
        "linear"  # linear (0 at the first block to the rate at the last) or uniform (DeiT III)
    )
    qkv_bias: bool = True  # a bias on the q, k, v projection (the official LieRE attention has none)
    init: str = (
        "trunc_normal"  # trunc_normal (timm/DeiT, 0.02) or official (PyTorch defaults, class token N(0, 1))
    )
    norm_eps: float = 1.0e-6  # LayerNorm epsilon (PyTorch's default, the official LieRE code's: 1e-5)
    head_drop: bool = True  # dropout at drop_rate before the head (the official LieRE model has none)
    layer_scale: float | None = (
        None  # LayerScale's initial gain on every residual branch (DeiT III: 1e-4; null: off)
    )
    # rotary positions keep this patch grid's spacing instead of the training grid's (fine-tuning at a
    # new size: the pretraining grid, e.g. [14, 14] for 224 px at patch 16); null: the training grid
    position_grid: list[int] | None = None
    # the init of encodings with learned generators (the LieRE family): paper (U[0, 2 pi), the class's
    # default), grid (the paper's angles per patch step on any grid) or small; others ignore it, and an
    # alias's own preset (rope_mixed_paper) or encoding_options.init win over it
    generator_init: str | None = None


@dataclass
class DataConfig:
    dataset: str = "digits"  # prepared under root, or embedded (digits, compass2d, compass3d)
    root: str = "data"  # where the shards live (embedded sets are prepared here on first use)
    backend: str = "webdataset"  # webdataset, ffcv or dali
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 64  # per rank and micro step
    eval_batch_size: int | None = None  # default: batch_size
    eval_crop_ratio: float | None = (
        None  # evaluation center crop / resize (default: 0.875 from 128 px up, else 1)
    )
    workers: int = 2  # loader worker processes per rank
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # random-resized-crop area range
    # training crop of 2D images as torchvision's RandomCrop(size, padding=pad_crop): zero-pad pad_crop pixels on
    # every side, take a random size x size crop, no resize; replaces the random-resized crop (0: off)
    pad_crop: int = 0
    flip: bool = True  # random left-right flips in training (off when labels tell left from right)
    mixup: float = 0.0  # mixup alpha (0: off)
    cutmix: float = 0.0  # cutmix alpha (0: off)
    randaugment: list[int] | None = None  # [num_ops, magnitude 0-30], e.g. [2, 9] (null: off)
    repeated_aug: int = 1  # copies of each sample per epoch, on consecutive ranks (DeiT RASampler: 3)
    three_augment: bool = False  # DeiT III 3-Augment: grayscale, solarization or Gaussian blur, one per image
    color_jitter: float = 0.0  # brightness/contrast/saturation strength (DeiT III: 0.3; 0: off)
    dali_prefetch: int = 2  # DALI: batches decoded ahead (prefetch_queue_depth)
    bad_samples: str = "raise"  # a training sample failing to read/verify/decode: raise, or skip (replace it)
    max_bad_samples: int = 100  # with skip: more replaced samples than this on one rank end the run
    access: str = (
        "indexed"  # indexed (by position: exact order and resume) or stream (webdataset/DALI readers)
    )
    urls: str | None = (
        None  # stream: shard URL pattern, `{split}` for the split (pipe:, http(s), brace lists)
    )
    shuffle_buffer: int = 1000  # stream: samples in the shuffle buffer (per worker; DALI: initial_fill)


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw (torch) or lamb (liere/engine/optim.py; needs train.zero_stage 0)
    loss: str = (
        "cross_entropy"  # cross_entropy, or bce (binary cross-entropy on binarized soft targets, DeiT III)
    )
    lr: float = 1e-3  # peak learning rate (per the whole global batch; no automatic scaling)
    min_lr: float = 1e-5  # floor of the cosine schedule (the step schedule has none)
    weight_decay: float = 0.05  # AdamW decoupled decay; never on norms, biases, tokens (encodings: below)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    encoding_lr_scale: float = 1.0  # learning-rate multiplier of the position-encoding parameters
    # AdamW decoupled decay of the position-encoding parameters: 0 as in the official LieRE code and
    # RoPE-ViT; on LieRE's generators it shrinks every rotation frequency (docs/results.md, "Learned sparsity")
    encoding_weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine (after warmup), constant, or step (times step_gamma at each milestone)
    # step: milestones as fractions of the run, applied at epoch boundaries (torch MultiStepLR stepped per epoch)
    step_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    step_gamma: float = 0.1  # step: the learning rate's factor at each milestone
    warmup_epochs: float = 0.0  # linear warmup, in epochs (fractions allowed)
    warmup_lr: float = (
        0.0  # the learning rate warmup starts from (DeiT/timm --warmup-lr; 0: from lr / warmup steps)
    )
    grad_clip: float = 1.0  # global gradient-norm clip (0: off)
    label_smoothing: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (default: epochs)
    grad_accum: int = 1  # micro steps per optimizer step
    precision: str = (
        "auto"  # auto (what the device runs natively: liere/engine/precision.py), bf16, fp16, fp32
    )
    zero_stage: int = 2  # DeepSpeed ZeRO stage 0-3
    seed: int = 0
    out_dir: str = "runs/${tracking.experiment}/${tracking.run_name}"  # checkpoints, exports, reports
    log_every: int = 10  # optimizer steps between metric logs
    eval_every: int = 1  # epochs between validations (0: only at the end)
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: at epoch ends only)
    keep_checkpoints: int = 2  # complete checkpoints kept on disk
    dist_timeout_s: int = 600  # collective timeout: a dead rank ends the job after this long
    init_from: str | None = None  # start from these weights: an exported .safetensors or a run directory
    init_new_head: bool = False  # init_from: a classifier of another size starts fresh (else an error)
    ema: float | None = None  # decay of an average of the weights, e.g. 0.99996 as DeiT (null: off)


@dataclass
class SparsityConfig:
    """Learned sparsity of the LieRE generators, one group per tile: a group-lasso penalty on the loss,
    or its proximal step on the weights (exact zeros)."""

    weight: float = 0.0  # strength at full ramp (0: off); needs a liere encoding
    # penalty: weight x (sum of size-weighted group norms / generators) joins the loss;
    # proximal: after each optimizer step every group norm falls by weight x its size weight x the encoding's lr
    method: str = "penalty"
    tile: int = 8  # groups are the tile x tile tiles of each (layer, head, axis) generator
    start_epoch: float = 0.0  # the penalty is 0 before this epoch ...
    ramp_epochs: float = 0.0  # ... then rises linearly to `weight` over this many epochs
    threshold: float = 0.05  # report: a tile is active if its norm >= threshold x its generator's largest


@dataclass
class EvalConfig:
    sizes: list[Any] = field(default_factory=list)  # resolution sweep: ints or lists (default: train size)
    shuffle_patches: bool = False  # also evaluate with the patches of every input randomly permuted
    # also evaluate each input at the training size on a larger blank canvas (ints or lists): the same
    # scale, a larger field of view, the object anywhere in it (liere/engine/canvas.py)
    canvas_sizes: list[Any] = field(default_factory=list)
    # how launch/evaluate.py and launch/compare.py read eval.sizes: zoom (the validation inputs resized:
    # the same content at more pixels) and/or extent (a larger canvas at the training scale, drawn by
    # the data set itself: the compass sets' val-extent<S> splits)
    protocols: list[str] = field(default_factory=lambda: ["zoom"])


@dataclass
class TrackingConfig:
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd
    experiment: str = "default"  # default: the config file's name
    run_name: str = "run"
    parent_run_id: str | None = None  # nest the run under this MLflow run (launch/compare.py sets it)
    system_metrics: bool = True  # CPU, memory, GPU utilisation in MLflow
    enabled: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    config_path: str = MISSING  # set by load_config


PROTOCOLS = ("zoom", "extent")


def _need(ok: bool, key: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {what}")


def _check_values(cfg: DictConfig) -> None:
    """Values the schema's types cannot express; the first wrong one raises ConfigError naming it."""
    _check_run(cfg.train, cfg.optim, cfg.data)
    _check_model(cfg.model, cfg.data)
    _check_sparsity_and_eval(cfg)


def _check_run(t: DictConfig, o: DictConfig, d: DictConfig) -> None:
    from pipelines import BACKENDS

    _need(t.precision in PRECISIONS, "train.precision", t.precision, f"expected one of {PRECISIONS}")
    _need(t.zero_stage in (0, 1, 2, 3), "train.zero_stage", t.zero_stage, "expected 0, 1, 2 or 3")
    _need(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
    _need(t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "must be >= 1")
    _need(t.max_steps is None or t.max_steps >= 1, "train.max_steps", t.max_steps, "must be >= 1")
    _need(t.ema is None or 0 <= t.ema < 1, "train.ema", t.ema, "expected null (off) or a decay in [0, 1)")
    _need(o.schedule in SCHEDULES, "optim.schedule", o.schedule, f"expected one of {SCHEDULES}")
    _need(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    for key in ("weight_decay", "encoding_weight_decay"):
        _need(o[key] >= 0, f"optim.{key}", o[key], "must be >= 0")
    _check_optimizer(t, o)
    _need(len(o.betas) == 2, "optim.betas", list(o.betas), "expected two numbers")
    _need(d.backend in BACKENDS, "data.backend", d.backend, f"expected one of {BACKENDS}")
    _need(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
    _need(d.bad_samples in ("raise", "skip"), "data.bad_samples", d.bad_samples, "expected 'raise' or 'skip'")
    _need(d.max_bad_samples >= 0, "data.max_bad_samples", d.max_bad_samples, "must be >= 0")
    _need(d.access in ("indexed", "stream"), "data.access", d.access, "expected 'indexed' or 'stream'")
    stream_ok = d.access == "indexed" or d.backend in ("webdataset", "dali")
    _need(stream_ok, "data.access", d.access, f"stream needs backend webdataset or dali, not {d.backend!r}")
    _need(d.urls is None or d.access == "stream", "data.urls", d.urls, "needs data.access=stream")
    _need(
        d.urls is None or d.backend == "webdataset", "data.urls", d.urls, "DALI's reader needs local shards"
    )
    _need(d.shuffle_buffer >= 0, "data.shuffle_buffer", d.shuffle_buffer, "must be >= 0")
    ra = d.randaugment
    _need(
        ra is None or (len(ra) == 2 and ra[0] >= 1 and 0 <= ra[1] <= 30),
        "data.randaugment",
        None if ra is None else list(ra),
        "expected null or [num_ops >= 1, magnitude 0-30]",
    )
    _check_augment(d)


def _check_augment(d: DictConfig) -> None:
    """Repeated augmentation, 3-Augment and colour jitter: ranges, and the loaders that have them."""
    _need(
        d.repeated_aug >= 1, "data.repeated_aug", d.repeated_aug, "expected copies per sample >= 1 (1: off)"
    )
    _need(0 <= d.color_jitter <= 1, "data.color_jitter", d.color_jitter, "expected a strength in [0, 1]")
    _need(d.pad_crop >= 0, "data.pad_crop", d.pad_crop, "expected pixels of zero padding >= 0 (0: off)")
    _need(d.dali_prefetch >= 1, "data.dali_prefetch", d.dali_prefetch, "expected batches ahead >= 1")
    _need(
        d.repeated_aug == 1 or d.access == "indexed",
        "data.repeated_aug",
        d.repeated_aug,
        "repeats positions of the epoch's order: needs data.access=indexed",
    )
    colour = d.three_augment or d.color_jitter > 0
    _need(
        not colour or d.access == "indexed" or d.backend == "dali",
        "data.three_augment" if d.three_augment else "data.color_jitter",
        d.three_augment if d.three_augment else d.color_jitter,
        "the webdataset stream decoder has no 3-Augment/colour jitter: use data.access=indexed or backend dali",
    )


def _check_optimizer(t: DictConfig, o: DictConfig) -> None:
    from liere.engine.optim import OPTIMIZERS

    _need(o.name in OPTIMIZERS, "optim.name", o.name, f"expected one of {OPTIMIZERS}")
    _need(o.loss in LOSSES, "optim.loss", o.loss, f"expected one of {LOSSES}")
    _need(0 <= o.warmup_lr <= o.lr, "optim.warmup_lr", o.warmup_lr, f"expected 0 to optim.lr ({o.lr})")
    _check_step_schedule(o)
    _need(
        o.loss != "bce" or o.label_smoothing == 0,
        "optim.label_smoothing",
        o.label_smoothing,
        "optim.loss=bce binarizes the targets (DeiT III: --smoothing 0.0); smoothing would make every class a 1",
    )
    if o.name == "lamb":  # LAMB's trust ratio is per tensor: DeepSpeed must hand it whole tensors
        why = (
            "LAMB's per-tensor trust ratio needs whole tensors; ZeRO 1-3 hand the optimizer flat shards "
            "of every group (stage 0 keeps one fp32 master per tensor, in fp32, bf16 and fp16 alike)"
        )
        _need(t.zero_stage == 0, "train.zero_stage", t.zero_stage, f"optim.name=lamb needs 0: {why}")


def _check_step_schedule(o: DictConfig) -> None:
    """The step schedule's milestones (increasing fractions of the run in (0, 1)) and factor (in (0, 1])."""
    ms = list(o.step_milestones)
    _need(
        all(0 < m < 1 for m in ms) and all(a < b for a, b in pairwise(ms)),
        "optim.step_milestones",
        ms,
        "expected increasing fractions of the run in (0, 1), e.g. [0.5, 0.75]",
    )
    _need(o.schedule != "step" or ms, "optim.step_milestones", ms, "optim.schedule=step needs a milestone")
    _need(0 < o.step_gamma <= 1, "optim.step_gamma", o.step_gamma, "expected a factor in (0, 1], e.g. 0.1")


def _check_model(m: DictConfig, d: DictConfig) -> None:
    import liere

    _need(
        len(m.img_size) in (2, 3),
        "model.img_size",
        list(m.img_size),
        "expected 2 (image) or 3 (volume) sizes",
    )
    _need(m.global_pool in ("token", "avg"), "model.global_pool", m.global_pool, "expected token or avg")
    from liere.models.vit import DROP_PATH_SCHEDULES, INITS

    _need(m.init in INITS, "model.init", m.init, f"expected one of {INITS}")
    _need(
        m.drop_path_schedule in DROP_PATH_SCHEDULES,
        "model.drop_path_schedule",
        m.drop_path_schedule,
        f"expected one of {DROP_PATH_SCHEDULES}",
    )
    _need(0 < m.norm_eps < 1, "model.norm_eps", m.norm_eps, "expected a small positive number (1e-6, 1e-5)")
    _need(
        m.layer_scale is None or m.layer_scale > 0, "model.layer_scale", m.layer_scale, "expected null or > 0"
    )
    from liere.encodings.liere import INITS as GENERATOR_INITS

    _need(m.generator_init in (None, *GENERATOR_INITS), "model.generator_init", m.generator_init,
          f"expected null or one of {GENERATOR_INITS}")  # fmt: skip
    pg = m.position_grid
    _need(
        pg is None or (len(pg) == len(m.img_size) and all(int(s) >= 1 for s in pg)),
        "model.position_grid",
        None if pg is None else list(pg),
        f"expected null or {len(m.img_size)} positive patch counts",
    )
    models, encodings = liere.list_models(), liere.encodings.list_encodings()
    _need(m.name in models, "model.name", m.name, f"unknown model; registered: {models}")
    _need(
        m.encoding in encodings,
        "model.encoding",
        m.encoding,
        f"unknown encoding; expected one of {encodings}",
    )


def _check_sparsity_and_eval(cfg: DictConfig) -> None:
    sp, m = cfg.sparsity, cfg.model
    _need(sp.weight >= 0, "sparsity.weight", sp.weight, "must be >= 0")
    _need(sp.tile >= 1, "sparsity.tile", sp.tile, "must be >= 1")
    _need(sp.method in SPARSITY_METHODS, "sparsity.method", sp.method, f"expected one of {SPARSITY_METHODS}")
    _need(
        sp.weight == 0 or m.encoding.startswith("liere"),
        "sparsity.weight",
        sp.weight,
        f"the penalty acts on LieRE generators; model.encoding is {m.encoding!r}",
    )
    _need(
        sp.weight == 0 or cfg.train.zero_stage <= 2,
        "sparsity.weight",
        sp.weight,
        "the penalty reads whole generators, which ZeRO-3 partitions: use train.zero_stage <= 2 "
        "(the encoding's parameters are tiny; stage 3 saves nothing on them)",
    )
    axes = len(m.img_size)
    for size in cfg.eval.sizes:
        ok = isinstance(size, int) or (len(size) == axes and all(isinstance(s, int) for s in size))
        _need(ok, "eval.sizes", size, f"each size is an int or a list of {axes} ints")
    for size in cfg.eval.canvas_sizes:
        full = [size] * axes if isinstance(size, int) else list(size)
        ok = len(full) == axes and all(isinstance(s, int) and s >= t for s, t in zip(full, m.img_size))
        _need(ok, "eval.canvas_sizes", size, f"each canvas is an int or {axes} ints, at least model.img_size")
    _check_protocols(cfg)


def _check_protocols(cfg: DictConfig) -> None:
    from pipelines.sources import extent_sources

    protocols = list(cfg.eval.protocols)
    _need(
        bool(protocols) and set(protocols) <= set(PROTOCOLS),
        "eval.protocols",
        protocols,
        f"a list from {PROTOCOLS}",
    )
    if "extent" in protocols:
        d = cfg.data.dataset
        drawing = extent_sources()
        _need(
            d in drawing,
            "eval.protocols",
            protocols,
            f"extent needs a data set that draws larger canvases ({', '.join(drawing)}), not {d!r}",
        )


def _read_chain(path: Path) -> list[tuple[Path, DictConfig]]:
    """The YAML file and its ``base:`` ancestors, the root ancestor first."""
    chain: list[tuple[Path, DictConfig]] = []
    seen: list[Path] = []
    while True:
        if not path.is_file():
            via = f" (the base of {seen[-1]})" if seen else ""
            raise ConfigError(f"config file not found: {path}{via}")
        if path.resolve() in seen:
            raise ConfigError(f"{seen[0]}: base chain loops back to {path}")
        seen.append(path.resolve())
        try:
            node = OmegaConf.load(path)
        except Exception as err:  # YAML syntax
            raise ConfigError(f"{path}: cannot parse: {err}") from None
        if not isinstance(node, DictConfig):
            raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, ...) at the top")
        base = node.pop("base", None)
        chain.insert(0, (path, node))
        if base is None:
            return chain
        if not isinstance(base, str):
            raise ConfigError(f"{path}: key 'base': expected a file name, got {base!r}")
        path = path.parent / base


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Schema <- base YAML files <- YAML file <- dotted overrides; validated and resolved.

    Raises ConfigError naming the file, key and value.
    """
    path = Path(path)
    schema = OmegaConf.structured(Config)
    schema.tracking.experiment = path.stem
    chain = _read_chain(path)
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not of the form key=value (e.g. train.epochs=5)")
    cfg = schema
    for file, node in chain:
        try:
            cfg = OmegaConf.merge(cfg, node)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None)
            msg = str(err).splitlines()[0]
            raise ConfigError(f"{file}: {f'key {key!r}: ' if key else ''}{msg}") from None
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        cfg.config_path = str(path.resolve())
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{path}: {f'key {key!r}: ' if key else ''}{msg}") from None
    try:
        _check_values(cfg)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return cfg


def flatten(cfg: DictConfig) -> dict[str, str]:
    """Dotted key -> value string, for MLflow params."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out
