"""Every YAML experiment under configs/ loads against the schema, and each per-encoding variant of a
cluster recipe (docs/recipes.md) differs from its recipe only in what it means to change.

Fast: configs are loaded and compared, nothing is built, trained or launched.
"""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from liere.engine.config import flatten, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
ENCODINGS = ("ape", "rope_axial", "rope_mixed", "liere8", "liere64", "string")
# the recipe bases that must have one variant per encoding (configs/<folder>/<base>_<encoding>.yaml)
RECIPES = (
    "imagenet/paper_vit_b",
    "imagenet/paper_vit_s",
    "imagenet/deit3_vit_b",
    "imagenet/deit3_vit_s",
    "cifar100/paper_vit_b",
    "video/ucf101_paper_vit_b",
    "volume/medmnist3d_vit_s",
)
# what a variant may change besides the encoding: its options, its learning-rate multiplier, memory
# savers, and the per-GPU split of the same global batch (batch_size x grad_accum kept)
ALLOWED = (
    "model.encoding",  # and model.encoding_options.*
    "model.grad_checkpointing",
    "optim.encoding_lr_scale",
    "data.batch_size",
    "train.grad_accum",
)
PER_FILE = ("tracking.experiment", "train.out_dir", "config_path")  # derived from the file name


def rel(path: Path) -> str:
    return str(path.relative_to(REPO / "configs"))


def variants() -> list[tuple[Path, Path, str]]:
    """(variant, its recipe base, encoding) for every configs/<dir>/<base>_<encoding>.yaml whose
    `base:` is <base>.yaml in the same folder."""
    out = []
    for path in CONFIGS:
        base = OmegaConf.load(path).get("base")
        for enc in ENCODINGS:
            if (
                base
                and path.stem == f"{Path(base).stem}_{enc}"
                and (path.parent / base).parent == path.parent
            ):
                out.append((path, path.parent / base, enc))
    return out


def test_configs_are_found():
    names = {rel(p) for p in CONFIGS}
    assert "demo.yaml" in names and len(names) > 40, sorted(names)


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_every_config_loads(path):
    cfg = load_config(path)  # schema, base chain, types and values (raises ConfigError naming the key)
    assert cfg.tracking.experiment == path.stem


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_configs_of_data_to_prepare_name_classes_and_channels(path):
    """So `launch/train.py CONFIG --dry-run` builds the model before the data set is prepared."""
    from pipelines.sources import list_sources, source_class

    cfg = load_config(path)
    d = cfg.data.dataset
    if d in list_sources() and not source_class(d).needs_src:
        return  # embedded: prepared on first use
    assert cfg.model.num_classes and cfg.model.in_chans, (
        f"{rel(path)}: set model.num_classes and model.in_chans"
    )


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_volumes_and_video_have_no_randaugment(path):
    """The loaders refuse RandAugment on 3D inputs when training starts: fail here instead."""
    cfg = load_config(path)
    if len(cfg.model.img_size) == 3:
        assert cfg.data.randaugment is None, rel(path)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_has_a_variant_per_encoding(recipe):
    found = {enc for _, base, enc in VARIANTS if rel(base) == f"{recipe}.yaml"}
    assert found == set(ENCODINGS), f"{recipe}: missing {sorted(set(ENCODINGS) - found)}"


VARIANTS = variants()


@pytest.mark.parametrize("variant, base, enc", VARIANTS, ids=[rel(v) for v, _, _ in VARIANTS])
def test_a_variant_changes_only_its_encoding(variant, base, enc):
    own = OmegaConf.load(variant)
    assert own.model.encoding == enc, f"{rel(variant)} must name its encoding itself"
    a, b = flatten(load_config(base)), flatten(load_config(variant))
    changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in PER_FILE}
    unexpected = {k for k in changed if not k.startswith(ALLOWED)}
    assert not unexpected, f"{rel(variant)} changes {sorted(unexpected)} of {rel(base)}"
    assert b["model.encoding"] == enc
    global_batch = int(a["data.batch_size"]) * int(a["train.grad_accum"])
    assert int(b["data.batch_size"]) * int(b["train.grad_accum"]) == global_batch, (
        f"{rel(variant)}: data.batch_size x train.grad_accum must stay {global_batch} (the same global batch)"
    )
