"""DeepSpeed's JIT-built extensions: the CPU communication op built once, and no lock waited on forever.

torch builds and loads a JIT extension (DeepSpeed's ``deepspeed_shm_comm`` on CPU machines, its
optimizer ops on GPU ones) under a lock file in the extension's build folder
(``torch.utils.file_baton``). Every process that loads the extension holds it for a moment, even when
the build is cached. A process killed while it holds it (a Slurm time limit, Ctrl-C, a session that
ends) leaves the file behind, and every later process on that home folder then waits for it without
end and without a word: ``deepspeed.init_distributed`` never returns. A build takes 1-2 min on 2 cores,
so a lock far older than that has no live owner: ``clear_stale_locks`` waits for a younger one to be
released and removes it once it is that old, saying so.

Extensions are also built per virtual environment (``<venv>/torch_extensions``) unless
TORCH_EXTENSIONS_DIR says otherwise: the op is bound to that environment's torch and DeepSpeed, and a
lock left by a run of another checkout (another venv) cannot stop this one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

SHM_OP = "deepspeed_shm_comm"
# A lock older than this has no builder behind it: the slowest build seen (the shm op on a 2-core
# machine under load) took about 2 min.
STALE_LOCK_S = 600.0


def extensions_root() -> Path:
    """The folder torch builds JIT extensions in: $TORCH_EXTENSIONS_DIR, else
    ``~/.cache/torch_extensions/<python>_<accelerator>`` (each extension in a subfolder)."""
    from torch.utils import cpp_extension

    return Path(cpp_extension._get_build_directory(SHM_OP, verbose=False)).parent


def environment_folder() -> Path:
    """This Python environment's own extensions folder."""
    return Path(sys.prefix) / "torch_extensions"


def use_environment_folder() -> Path:
    """Build and load extensions in ``environment_folder()`` when Python runs in a writable virtual
    environment and TORCH_EXTENSIONS_DIR is not set (torch's default otherwise); returns the folder
    torch will use."""
    in_venv = sys.prefix != sys.base_prefix
    if "TORCH_EXTENSIONS_DIR" not in os.environ and in_venv and os.access(sys.prefix, os.W_OK):
        os.environ["TORCH_EXTENSIONS_DIR"] = str(environment_folder())
    return extensions_root()


def clear_stale_locks(
    older_than_s: float = STALE_LOCK_S,
    announce: Callable[[str], None] = print,
    root: Path | None = None,
    poll_s: float = 1.0,
) -> list[Path]:
    """Wait for every extension's build lock under ``root`` (default: torch's extensions folder) to be
    released, and remove each that reaches ``older_than_s`` first, naming it; returns the removed ones.
    A lock released meanwhile (its owner finished, or another rank cleared it) is left alone."""
    root = extensions_root() if root is None else root
    removed: list[Path] = []
    waiting: set[Path] = set()
    while True:
        young = []
        for lock in sorted(root.glob("*/lock")):
            try:
                age = time.time() - lock.stat().st_mtime
                if age < older_than_s:
                    young.append(lock)
                    continue
                lock.unlink()
            except FileNotFoundError:
                continue
            removed.append(lock)
            announce(
                f"[extensions] removed {lock}: a build lock {age / 60:.0f} min old, left by a process "
                "killed while it loaded the extension (every later load would wait on it forever)"
            )
        if not young:
            return removed
        for lock in set(young) - waiting:
            announce(
                f"[extensions] waiting for {lock} (a build under way, or one killed: removed at {older_than_s:.0f} s)"
            )
        waiting.update(young)
        time.sleep(poll_s)


def build_shm_op() -> None:
    """Compile DeepSpeed's CPU communication op now (``make install``), so that no run waits for it."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    print(f"[extensions] building {SHM_OP} in {use_environment_folder()}", flush=True)
    clear_stale_locks()
    from deepspeed.comm.torch import build_shm_op as build

    if build() is None:  # DeepSpeed then reduces over gloo alone
        print(f"[extensions] DeepSpeed's {SHM_OP} op does not build on this machine: gloo reduces alone")


if __name__ == "__main__":
    build_shm_op()
