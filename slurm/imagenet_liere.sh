#!/usr/bin/env bash
# ViT-B/16 with LieRE-8 on ImageNet-1k: DeepSpeed ZeRO-2 data parallel over N nodes x G GPUs.
#
#   sbatch [sbatch options] slurm/imagenet_liere.sh [CONFIG] [key=value ...]
#   sbatch --nodes=8 slurm/imagenet_liere.sh configs/imagenet_vit_b_liere8.yaml data.batch_size=32
#   sbatch --nodes=2 --gpus-per-node=0 --cpus-per-task=1 slurm/imagenet_liere.sh configs/demo.yaml
#
# Submit from the checkout (logs go to slurm/logs/). Site settings (modules, container, Python,
# NCCL, MLflow; partition/account via SBATCH_* variables) are in slurm/site.sh; docs/cluster.md.
# Before the time limit every rank checkpoints (USR1) and the job requeues itself; a preempted or
# requeued job resumes from the checkpoint in the same MLflow run.
#SBATCH --job-name=imagenet_liere
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm/logs/%x-%j.out
# (one task per node: slurm/node_launch.sh, which starts one rank per GPU; cpus-per-task: the whole
# node, shared by its ranks and their loader workers; one log, stdout and stderr, appended to
# across requeues)
set -euo pipefail

# sbatch runs a spooled copy of this file: find slurm/lib.sh, the job's body, from the path submitted
# (or LIERE_ROOT), then train this template's default config or the one given, with the overrides.
submitted=$(scontrol show job "${SLURM_JOB_ID:?submit with sbatch}" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
for guess in "$submitted" "$0" "${SLURM_SUBMIT_DIR:-.}/slurm/x"; do [[ -f $(dirname "$guess")/lib.sh ]] && break; done
source "${LIERE_ROOT:-$(dirname "$guess")/..}/slurm/lib.sh"
liere_train configs/imagenet_vit_b_liere8.yaml "$@"
