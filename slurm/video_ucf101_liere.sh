#!/usr/bin/env bash
# ViT-B with LieRE-8 on UCF101 video clips (8 x 224 x 224, 2 x 16 x 16 tubelets): 3D positions in
# time and space, DeepSpeed ZeRO-2 data parallel over N nodes x G GPUs.
#
#   sbatch [sbatch options] slurm/video_ucf101_liere.sh [CONFIG] [key=value ...]
#   sbatch --nodes=4 slurm/video_ucf101_liere.sh configs/video_ucf101_liere8.yaml data.batch_size=4
#
# Same machinery as slurm/imagenet_liere.sh (slurm/lib.sh); site settings in slurm/site.sh;
# docs/cluster.md. Prepare the clips first: slurm/prepare_data.sh ucf101 ...
#SBATCH --job-name=video_ucf101_liere
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
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
liere_train configs/video_ucf101_liere8.yaml "$@"
