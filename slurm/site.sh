# Site settings for every template in slurm/: the one file to edit for a new cluster.
#
# Sourced by slurm/lib.sh at the start of each job, on the first node, before any rank starts;
# whatever it exports reaches every rank (srun passes the environment on). Everything here can
# also be overridden from the submitting shell, e.g. `PYTHON=/opt/env/bin/python sbatch ...`.
#
# Partition, account and QOS are sbatch options, so they cannot be set here: sbatch reads them
# from the environment of the submitting shell, which is the place to keep them, e.g. in ~/.bashrc
#   export SBATCH_PARTITION=gpu SBATCH_ACCOUNT=my_project SBATCH_QOS=normal
# (launch/submit.py reads the same three variables as its defaults), or per job:
#   sbatch -p gpu -A my_project slurm/imagenet_liere.sh

# --- software: modules, or a container ----------------------------------------------------------
# module purge
# module load cuda/12.4 nccl/2.21
# Run every rank inside a container (Apptainer/Singularity image with this checkout bind-mounted):
#   CONTAINER=/shared/images/liere.sif
#   CONTAINER_EXEC="apptainer exec --nv --bind /datasets,$LIERE_ROOT"
CONTAINER=${CONTAINER:-}
CONTAINER_EXEC=${CONTAINER_EXEC:-apptainer exec --nv}

# The Python that runs launch/train.py: the checkout's virtual environment when there is one
# (`make install` creates .venv), else the first python on PATH (e.g. from a module or conda).
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $LIERE_ROOT/.venv/bin/python ]]; then PYTHON=$LIERE_ROOT/.venv/bin/python; else PYTHON=python; fi
fi

# --- NCCL: all of it here, so a site has one place to look -------------------------------------
# A failed or timed-out collective aborts the communicator and raises on every rank, so a dead
# rank ends the job after train.dist_timeout_s instead of hanging until the time limit.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}            # INFO prints the topology and the transports chosen
# export NCCL_SOCKET_IFNAME=ib0,eth0             # the interface(s) for bootstrap and socket traffic
# export NCCL_IB_HCA=mlx5                        # InfiniBand adapters to use
# export NCCL_NET_GDR_LEVEL=PHB                  # GPUDirect RDMA distance
# export GLOO_SOCKET_IFNAME=eth0                # the CPU group (stop flag, end-of-run wait): a TCP interface

# --- tracking -----------------------------------------------------------------------------------
# An MLflow server reachable from the compute nodes (slurm/mlflow_server.sh starts one and writes
# its address to runs/mlflow_server.uri, which is used when MLFLOW_TRACKING_URI is not set);
# otherwise a SQLite file in the checkout, fine for a few jobs on a shared file system.
if [[ -z ${MLFLOW_TRACKING_URI:-} ]]; then
    if [[ -s $LIERE_ROOT/runs/mlflow_server.uri ]]; then
        MLFLOW_TRACKING_URI=$(<"$LIERE_ROOT/runs/mlflow_server.uri")
    else
        MLFLOW_TRACKING_URI=sqlite:///$LIERE_ROOT/mlflow.db
    fi
fi
export MLFLOW_TRACKING_URI
export MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true}
# That server asks for a user and password (MLflow's basic-auth app): slurm/mlflow_server.sh keeps them
# in MLFLOW_CREDENTIALS (default runs/mlflow_credentials, mode 0600, yours alone) with the address it
# serves at; the jobs get them as MLFLOW_TRACKING_USERNAME/PASSWORD when they track to that address
# (never handed to another server). Set both variables yourself to use another account.
MLFLOW_CREDENTIALS=${MLFLOW_CREDENTIALS:-$LIERE_ROOT/runs/mlflow_credentials}
# liere_mlflow_credentials FILE: the KEY=VALUE lines of a credentials file as mlflow_user,
# mlflow_password, mlflow_uri (read, never sourced: the file holds no code)
liere_mlflow_credentials() {
    local key value
    mlflow_user="" mlflow_password="" mlflow_uri=""
    while IFS='=' read -r key value; do
        case $key in
            MLFLOW_TRACKING_USERNAME) mlflow_user=$value ;;
            MLFLOW_TRACKING_PASSWORD) mlflow_password=$value ;;
            MLFLOW_TRACKING_URI) mlflow_uri=$value ;;
        esac
    done <"$1"
}
if [[ -z ${MLFLOW_TRACKING_PASSWORD:-} && -r $MLFLOW_CREDENTIALS ]]; then
    liere_mlflow_credentials "$MLFLOW_CREDENTIALS"
    if [[ -n $mlflow_password && $mlflow_uri == "$MLFLOW_TRACKING_URI" ]]; then
        export MLFLOW_TRACKING_USERNAME=$mlflow_user MLFLOW_TRACKING_PASSWORD=$mlflow_password
    fi
    unset mlflow_user mlflow_password mlflow_uri
fi

# --- logs -------------------------------------------------------------------------------------
# Where the ranks' output goes. "job": each node's slurmstepd appends it straight to the job's own
# log (srun relays nothing once Slurm signals it, so a rank's last words on preemption would be
# lost). On NFS, where appends from many nodes can clobber each other, give a per-task pattern:
#   TASK_OUTPUT=slurm/logs/%x-%j-%t.out      (%t: task = node index here)
TASK_OUTPUT=${TASK_OUTPUT:-job}

# --- data ---------------------------------------------------------------------------------------
# Where launch/prepare_data.py wrote the shards; passed to training as data.root when set.
DATA_ROOT=${DATA_ROOT:-}
