#!/usr/bin/env bash
# An MLflow tracking server for the training jobs: as a long job on a service partition, or by hand
# on a login/service node that the compute nodes can reach.
#
#   sbatch [sbatch options] slurm/mlflow_server.sh        # e.g. sbatch -p service slurm/mlflow_server.sh
#   bash slurm/mlflow_server.sh                           # on a login node (keep it in tmux/screen)
#
# Its address is printed ("export MLFLOW_TRACKING_URI=http://HOST:PORT") and written to
# runs/mlflow_server.uri, which slurm/site.sh reads when MLFLOW_TRACKING_URI is not set: the
# training jobs find the server by themselves. Runs are kept in MLFLOW_STORE (a SQLite database
# and an artifact folder); the same store serves the UI at that address. Settings:
#   MLFLOW_PORT (5000), MLFLOW_STORE ($LIERE_ROOT/mlflow-server), MLFLOW_WORKERS (4),
#   MLFLOW_HOST (the address the jobs use; default: this node's name), MLFLOW_URI_FILE.
#SBATCH --job-name=mlflow_server
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --time=7-00:00:00
#SBATCH --output=slurm/logs/%x-%j.out
set -euo pipefail

# Under sbatch this is a spooled copy: find the checkout from the submitted path (else from $0).
if [[ -z ${LIERE_ROOT:-} ]]; then
    submitted=""
    if [[ -n ${SLURM_JOB_ID:-} ]]; then
        submitted=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
    fi
    for guess in "$submitted" "$0" "${SLURM_SUBMIT_DIR:-.}/slurm/x"; do
        if [[ -f $(dirname "$guess")/site.sh ]]; then LIERE_ROOT=$(cd "$(dirname "$guess")/.." && pwd); break; fi
    done
fi
: "${LIERE_ROOT:?cannot find the checkout: set LIERE_ROOT}"
cd "$LIERE_ROOT"
# shellcheck source=slurm/site.sh
source slurm/site.sh

port=${MLFLOW_PORT:-5000}
host=${MLFLOW_HOST:-$(hostname -f 2>/dev/null || hostname)}
store=$(mkdir -p "${MLFLOW_STORE:-$LIERE_ROOT/mlflow-server}" && cd "${MLFLOW_STORE:-$LIERE_ROOT/mlflow-server}" && pwd)
uri_file=${MLFLOW_URI_FILE:-$LIERE_ROOT/runs/mlflow_server.uri}
uri=http://$host:$port

# bind every interface so the compute nodes reach it; --workers: concurrent requests from many ranks 0
"$PYTHON" -m mlflow server --backend-store-uri "sqlite:///$store/mlflow.db" --artifacts-destination "$store/artifacts" \
    --host 0.0.0.0 --port "$port" --workers "${MLFLOW_WORKERS:-4}" &
server=$!
# on exit (scancel, Ctrl-C, time limit) stop the server and withdraw the address
trap 'kill "$server" 2>/dev/null; rm -f "$uri_file"' EXIT
trap 'exit 0' TERM INT

for _ in $(seq 180); do
    if "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$uri" 2>/dev/null; then
        echo "[$(date -u +%FT%TZ)] MLflow tracking server up, store $store"
        echo "export MLFLOW_TRACKING_URI=$uri    # for the training jobs (also in $uri_file)"
        echo "UI: $uri  (from a laptop: ssh -L $port:$host:$port <login node>, then http://127.0.0.1:$port)"
        mkdir -p "$(dirname "$uri_file")"
        echo "$uri" >"$uri_file.tmp" && mv "$uri_file.tmp" "$uri_file"  # published last, whole: the "ready" signal
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then echo "error: the MLflow server exited; see above" >&2; exit 1; fi
    sleep 1
done
[[ -s $uri_file ]] || { echo "error: the MLflow server did not answer at $uri within 180 s" >&2; exit 1; }
wait "$server"
