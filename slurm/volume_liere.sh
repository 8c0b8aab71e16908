#!/usr/bin/env bash
# A LieRE ViT on 3D volumes (CT/MRI; default: MedMNIST-3D at 28^3 with 4^3 patches): 3D positions
# in depth, height and width, DeepSpeed ZeRO-2 data parallel over N nodes x G GPUs.
#
#   sbatch [sbatch options] slurm/volume_liere.sh [CONFIG] [key=value ...]
#   sbatch --nodes=1 --gpus-per-node=4 slurm/volume_liere.sh configs/volume_medmnist3d_liere8.yaml
#
# Same machinery as slurm/imagenet_liere.sh (slurm/lib.sh); site settings in slurm/site.sh;
# docs/cluster.md. Prepare the volumes first: slurm/prepare_data.sh medmnist3d ... (or nifti, dicom)
#SBATCH --job-name=volume_liere
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=12:00:00
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
liere_train configs/volume_medmnist3d_liere8.yaml "$@"
