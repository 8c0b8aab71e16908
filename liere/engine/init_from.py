"""``train.init_from``: start a fresh run (new optimizer, new schedule) from trained weights.

The source is an exported ``model.safetensors`` (``liere.models.save_pretrained``), or a run
directory: its ``model.safetensors``, else its latest complete checkpoint consolidated in memory
(with the run's ``config.yaml`` for the model spec). Weights are copied key by key; what this
module knows to adapt:

- a learned absolute embedding (``ape``, and the APE of ``rope_mixed_ape``) is resampled from the
  source's training grid to the new one (bicubic in 2D, trilinear in 3D, ``align_corners=False``,
  as DeiT's ``--finetune`` does in ``main.py``; the class token is a separate parameter, kept);
- rotary parameters (LieRE generators, RoPE frequencies, STRING/ComRoPE) do not depend on the grid
  and are kept as they are; positions follow the encoding's scheme on the new training grid;
- a classifier of another size (``model.num_classes``), only with ``train.init_new_head=true``:
  the head keeps its fresh initialisation.

Anything else (a key missing, left over, or of another shape) is an error naming the file and keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

HEAD = "head."


class InitFromError(ValueError):
    """Weights that do not fit the model; the message names the file and the keys."""


def read_source(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """(fp32 state dict, model spec {"name", "kwargs"}, the file read) of an export or a run directory."""
    from safetensors.torch import load_file

    from liere.models.io import read_spec

    path = Path(path)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            return _from_checkpoint(path)
        path = weights
    if not path.is_file():
        raise InitFromError(f"train.init_from={str(path)!r}: no such file or run directory")
    try:
        spec = read_spec(path)
    except Exception as err:  # not safetensors, or not written by save_pretrained
        raise InitFromError(f"train.init_from={str(path)!r}: not an exported model ({err})") from None
    return load_file(str(path)), spec, path


def _from_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """The latest complete checkpoint of a run that has not exported yet, consolidated in memory."""
    from liere.engine.checkpoint import consolidated_state_dict, latest_of_run

    found = latest_of_run(run_dir)
    if found is None:
        raise InitFromError(
            f"train.init_from={str(run_dir)!r}: neither model.safetensors nor a complete checkpoint "
            "with the run's config.yaml"
        )
    ckpt_dir, tag, spec = found
    return consolidated_state_dict(ckpt_dir, tag), spec, ckpt_dir / tag


def _ape_grids(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``<module>.pos_embed`` key -> training grid of every learned absolute embedding."""
    from liere.encodings.absolute import LearnedAPE

    return {
        f"{name}.pos_embed": m.grid_shape for name, m in model.named_modules() if isinstance(m, LearnedAPE)
    }


def source_grids(spec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The APE grids of the source model, read off the model its spec builds (on CPU, weights unread)."""
    import liere

    with torch.no_grad():
        return _ape_grids(liere.create_model(spec["name"], **spec["kwargs"]))


def adapt(
    state: dict[str, torch.Tensor],
    model: nn.Module,
    grids_from: dict[str, tuple[int, ...]],
    *,
    source: str,
    new_head: bool = False,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict ``model`` loads from ``state``, and what was adapted (for the log)."""
    from liere.encodings.absolute import resample_table

    target, grids_to = model.state_dict(), _ape_grids(model)
    out: dict[str, torch.Tensor] = {}
    notes, problems = [], []
    for key, want in target.items():
        have = state.get(key)
        if have is not None and have.shape == want.shape:
            out[key] = have.to(want.dtype)
        elif have is not None and key in grids_to and key in grids_from:
            out[key] = resample_table(have.float(), grids_from[key], grids_to[key]).to(want.dtype)
            notes.append(f"{key} resampled {_grid(grids_from[key])} -> {_grid(grids_to[key])}")
        elif new_head and key.startswith(HEAD):
            out[key] = want
            notes.append(f"{key} newly initialised {tuple(want.shape)}")
        elif have is None:
            problems.append(f"{key} is missing from the file")
        else:
            problems.append(f"{key} is {tuple(have.shape)} in the file, {tuple(want.shape)} in the model")
    extra = sorted(k for k in state if k not in target and not (new_head and k.startswith(HEAD)))
    problems += [f"{k} is in the file, not in the model" for k in extra]
    if problems:
        hint = (
            " (a classifier of another size loads with train.init_new_head=true)"
            if any(p.startswith(HEAD) for p in problems)
            else ""
        )
        raise InitFromError(f"train.init_from={source!r} does not fit the model: {'; '.join(problems)}{hint}")
    return out, notes


def _grid(shape) -> str:
    return "x".join(str(s) for s in shape)


def load_into(model: nn.Module, path: str | Path, *, new_head: bool = False) -> list[str]:
    """Fill ``model`` (in place, before DeepSpeed wraps it) from ``path``; returns what was adapted."""
    state, spec, file = read_source(path)
    grids = source_grids(spec) if _ape_grids(model) else {}  # the source is built only for an APE
    state, notes = adapt(state, model, grids, source=str(file), new_head=new_head)
    model.load_state_dict(state, strict=True)
    return [f"initialised from {file}", *notes]
