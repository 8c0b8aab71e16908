"""``train.ema``: an exponential moving average of the weights, as timm's ``ModelEmaV3`` and DeiT's
``ModelEma`` keep it: a copy of the initial weights, then after every optimizer step
``ema = decay * ema + (1 - decay) * w`` (``lerp``, in fp32), buffers taken from the model.

Under DeepSpeed each rank averages only what it holds of the fp32 weights the optimizer updates:
- ZeRO-3: its partition of every parameter (``safe_get_local_fp32_param``);
- ZeRO-1/2 (and bf16 at stage 0 where DeepSpeed partitions the master weights): its fragment of each
  parameter's fp32 master (``param._hp_mapping``);
- otherwise the whole parameter: the fp32 master of DeepSpeed's per-tensor fp16/bf16 wrapper, or the
  parameter itself in fp32.
So a step costs no communication and 1/N of the fp32 weights in memory per rank (as ZeRO keeps them).
Checkpoints, evaluation and export gather it whole (``full_state``, a collective): the checkpoint's
``ema.safetensors`` holds whole tensors, so a resume, on any world size or stage, is exact.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

FILE = "ema.safetensors"  # in each checkpoint folder; the export is <out_dir>/model_ema.safetensors


def _world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class WeightEma:
    """The moving average of an engine's parameters; ``update()`` after each optimizer step."""

    def __init__(self, engine, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema={decay!r}: expected a decay in [0, 1)")
        self.engine, self.decay = engine, decay
        self.names, self.params = zip(*engine.module.named_parameters(), strict=True)
        self.mode = [_mode(p) for p in self.params]  # z3, fragment or full
        self.shadow: list[torch.Tensor] = []
        self.reset()

    def _sources(self) -> list[torch.Tensor | None]:
        """What this rank holds of each parameter's fp32 weights now (None: nothing)."""
        masters = _unfused_masters(self.engine.optimizer)
        out: list[torch.Tensor | None] = []
        for p, mode in zip(self.params, self.mode):
            if mode == "z3":
                from deepspeed.utils import safe_get_local_fp32_param

                out.append(safe_get_local_fp32_param(p))
            elif mode == "fragment":
                out.append(None if p._hp_mapping is None else p._hp_mapping.get_hp_fragment())
            else:
                out.append(masters.get(id(p), p.data))
        return out

    def reset(self) -> None:
        """Start over from the current weights (a run's start, or a checkpoint without an average)."""
        self.shadow = [
            torch.empty(0) if s is None else s.detach().float().flatten().clone() for s in self._sources()
        ]

    @torch.no_grad()
    def update(self) -> None:
        pairs = [(e, s) for e, s in zip(self.shadow, self._sources()) if s is not None and e.numel()]
        if pairs:
            shadows, sources = zip(*pairs, strict=True)
            sources = [s.detach().float().flatten() for s in sources]
            torch._foreach_lerp_(list(shadows), sources, 1.0 - self.decay)

    @torch.no_grad()
    def full_state(self) -> dict[str, torch.Tensor]:
        """Every parameter's whole average (fp32, CPU), on every rank: a collective."""
        world = _world()[1]
        out = {}
        for name, p, mode, e in zip(self.names, self.params, self.mode, self.shadow):
            if mode == "z3":
                parts = [torch.empty_like(e) for _ in range(world)]
                dist.all_gather(parts, e)
                full = torch.cat(parts)[: p.ds_numel].view(p.ds_shape)
            elif mode == "fragment":
                full = torch.zeros(p.numel(), dtype=torch.float32, device=e.device)
                if e.numel():
                    address = p._hp_mapping.lp_fragment_address
                    full.narrow(0, address.start, address.numel).copy_(e)
                if world > 1:
                    dist.all_reduce(full)  # disjoint fragments and zeros: the sum is exact
                full = full.view(p.shape)
            else:
                full = e.view(p.shape)
            out[name] = full.cpu().clone()
        return out

    @torch.no_grad()
    def load_full(self, state: dict[str, torch.Tensor]) -> None:
        """Take this rank's share of whole averages (any world size or stage wrote them)."""
        rank = _world()[0]
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"the average lacks {missing}")
        for i, (name, p, mode) in enumerate(zip(self.names, self.params, self.mode)):
            flat = state[name].float().flatten().to(self.shadow[i].device)
            if mode == "z3":
                size = self.shadow[i].numel()
                part = torch.zeros(size, dtype=torch.float32, device=flat.device)
                chunk = flat[rank * size : (rank + 1) * size]
                part[: chunk.numel()] = chunk
                self.shadow[i] = part
            elif mode == "fragment":
                if self.shadow[i].numel():
                    address = p._hp_mapping.lp_fragment_address
                    self.shadow[i] = flat.narrow(0, address.start, address.numel).clone()
            else:
                self.shadow[i] = flat.clone()

    def save(self, folder: Path) -> None:
        """Every rank (a collective); rank 0 writes ``folder/ema.safetensors``."""
        from safetensors.torch import save_file

        state = self.full_state()
        if _world()[0] == 0:
            save_file(state, str(Path(folder) / FILE), metadata={"decay": repr(self.decay)})

    def load(self, folder: Path) -> None:
        """Every rank: the average saved in ``folder``, or (none there) a new one from the weights."""
        from safetensors.torch import load_file

        path = Path(folder) / FILE
        if not path.is_file():
            if _world()[0] == 0:
                print(f"[ema] {path} not found: the average starts from the resumed weights", file=sys.stderr)
            self.reset()
            return
        self.load_full(load_file(str(path)))


