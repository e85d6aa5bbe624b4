#!/usr/bin/env bash
# Starts Ray on this machine from the project's environment (worker_start_ray_commands; the head's
# start_head.sh calls it too), so every Ray worker process imports the project's trainables with the
# same packages as the driver. Whatever an earlier `ray up` started here is stopped first; once this
# raylet has exited (`ray stop`, or a worker that lost its head), on_exit.sh runs `ray stop` here, so
# that no part of this node outlives it.
#
#   start_ray.sh ray start [OPTION...]
#
# The arguments are the `ray start` command as the cluster file gives it; Ray's `ray up` reads the
# head's start command for `ray start` and `--autoscaling-config`. GENSEARCH_RAY_START_ARGS in the
# machine's environment adds options for this machine only (they come last, so they win), e.g.
# `--num-gpus=1` to hide a second GPU, or other ports where the defaults are taken.
set -euo pipefail

if [ "${1:-} ${2:-}" != "ray start" ]; then
    echo "usage: start_ray.sh ray start [OPTION...]" >&2
    exit 2
fi
shift 2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The environment's interpreter, not its `ray` script: a script's #! line names the interpreter the
# environment was created with, so a copied or relocated environment would run another one.
ray_cli=("$HOME/gensearch/.venv/bin/python" -m ray.scripts.scripts)
watcher=~/.gensearch_ray_watcher.pid

# The watcher of an earlier start first, or it would stop the Ray started below.
if [ -f "$watcher" ]; then
    kill "$(cat "$watcher")" 2>/dev/null || true
    rm -f "$watcher"
fi
"${ray_cli[@]}" stop
ulimit -n 65536 2>/dev/null || true   # Ray opens many sockets; the login limit may forbid raising it
# shellcheck disable=SC2086  # GENSEARCH_RAY_START_ARGS is a list of options
"${ray_cli[@]}" start --disable-usage-stats "$@" ${GENSEARCH_RAY_START_ARGS:-}

raylet=$(pgrep -n -u "$(id -u)" -x raylet)   # this node's, just started
setsid nohup "$here/on_exit.sh" "$raylet" "${ray_cli[@]}" stop > ~/gensearch_ray_watcher.log 2>&1 < /dev/null &
echo $! > "$watcher"
