"""What a run trains on and what it builds: the train and evaluation loaders of a config, and the
model's constructor arguments (the config, with the data set filling the blanks)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def build_data(cfg: DictConfig, denv) -> tuple[Any, dict[str, Any]]:
    """The train loader; an embedded data set is prepared on first use (rank 0 writes, the others
    wait for its manifests), a real one must have been prepared with launch/prepare_data.py."""
    import pipelines
    from pipelines.sources import list_sources, source_class

    d = cfg.data
    embedded = d.dataset in list_sources() and not source_class(d.dataset).needs_src
    if _remote(d):
        from pipelines.loaders.stream import stream_info

        info = stream_info(d.root, d.dataset, [d.train_split, d.val_split], d.urls)
    elif embedded:
        info = pipelines.ensure_prepared(
            d.dataset, d.root, formats=[_format(d.backend)], rank=denv.rank, world_size=denv.world_size
        )
    else:
        info = pipelines.dataset_info(d.root, d.dataset)
    loader = _build(
        d,
        d.train_split,
        batch_size=d.batch_size,
        train=True,
        image_size=list(cfg.model.img_size),
        rank=denv.rank,
        world_size=denv.world_size,
        seed=cfg.train.seed,
        workers=d.workers,
        mixup=d.mixup,
        cutmix=d.cutmix,
        # soft targets only when mixing (they then carry the smoothing); else the loss smooths
        label_smoothing=cfg.optim.label_smoothing if d.mixup > 0 or d.cutmix > 0 else 0.0,
        crop_scale=tuple(d.crop_scale),
        pad_crop=d.pad_crop,
        randaugment=list(d.randaugment) if d.randaugment else None,
        repeated_aug=d.repeated_aug,
        three_augment=d.three_augment,
        color_jitter=d.color_jitter,
        flip=d.flip,
        bad_samples=d.bad_samples,
        max_bad_samples=d.max_bad_samples,
    )
    return loader, info


def _remote(d: DictConfig) -> bool:
    """Shards named by a URL pattern or under a URL root: only the webdataset stream reads them."""
    from pipelines.loaders.stream import is_url

    return d.access == "stream" and (bool(d.urls) or is_url(d.root))


def _build(d: DictConfig, split: str, **kwargs: Any):
    """The loader `data.access` asks for: indexed or a stream (webdataset, DALI), by pipelines.build_loader."""
    import pipelines

    if d.access == "stream":
        kwargs.update(shuffle_buffer=d.shuffle_buffer, urls=d.urls)
    if d.backend == "dali":
        kwargs["prefetch_queue_depth"] = d.dali_prefetch
    return pipelines.build_loader(
        d.backend, root=d.root, dataset=d.dataset, split=split, access=d.access, **kwargs
    )


def _format(backend: str) -> str:
    return "ffcv" if backend == "ffcv" else "webdataset"  # DALI reads the webdataset shards


def eval_loader(cfg: DictConfig, denv, size: list[int]):

    d = cfg.data
    return _build(
        d,
        d.val_split,
        batch_size=d.eval_batch_size or d.batch_size,
        train=False,
        image_size=list(size),
        rank=denv.rank,
        world_size=denv.world_size,
        seed=cfg.train.seed,
        workers=d.workers,
        eval_crop_ratio=d.eval_crop_ratio,
    )


def model_spec(cfg: DictConfig, info: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of the model: the config, with the data set filling the blanks."""
    m = cfg.model
    kwargs = {
        "encoding": m.encoding,
        "encoding_options": OmegaConf.to_container(m.encoding_options),
        "img_size": list(m.img_size),
        "in_chans": m.in_chans or int(info["channels"]),
        "num_classes": m.num_classes or int(info["num_classes"]),
        "global_pool": m.global_pool,
        "drop_path_rate": m.drop_path_rate,
        "drop_rate": m.drop_rate,
        "attn_drop_rate": m.attn_drop_rate,
        "grad_checkpointing": m.grad_checkpointing,
        **{
            k: m[k]
            for k in ("drop_path_schedule", "qkv_bias", "init", "norm_eps", "head_drop", "layer_scale")
        },
        "position_grid": None if m.position_grid is None else list(m.position_grid),
        "generator_init": m.generator_init,
    }
    if m.patch_size is not None:
        kwargs["patch_size"] = list(m.patch_size)
    channels, classes = int(info["channels"]), int(info["num_classes"])
    if m.in_chans is not None and int(m.in_chans) != channels:
        raise ValueError(
            f"model.in_chans={m.in_chans} but data set {cfg.data.dataset!r} has {channels}-channel inputs "
            f"(set model.in_chans: {channels}, or null to take it from the data)"
        )
    if m.num_classes is not None and 0 < int(m.num_classes) < classes:
        raise ValueError(
            f"model.num_classes={m.num_classes} but data set {cfg.data.dataset!r} has {classes} classes"
        )
    if int(info["spatial_rank"]) != len(m.img_size):
        raise ValueError(
            f"model.img_size={list(m.img_size)} has {len(m.img_size)} axes but data set {cfg.data.dataset!r} "
            f"is {info['spatial_rank']}-D"
        )
    return {"name": m.name, "kwargs": kwargs}


def dataset_inputs(cfg: DictConfig, info: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's training and validation splits as MLflow inputs: name, sample count, the checksum of
    the split's manifest as digest, and where the shards are as source."""
    import hashlib

    from pipelines import paths

    d = cfg.data
    out = []
    for split, context in ((d.train_split, "training"), (d.val_split, "evaluation")):
        if d.backend == "ffcv":
            manifest, source = (
                paths.ffcv_manifest(d.root, d.dataset, split),
                paths.ffcv_file(d.root, d.dataset, split),
            )
        else:
            manifest = paths.webdataset_manifest(d.root, d.dataset, split)
            source = paths.webdataset_dir(d.root, d.dataset, split)
        if not manifest.is_file():
            continue
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
        samples = info["splits"].get(split)
        out.append(
            {"name": d.dataset, "split": split, "samples": samples, "digest": digest,
             "source": str(source.resolve()), "context": context}
        )  # fmt: skip
    return out