def _mode(p) -> str:
    if hasattr(p, "ds_id"):
        return "z3"
    if hasattr(p, "_hp_mapping"):
        return "fragment"
    return "full"


def _unfused_masters(optimizer) -> dict[int, torch.Tensor]:
    """id(parameter) -> its fp32 master in DeepSpeed's per-tensor fp16/bf16 wrapper (stage 0)."""
    lows, highs = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if not isinstance(lows, list) or not isinstance(highs, list):
        return {}
    return {
        id(lp): hp
        for low, high in zip(lows, highs)
        if isinstance(low, list) and isinstance(high, list)
        for lp, hp in zip(low, high)
        if hp.shape == lp.shape
    }


def ema_model(trainer, state: dict[str, torch.Tensor]):
    """A plain copy of the run's model holding the average (buffers from the run's model)."""
    import liere

    model = liere.create_model(trainer.spec["name"], **trainer.spec["kwargs"])
    names = set(trainer.ema.names)
    buffers = {k: v for k, v in trainer.engine.module.state_dict().items() if k not in names}
    model.load_state_dict({**buffers, **state}, strict=True)
    return model.to(trainer.device, trainer.precision.dtype)


def evaluate_ema(trainer) -> dict[str, Any]:
    """Every rank: the average evaluated at the training size, logged as ``ema/val/*``."""
    from liere.engine.data import eval_loader
    from liere.engine.distributed import log0
    from liere.engine.evaluate import evaluate

    cfg, step = trainer.cfg, trainer.progress.step
    model = ema_model(trainer, trainer.ema.full_state())
    loader = eval_loader(cfg, trainer.denv, list(cfg.model.img_size))
    result = evaluate(model, loader, trainer.device, trainer.precision.dtype)
    result = {k: result[k] for k in ("top1", "top5", "loss", "count")}
    trainer.tracker.log_metrics(
        {"ema/val/top1": result["top1"], "ema/val/top5": result["top5"], "ema/val/loss": result["loss"]}, step
    )
    log0(
        trainer.denv,
        f"step {step}: EMA ({trainer.ema.decay}) val top-1 {100 * result['top1']:.2f}% "
        f"top-5 {100 * result['top5']:.2f}% loss {result['loss']:.4f}",
    )
    return result


def export_ema(
    checkpoint_dir: Path, tag: str, spec: dict[str, Any], model_file: Path, path: Path
) -> Path | None:
    """Rank 0: ``path`` (model_ema.safetensors) from the checkpoint's average and the exported model's
    buffers, loadable by ``liere.load_model``; None when the checkpoint holds no average."""
    from safetensors.torch import load_file

    import liere

    source = Path(checkpoint_dir) / tag / FILE
    if not source.is_file():
        return None
    state = {**load_file(str(model_file)), **load_file(str(source))}
    liere.models.save_pretrained(state, path, spec["name"], spec["kwargs"])
    return path
