#!/usr/bin/env bash
# The per-node launcher: `srun` starts one of these on every node of a job (slurm/lib.sh). It starts
# PROCS_PER_NODE ranks of the command it is given (one per GPU), each with RANK, LOCAL_RANK,
# WORLD_SIZE and the job's MASTER_ADDR/MASTER_PORT, the variables launch/train.py reads. It exits
# the way the ranks did, which is what the batch script acts on:
#   0  every rank finished;
#   LIERE_EXIT_PREEMPTED (slurm/lib.sh) the ranks checkpointed after SIGTERM/SIGUSR1: requeue to
#      resume;
#   N  the status of the first rank that failed (128 + signal if it was killed), after stopping
#      this node's other ranks; srun --kill-on-bad-exit then stops the other nodes.
# Unlike torchrun it passes SIGUSR1 on, keeps the engine's status, and gives a checkpoint in
# progress as long as Slurm does (KillWait) instead of its own 30 s.
set -euo pipefail

: "${MASTER_ADDR:?set by slurm/lib.sh}" "${MASTER_PORT:?set by slurm/lib.sh}"
preempted=${LIERE_EXIT_PREEMPTED:?set by slurm/lib.sh}
nproc=${PROCS_PER_NODE:-1}
node=${SLURM_NODEID:?run me under srun}
nnodes=${SLURM_STEP_NUM_NODES:-${SLURM_NNODES:-1}}
export WORLD_SIZE=$((nproc * nnodes)) LOCAL_WORLD_SIZE=$nproc
# the node's cores, shared among its ranks (their loader workers set their own)
threads=$(( ${SLURM_CPUS_PER_TASK:-$nproc} / nproc ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( threads > 0 ? threads : 1 ))}

declare -A rank_of=()
for ((i = 0; i < nproc; i++)); do
    RANK=$((node * nproc + i)) LOCAL_RANK=$i "$@" &
    rank_of[$!]=$((node * nproc + i))
done
echo "node_launch: $(hostname) node $node of $nnodes: ranks $((node * nproc))-$((node * nproc + nproc - 1)) of $WORLD_SIZE (pids ${!rank_of[*]}), rendezvous $MASTER_ADDR:$MASTER_PORT"

# Slurm signals every process of the step itself; passing the signal on as well makes this
# launcher work where only it is signalled (a second signal to a rank changes nothing).
forward() { kill -s "$1" "${!rank_of[@]}" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward USR1' USR1
trap 'forward INT' INT

describe() {  # an exit status in words
    if (($1 > 128)); then echo "killed by signal $(kill -l $(($1 - 128)) 2>/dev/null || echo $(($1 - 128)))"
    else echo "exit status $1"; fi
}

status=0
while ((${#rank_of[@]} > 0)); do
    pid=""
    rc=0
    wait -n -p pid "${!rank_of[@]}" || rc=$?
    if [[ -z ${pid:-} ]]; then continue; fi  # a trapped signal interrupted the wait: the ranks run on
    rank=${rank_of[$pid]}
    unset "rank_of[$pid]"
    if ((rc == 0 || rc == preempted)); then
        if ((rc > status)); then status=$rc; fi
        continue
    fi
    echo "node_launch: rank $rank (pid $pid) on $(hostname) failed: $(describe "$rc"); stopping the other ranks" >&2
    if ((${#rank_of[@]} > 0)); then
        forward TERM  # rank 0 marks its MLflow run FAILED on the way out
        for _ in $(seq 20); do
            sleep 0.5
            for p in "${!rank_of[@]}"; do kill -0 "$p" 2>/dev/null || unset "rank_of[$p]"; done
            if ((${#rank_of[@]} == 0)); then break; fi
        done
        forward KILL
    fi
    exit "$rc"
done
exit "$status"
