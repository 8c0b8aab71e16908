"""Submit a training run to Slurm with submitit: python launch/submit.py --nodes N --config CONFIG [key=value ...]

    python launch/submit.py --nodes 4 --gpus-per-node 8 --config configs/imagenet_vit_b_liere8.yaml optim.lr=2e-3
    python launch/submit.py --nodes 2 --gpus-per-node 0 --cpus-per-task 1 --config configs/demo.yaml --wait
    python launch/submit.py --cluster local --gpus-per-node 2 --config configs/demo.yaml --wait

One task per GPU (one per node without GPUs); each task runs launch/train.py with RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT from submitit's TorchDistributedEnvironment. The job is checkpointable:
before the time limit (SIGUSR1, --signal-delay-s ahead) or on preemption every rank checkpoints, the
job requeues and resumes from checkpoints/latest in the same MLflow run. Site settings come from
slurm/site.sh (modules, NCCL, MLflow) and SBATCH_PARTITION / SBATCH_ACCOUNT / SBATCH_QOS.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from liere.orchestration import slurm
from liere.orchestration.cli import command_parser


def main(argv: list[str] | None = None) -> int:
    args = slurm.add_arguments(command_parser(__doc__)).parse_args(argv)
    return slurm.submit(args)


if __name__ == "__main__":
    sys.exit(main())
