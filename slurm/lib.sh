# Machinery shared by the templates in slurm/: site settings, rendezvous, ranks per node, the srun
# line, and requeue after a checkpoint; a training template is its #SBATCH header and a call of
# liere_train. Sourced (not run): sbatch runs a spooled copy of a template, so each finds this file
# from the path submitted (`scontrol show job`), else its $0, else the submit directory, or from
# LIERE_ROOT when that is set.
# shellcheck shell=bash

liere_log() { echo "[$(date -u +%FT%TZ)] $*"; }
liere_die() { echo "[$(date -u +%FT%TZ)] error: $*" >&2; exit 2; }

# The ranks' exit status after they checkpointed on SIGTERM/SIGUSR1: restart to resume. The same
# number as the engine's EXIT_PREEMPTED (liere/engine/trainer.py); exported for slurm/node_launch.sh.
export LIERE_EXIT_PREEMPTED=3

# the checkout is the folder above this file (an absolute path: the job changes directory)
LIERE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -n ${SLURM_JOB_ID:-} ]] || liere_die "not inside a Slurm job: submit with sbatch (or run inside salloc)"
cd "$LIERE_ROOT"
# shellcheck source=slurm/site.sh
source "$LIERE_ROOT/slurm/site.sh"
export PYTHONUNBUFFERED=1
# ranks get these from node_launch.sh; values inherited from the submitting shell would mislead them
unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT

# Ranks per node: PROCS_PER_NODE if set, else one per GPU the job has on a node, else one.
liere_procs_per_node() {
    local gpus=${SLURM_GPUS_ON_NODE:-}
    if [[ -z $gpus && -n ${SLURM_GPUS_PER_NODE:-} ]]; then gpus=${SLURM_GPUS_PER_NODE##*:}; fi  # "a100:8"
    if [[ -n ${PROCS_PER_NODE:-} ]]; then echo "$PROCS_PER_NODE"
    elif [[ $gpus =~ ^[0-9]+$ ]] && ((gpus > 0)); then echo "$gpus"
    else echo 1; fi
}

# The rendezvous: the job's first node, at a port derived from the job id (the same after a
# requeue, distinct for jobs sharing a node). A node name that does not resolve is replaced by the
# address Slurm has for it (NodeAddr; 127.0.0.1 in the one-machine test cluster); a multi-node job
# with neither stops here, where it would otherwise hang at the rendezvous.
liere_rendezvous() {
    local hosts addr
    mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    MASTER_ADDR=${hosts[0]}
    if ! getent hosts "$MASTER_ADDR" >/dev/null; then
        addr=$(scontrol show node "$MASTER_ADDR" -o 2>/dev/null | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
        if [[ -n $addr ]] && getent hosts "$addr" >/dev/null; then
            liere_log "node name $MASTER_ADDR does not resolve: rendezvous on its NodeAddr $addr"
            MASTER_ADDR=$addr
        elif ((${SLURM_JOB_NUM_NODES:-1} > 1)); then
            liere_log "error: node name $MASTER_ADDR does not resolve and Slurm has no address for it: set MASTER_ADDR"
            exit 2
        else
            liere_log "node name $MASTER_ADDR does not resolve: rendezvous on 127.0.0.1"
            MASTER_ADDR=127.0.0.1
        fi
    fi
    MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
    export MASTER_ADDR MASTER_PORT
}

# liere_resolve_config PATH: a config relative to the submit directory or to the checkout.
liere_resolve_config() {
    if [[ $1 != /* && -f ${SLURM_SUBMIT_DIR:-.}/$1 ]]; then echo "$SLURM_SUBMIT_DIR/$1"
    elif [[ -f $1 ]]; then echo "$1"
    else liere_die "config not found: $1 (looked in ${SLURM_SUBMIT_DIR:-.} and $LIERE_ROOT)"; fi
}

# liere_train DEFAULT_CONFIG [CONFIG] [key=value ...] [--dry-run]
# Trains on every node of the job. The run is named RUN_NAME (default: job name and job id, which
# a requeued job keeps), so a requeued job finds its checkpoints/latest and MLflow run again.
# Exit status LIERE_EXIT_PREEMPTED from the ranks (checkpointed after a signal) requeues the job unless
# Slurm is already ending it (preemption, `scontrol requeue`, scancel): then Slurm decides what follows.
liere_train() {
    local config=$1
    shift
    if [[ $# -gt 0 && $1 != *=* && $1 != -* ]]; then config=$1; shift; fi
    config=$(liere_resolve_config "$config")
    RUN_NAME=${RUN_NAME:-${SLURM_JOB_NAME%.sh}-${SLURM_JOB_ID}}
    local overrides=("tracking.run_name=$RUN_NAME")
    if [[ -n $DATA_ROOT ]]; then overrides+=("data.root=$DATA_ROOT"); fi
    overrides+=("$@")  # the user's come last and win

    local nproc
    nproc=$(liere_procs_per_node)
    export PROCS_PER_NODE=$nproc
    liere_rendezvous
    local cmd=("$PYTHON" launch/train.py "$config" "${overrides[@]}")
    if [[ -n $CONTAINER ]]; then read -r -a prefix <<<"$CONTAINER_EXEC"; cmd=("${prefix[@]}" "$CONTAINER" "${cmd[@]}"); fi
    liere_log "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NUM_NODES} node(s) $SLURM_JOB_NODELIST," \
        "$nproc rank(s) per node: world size $((nproc * SLURM_JOB_NUM_NODES)), rendezvous $MASTER_ADDR:$MASTER_PORT"
    liere_log "config $config; run name $RUN_NAME; MLflow $MLFLOW_TRACKING_URI; python $PYTHON"
    liere_log "command: ${cmd[*]}"

    # bash runs a trap only after the foreground srun returns: note the signal, do not die of it
    LIERE_TERMINATED=""
    trap 'LIERE_TERMINATED=1; liere_log "batch script got SIGTERM: Slurm is ending the job"' TERM
    local srun_args=(--kill-on-bad-exit=1 --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1)
    if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK"); fi
    local job_info out err
    job_info=$(scontrol show job "$SLURM_JOB_ID")
    out=$(sed -n 's/^ *StdOut=//p' <<<"$job_info")
    err=$(sed -n 's/^ *StdErr=//p' <<<"$job_info")
    if [[ $TASK_OUTPUT == job && -n $out ]]; then
        srun_args+=(--output="$out" --error="${err:-$out}" --open-mode=append)
    elif [[ $TASK_OUTPUT != job ]]; then
        srun_args+=(--output="$TASK_OUTPUT" --open-mode=append)
    fi
    local rc=0
    srun "${srun_args[@]}" bash "$LIERE_ROOT/slurm/node_launch.sh" "${cmd[@]}" || rc=$?
    case $rc in
        0)
            liere_log "training finished" ;;
        "$LIERE_EXIT_PREEMPTED")
            if [[ -n $LIERE_TERMINATED ]]; then
                liere_log "ranks checkpointed; Slurm is ending the job (a requeued job resumes from the checkpoint)"
            else
                liere_log "ranks checkpointed before the time limit: requeueing job $SLURM_JOB_ID to resume"
                scontrol requeue "$SLURM_JOB_ID" ||
                    liere_log "requeue refused: resubmit with RUN_NAME=$RUN_NAME to resume"
            fi ;;
        *)
            liere_log "training failed (status $rc): the failing rank's error is above; MLflow run '$RUN_NAME'"
            return "$rc" ;;
    esac
}
