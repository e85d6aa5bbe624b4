#!/usr/bin/env bash
# The head's start (head_start_ray_commands): Ray's head from the project's environment (start_ray.sh),
# then the MLflow tracking server the launcher logs to (start_mlflow.sh, which says where it listens
# and keeps its data). A repeated `ray up` restarts both.
#
#   MLFLOW_ARTIFACTS_DESTINATION=URI start_head.sh ray start --head [OPTION...]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${MLFLOW_ARTIFACTS_DESTINATION:?set it to s3://BUCKET/PREFIX or a folder on the shared storage}"
"$here/start_ray.sh" "$@"
"$here/start_mlflow.sh"
