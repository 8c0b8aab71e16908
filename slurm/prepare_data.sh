#!/usr/bin/env bash
# Convert a data set to webdataset shards (and FFCV betons) as a job array: one array task per
# split, each writing its split's shards with all of its CPUs (--workers = cpus-per-task).
#
#   sbatch [sbatch options] slurm/prepare_data.sh SOURCE [launch/prepare_data.py options]
#   sbatch slurm/prepare_data.sh imagenet --src /datasets/imagenet --out data --image-size 256 --formats webdataset,ffcv
#   SPLITS=train,val,test sbatch --array=0-2 slurm/prepare_data.sh imagefolder --src /datasets/x --out data
#
# SPLITS (default train,val) lists the splits; array task i prepares the i-th. Without --array one
# task prepares them all. Tasks are independent (each split has its own shards and manifest), so a
# failed split is redone alone: sbatch --array=1 ... Already complete outputs are kept
# (--overwrite rewrites them). The training jobs can start once every task has finished:
#   sbatch --dependency=afterok:<array job id> slurm/imagenet_liere.sh
#SBATCH --job-name=prepare_data
#SBATCH --array=0-1
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --output=slurm/logs/%x-%A_%a.out
# (one task per split; its CPUs run the shard writers in parallel; %A_%a: array job and task ids)
set -euo pipefail

# sbatch runs a spooled copy of this file: find slurm/lib.sh (site settings, logging) from the path
# submitted (or LIERE_ROOT).
submitted=$(scontrol show job "${SLURM_JOB_ID:?submit with sbatch}" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
for guess in "$submitted" "$0" "${SLURM_SUBMIT_DIR:-.}/slurm/x"; do [[ -f $(dirname "$guess")/lib.sh ]] && break; done
source "${LIERE_ROOT:-$(dirname "$guess")/..}/slurm/lib.sh"

[[ $# -ge 1 ]] || liere_die "usage: sbatch slurm/prepare_data.sh SOURCE [launch/prepare_data.py options]"
IFS=, read -r -a splits <<<"${SPLITS:-train,val}"
task=${SLURM_ARRAY_TASK_ID:-}
if [[ -n $task ]]; then
    ((task < ${#splits[@]})) || liere_die "array task $task but only ${#splits[@]} split(s) in SPLITS=${SPLITS:-train,val}"
    split_args=(--splits "${splits[$task]}")
else
    split_args=(--splits "$(IFS=,; echo "${splits[*]}")")
fi
cmd=("$PYTHON" launch/prepare_data.py "$@" "${split_args[@]}" --workers "${SLURM_CPUS_PER_TASK:-1}" --quiet)
liere_log "job ${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID} task ${task:-all} on $(hostname): ${cmd[*]}"
"${cmd[@]}"
liere_log "done"
