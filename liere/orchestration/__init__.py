"""Orchestration of training runs: Slurm jobs through submitit (``slurm``), encoding sweeps (``sweep``),
their comparison report (``report``) and the evaluation of exported weights (``evaluation``).

Needs the ``train`` extra (submitit, mlflow, omegaconf, matplotlib) and ``pipelines``. The command
lines over it are launch/submit.py, launch/compare.py and launch/evaluate.py. Submodules load on use:
``slurm`` must set submitit's preemption signal before submitit is imported.
"""
