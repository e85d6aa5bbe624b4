#!/usr/bin/env bash
# The MLflow tracking server on the head, for as long as the head's Ray runs. start_head.sh runs it
# after Ray's head; run it alone to restart a server that died (the head's Ray must be running):
#
#   MLFLOW_ARTIFACTS_DESTINATION=URI start_mlflow.sh
#
# It listens on the address Ray uses for this node (the head's private or LAN address, never 0.0.0.0),
# port MLFLOW_PORT (default 5000). Runs and the model registry are in SQLite on the head's disk
# (~/mlflow/mlflow.db); artifacts go through the server (--serve-artifacts) to MLFLOW_ARTIFACTS_DESTINATION
# (s3://BUCKET/PREFIX, or a folder on the shared storage), so no client needs storage credentials.
# --allowed-hosts (MLflow's DNS-rebinding guard, checked against the Host header) admits the driver's
# http://HEAD_IP:PORT and an SSH tunnel's http://localhost:ANY. The server's URI goes to
# ~/mlflow_tracking_uri, where the launch command reads it; its log to ~/mlflow/server.log.
#
# `ray down` runs `ray stop` on the head; on_exit.sh then stops the server (its process group, uvicorn
# workers included) once the head's GCS is gone.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${MLFLOW_ARTIFACTS_DESTINATION:?set it to s3://BUCKET/PREFIX or a folder on the shared storage}"
port=${MLFLOW_PORT:-5000}
python=$HOME/gensearch/.venv/bin/python
mkdir -p ~/mlflow

# The server started earlier (its process group), before its port is needed again.
if [ -f ~/mlflow/server.pid ]; then
    group=$(cat ~/mlflow/server.pid)
    kill -TERM -- "-$group" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 -- "-$group" 2>/dev/null || break; sleep 0.2; done
    rm -f ~/mlflow/server.pid
fi

head_ip=$("$python" -c 'import ray.util; print(ray.util.get_node_ip_address())')
if ! gcs_pid=$(pgrep -n -u "$(id -u)" -x gcs_server); then
    echo "Ray's head is not running on this machine: start it first (start_head.sh)" >&2
    exit 1
fi
uri="http://$head_ip:$port"
# setsid: the server's own process group (its pid is the group's id), and no SIGHUP when Ray's SSH
# session ends.
setsid nohup "$python" -m mlflow server --host "$head_ip" --port "$port" \
    --backend-store-uri "sqlite:///$HOME/mlflow/mlflow.db" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts \
    --allowed-hosts "$head_ip:$port,localhost:*,127.0.0.1:*" \
    > ~/mlflow/server.log 2>&1 < /dev/null &
server=$!
echo "$server" > ~/mlflow/server.pid
setsid nohup "$here/on_exit.sh" "$gcs_pid" kill -TERM -- "-$server" > /dev/null 2>&1 < /dev/null &

answers() {
    "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$uri/health" 2>/dev/null
}
for _ in $(seq 180); do
    if answers; then
        echo "$uri" > ~/mlflow_tracking_uri
        echo "MLflow tracking server: $uri (log: ~/mlflow/server.log)"
        exit 0
    fi
    if ! kill -0 "$server" 2>/dev/null; then break; fi
    sleep 1
done
echo "MLflow did not answer at $uri/health; the end of ~/mlflow/server.log:" >&2
tail -n 30 ~/mlflow/server.log >&2
exit 1
