#!/usr/bin/env bash
# Waits until process PID has exited, then runs COMMAND: how this machine's extras end with its Ray.
# `ray down` runs `ray stop` on the head and nothing on the workers (Ray's cloud and local providers
# alike; a local-provider worker is only marked terminated). So start_head.sh stops the MLflow server
# once the head's GCS is gone, and start_ray.sh runs `ray stop` on a machine once its raylet is gone: a
# worker's raylet exits by itself when it has lost the head (Ray's gcs_rpc_server_reconnect_timeout_s,
# 60 s by default), but its dashboard agent, runtime-env agent and log monitor stay behind.
#
#   on_exit.sh PID COMMAND...
set -uo pipefail

pid=${1:?usage: on_exit.sh PID COMMAND...}
shift
while kill -0 "$pid" 2>/dev/null; do
    sleep 2
done
exec "$@"
