"""Every YAML experiment under configs/ loads against the schema, every cluster recipe loads with every
encoding given as an override (docs/recipes.md), and a per-encoding variant file differs from its
recipe only in what it means to change.

Fast: configs are loaded and compared, nothing is built, trained or launched.
"""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from liere.engine.config import flatten, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
ENCODINGS = ("ape", "rope_axial", "rope_mixed", "liere8", "liere64", "string")
# the cluster recipes, each run with any encoding as `model.encoding=<encoding>`
RECIPES = (
    "imagenet/paper_vit_b",
    "imagenet/paper_vit_s",
    "imagenet/deit3_vit_b",
    "imagenet/deit3_vit_s",
    "cifar100/paper_vit_b",
    "video/ucf101_paper_vit_b",
    "volume/medmnist3d_vit_s",
)
# the sbatch templates' and launch/submit.py's defaults: public names, kept whatever they hold
TEMPLATE_DEFAULTS = (
    "imagenet_vit_b_liere8.yaml",
    "video_ucf101_liere8.yaml",
    "volume_medmnist3d_liere8.yaml",
)
# what a variant file may change besides the encoding: its options, its learning-rate multiplier,
# memory savers, and the per-GPU split of the same global batch (batch_size x grad_accum kept)
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


# (config, overrides): every file as it is, then every recipe with every encoding
CASES = [(p, []) for p in CONFIGS] + [
    (REPO / "configs" / f"{r}.yaml", [f"model.encoding={e}"]) for r in RECIPES for e in ENCODINGS
]
CASE_IDS = [rel(p) + "".join(f" {o}" for o in ov) for p, ov in CASES]


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
    expected = {"demo.yaml", *TEMPLATE_DEFAULTS, *(f"{r}.yaml" for r in RECIPES)}
    assert expected <= names, sorted(expected - names)


def test_no_config_is_only_an_encoding():
    """A file holding `base:` and `model.encoding` alone is what `model.encoding=...` on the command
    line says; the template defaults stay, being names users type."""
    stubs = []
    for path in CONFIGS:
        raw = OmegaConf.to_container(OmegaConf.load(path))
        if set(raw) == {"base", "model"} and set(raw["model"]) == {"encoding"}:
            stubs.append(rel(path))
    assert set(stubs) <= set(TEMPLATE_DEFAULTS), sorted(set(stubs) - set(TEMPLATE_DEFAULTS))


@pytest.mark.parametrize("path, overrides", CASES, ids=CASE_IDS)
def test_every_config_loads(path, overrides):
    # schema, base chain, types and values, the encoding's name included (raises ConfigError naming the key)
    cfg = load_config(path, overrides)
    assert cfg.tracking.experiment == path.stem
    for o in overrides:
        key, value = o.split("=", 1)
        assert str(OmegaConf.select(cfg, key)) == value


@pytest.mark.parametrize("path, overrides", CASES, ids=CASE_IDS)
def test_configs_of_data_to_prepare_name_classes_and_channels(path, overrides):
    """So `launch/train.py CONFIG --dry-run` builds the model before the data set is prepared."""
    from pipelines.sources import list_sources, source_class

    cfg = load_config(path, overrides)
    d = cfg.data.dataset
    if d in list_sources() and not source_class(d).needs_src:
        return  # embedded: prepared on first use
    assert cfg.model.num_classes and cfg.model.in_chans, (
        f"{rel(path)}: set model.num_classes and model.in_chans"
    )


@pytest.mark.parametrize("path, overrides", CASES, ids=CASE_IDS)
def test_volumes_and_video_have_no_randaugment(path, overrides):
    """The loaders refuse RandAugment on 3D inputs when training starts: fail here instead."""
    cfg = load_config(path, overrides)
    if len(cfg.model.img_size) == 3:
        assert cfg.data.randaugment is None, rel(path)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("enc", ENCODINGS)
def test_an_encoding_override_changes_only_the_encoding(recipe, enc):
    path = REPO / "configs" / f"{recipe}.yaml"
    a, b = flatten(load_config(path)), flatten(load_config(path, [f"model.encoding={enc}"]))
    changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert changed <= {"model.encoding"} and b["model.encoding"] == enc, sorted(changed)


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
