"""Training engine: DeepSpeed ZeRO runs of the model library, with checkpoints, evaluation and MLflow.

Needs the ``train`` extra (deepspeed, mlflow, omegaconf, tqdm, matplotlib). Entry point:
``python launch/train.py CONFIG [key=value ...]``.
"""

from liere.engine.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
