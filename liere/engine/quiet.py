"""Silence the known, harmless library chatter so a run's log shows the run."""

from __future__ import annotations

import logging
import os
import warnings


def filter_known_warnings() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    # torch 2.13 deprecations hit by DeepSpeed's collectives (hundreds of lines at ZeRO-3)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed.*")
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.*|.*reduce_scatter_tensor.*")
    warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated.*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"deepspeed.*")
    warnings.filterwarnings("ignore", message=r".*pkg_resources is deprecated.*")
    for name in ("DeepSpeed", "deepspeed", "torch.distributed", "mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
