#!/usr/bin/env bash
# Waits until process PID has exited, then runs COMMAND: how this machine's extras end with its Ray.
# `ray down` runs `ray stop` on the head only; a cloud provider then stops the worker instances, but
# Ray's local provider only marks a worker terminated. So start_mlflow.sh stops the MLflow server once
# the head's GCS is gone, and start_ray.sh runs `ray stop` on a machine once its raylet is gone: a
# worker's raylet exits by itself when it has lost the head (Ray's gcs_rpc_server_reconnect_timeout_s,
# 60 s by default), but its dashboard agent, runtime-env agent and log monitor stay behind (seen in
# tests/cluster/test_ray_up.py).
#
#   on_exit.sh PID COMMAND...
set -uo pipefail

pid=${1:?usage: on_exit.sh PID COMMAND...}
shift
while kill -0 "$pid" 2>/dev/null; do
    sleep 2
done
exec "$@"
