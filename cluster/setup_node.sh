#!/usr/bin/env bash
# Prepares one machine of a gensearch Ray cluster: `ray up` runs it on the head and on every worker
# (setup_commands in cluster/gpu.yaml and cluster/local.yaml), after copying this repository to
# ~/gensearch. Every step checks before it acts, so a repeated `ray up` after a code change only
# re-installs the project.
#
#   setup_node.sh SHARED [NFS_SOURCE [MOUNT_OPTIONS]]
#
#   SHARED         the folder every machine sees at the same path: the study's --output (Ray Tune writes
#                  checkpoints there from the workers and the driver on the head reads them back),
#                  the datasets and the caches
#   NFS_SOURCE     what to mount there (`host:/export`, or an EFS file system `fs-….efs.REGION.amazonaws.com:/`);
#                  empty when SHARED is already shared (fstab, autofs) or there is one machine
#   MOUNT_OPTIONS  `mount -o` options for it
#
# Installs come from package registries only: apt (nfs-common, and Python 3.11 where the system
# Python is older) and PyPI (the project and its pinned dependencies, through pip).
set -euo pipefail

usage="usage: setup_node.sh SHARED [NFS_SOURCE [MOUNT_OPTIONS]]"
shared=${1:?$usage}
nfs_source=${2:-}
mount_options=${3:-}
project=$HOME/gensearch   # where `ray up` copies the repository (file_mounts)
venv=$project/.venv       # .gitignore'd, so a repeated `ray up` copies the code around it

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# 1. Shared storage, mounted at the same path on every machine.
if [ -n "$nfs_source" ]; then
    command -v mount.nfs4 >/dev/null || apt_install nfs-common
    as_root mkdir -p "$shared"
    mountpoint -q "$shared" || as_root mount -t nfs4 ${mount_options:+-o "$mount_options"} "$nfs_source" "$shared"
fi
[ -d "$shared" ] || as_root mkdir -p "$shared"
[ -w "$shared" ] || as_root chown "$(id -un):$(id -gn)" "$shared"

# 2. A virtual environment on Python >= 3.11 (pyproject.toml's requires-python). Ubuntu 22.04 ships
#    3.10: its python3.11 package comes from apt; Ubuntu packages venv support separately.
python_3_11() {
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}
if [ ! -x "$venv/bin/python" ]; then
    python=$(python_3_11) || { apt_install python3.11 python3.11-venv; python=python3.11; }
    "$python" -m venv "$venv" 2>/dev/null || { apt_install "$python-venv"; "$python" -m venv "$venv"; }
fi

# 3. The project at the versions pyproject.toml pins (torch, torchvision, Ray 2.60, MLflow 3.17), with
#    its `cluster` extra: Ray's dashboard and job server (`ray job submit`), boto3 for the AWS
#    autoscaler and MLflow's S3 artifacts. A no-op for what is already installed.
"$venv/bin/python" -m pip install -q -e "$project[cluster]"

# 4. The environment first on PATH in the shells Ray opens on this machine, so that the `ray stop`
#    that `ray down` runs, and `ray exec ... 'ray status'`, find this environment's Ray.
path_line='export PATH="$HOME/gensearch/.venv/bin:$PATH"'
grep -qxF "$path_line" ~/.bashrc 2>/dev/null || echo "$path_line" >> ~/.bashrc
