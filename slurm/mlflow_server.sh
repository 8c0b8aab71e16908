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
# and an artifact folder); the same store serves the UI at that address.
#
# Closed by default: it listens on this node's address only (the one its name resolves to, not
# 0.0.0.0), and every request needs a user and password (MLflow's basic-auth app, which needs the
# `mlflow[auth]` extra: Flask-WTF). The first start writes MLFLOW_CREDENTIALS (user "admin", a random
# password; mode 0600, yours alone) and creates that admin in the store's basic_auth.db. The job log
# says where the file is, never the password (job logs are often readable by others). slurm/site.sh
# hands both to the training jobs that track to this server; in a browser, log in with them.
# MLFLOW_AUTH=none serves without authentication (anyone who reaches the port can read and change
# every run); MLFLOW_BIND=0.0.0.0 listens on every interface. Settings:
#   MLFLOW_PORT (5000), MLFLOW_STORE ($LIERE_ROOT/mlflow-server), MLFLOW_WORKERS (4),
#   MLFLOW_HOST (the address the jobs use; default: this node's name), MLFLOW_URI_FILE,
#   MLFLOW_BIND (the address listened on; default: MLFLOW_HOST's), MLFLOW_AUTH (basic | none),
#   MLFLOW_CREDENTIALS ($LIERE_ROOT/runs/mlflow_credentials).
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

log() { echo "[$(date -u +%FT%TZ)] $*"; }
die() { echo "error: $*" >&2; exit 2; }

port=${MLFLOW_PORT:-5000}
host=${MLFLOW_HOST:-$(hostname -f 2>/dev/null || hostname)}
store=${MLFLOW_STORE:-$LIERE_ROOT/mlflow-server}
[[ -d $store ]] || (umask 077 && mkdir -p "$store")  # the runs, and the users' password hashes: yours alone
store=$(cd "$store" && pwd)
uri_file=${MLFLOW_URI_FILE:-$LIERE_ROOT/runs/mlflow_server.uri}
uri=http://$host:$port

# Listen on the address the jobs use (its name resolved), not on every interface.
bind=${MLFLOW_BIND:-$(getent ahostsv4 "$host" 2>/dev/null | awk '{print $1; exit}')}
[[ -n $bind ]] || die "cannot resolve $host to an address: set MLFLOW_HOST or MLFLOW_BIND"
if [[ $bind == 127.* && $host != 127.* && $host != localhost ]]; then
    log "warning: $host resolves to $bind (loopback): other nodes cannot reach it; set MLFLOW_BIND to this node's address"
fi
# The Host headers it answers (MLflow refuses others, against DNS rebinding; its default admits IP
# addresses only): the name the jobs use, the bound address, and loopback for an ssh tunnel.
export MLFLOW_SERVER_ALLOWED_HOSTS=${MLFLOW_SERVER_ALLOWED_HOSTS:-$host,$host:$port,$bind,$bind:$port,localhost,localhost:*,127.0.0.1,127.0.0.1:*}

# MLflow's basic-auth app: the credentials file (created on first start), the app's settings with its
# user store beside the runs (the admin is created on first start), a fixed CSRF key for all workers.
basic_auth() {
    "$PYTHON" -c "import flask_wtf" 2>/dev/null ||
        die "MLflow's basic-auth app needs Flask-WTF: $PYTHON -m pip install 'mlflow[auth]' (or MLFLOW_AUTH=none: no authentication)"
    creds=$MLFLOW_CREDENTIALS  # from slurm/site.sh: $LIERE_ROOT/runs/mlflow_credentials unless set
    mkdir -p "$(dirname "$creds")"
    if [[ ! -e $creds ]]; then
        local password
        password=$("$PYTHON" -c "import secrets; print(secrets.token_urlsafe(24))")
        (umask 077 && printf 'MLFLOW_TRACKING_USERNAME=admin\nMLFLOW_TRACKING_PASSWORD=%s\n' "$password" >"$creds")
        log "new credentials for the MLflow server (user admin, a random password) in $creds"
    fi
    [[ -O $creds ]] || die "$creds is not yours, and it holds the server's password"
    [[ $(stat -c %a "$creds") =~ ^[46]00$ ]] || die "$creds can be read by others: chmod 600 $creds"
    liere_mlflow_credentials "$creds"  # slurm/site.sh: mlflow_user, mlflow_password
    [[ -n $mlflow_user && -n $mlflow_password ]] ||
        die "$creds lacks MLFLOW_TRACKING_USERNAME or MLFLOW_TRACKING_PASSWORD"
    # the address goes with them: slurm/site.sh hands them only to jobs that track to this server
    (umask 077 && printf 'MLFLOW_TRACKING_USERNAME=%s\nMLFLOW_TRACKING_PASSWORD=%s\nMLFLOW_TRACKING_URI=%s\n' \
        "$mlflow_user" "$mlflow_password" "$uri" >"$creds.tmp") && mv "$creds.tmp" "$creds"
    (umask 077 && printf '%s\n' "[mlflow]" "default_permission = READ" \
        "database_uri = sqlite:///$store/basic_auth.db" "admin_username = $mlflow_user" \
        "admin_password = $mlflow_password" \
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" >"$store/basic_auth.ini")
    if [[ ! -s $store/flask_secret_key ]]; then
        (umask 077 && "$PYTHON" -c "import secrets; print(secrets.token_hex(32))" >"$store/flask_secret_key")
    fi
    export MLFLOW_AUTH_CONFIG_PATH=$store/basic_auth.ini
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(<"$store/flask_secret_key")
    export MLFLOW_FLASK_SERVER_SECRET_KEY
    export MLFLOW_TRACKING_USERNAME=$mlflow_user MLFLOW_TRACKING_PASSWORD=$mlflow_password  # the check below
}

auth=${MLFLOW_AUTH:-basic}
app=()
case $auth in
    basic) basic_auth; app=(--app-name basic-auth) ;;
    none) log "warning: MLFLOW_AUTH=none: no authentication, anyone who reaches $bind:$port can read and change every run" ;;
    *) die "MLFLOW_AUTH=$auth: basic (the default) or none" ;;
esac

# --workers: concurrent requests from many ranks 0
"$PYTHON" -m mlflow server "${app[@]}" --backend-store-uri "sqlite:///$store/mlflow.db" \
    --artifacts-destination "$store/artifacts" --host "$bind" --port "$port" --workers "${MLFLOW_WORKERS:-4}" &
server=$!
# on exit (scancel, Ctrl-C, time limit) stop the server and withdraw the address
trap 'kill "$server" 2>/dev/null; rm -f "$uri_file"' EXIT
trap 'exit 0' TERM INT

# an authenticated request succeeds (a user store made with other credentials refuses them)
authenticated() {
    "$PYTHON" -c "import sys; from mlflow.tracking import MlflowClient; MlflowClient(sys.argv[1]).search_experiments(max_results=1)" \
        "$uri" >/dev/null 2>&1
}

for _ in $(seq 180); do
    if "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$uri" 2>/dev/null; then
        if [[ $auth == basic ]] && ! authenticated; then
            die "the server refuses the credentials in $creds: its user store $store/basic_auth.db was made with others (restore the file, or remove basic_auth.db to create the admin afresh; the runs stay)"
        fi
        log "MLflow tracking server up on $bind:$port, store $store"
        echo "export MLFLOW_TRACKING_URI=$uri    # for the training jobs (also in $uri_file)"
        if [[ $auth == basic ]]; then
            echo "authentication: on (MLflow basic-auth); user $mlflow_user, password in $creds (mode 0600; slurm/site.sh gives both to the jobs)"
        fi
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
