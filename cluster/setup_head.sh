#!/usr/bin/env bash
# The head's own preparation (head_setup_commands), after setup_node.sh: the study folders on the
# shared storage, and the datasets in them, downloaded once by gensearch's own fetcher (MD5-checked;
# files already there are kept). Set GENSEARCH_DATA_MIRROR=URL in the head's environment to fetch
# from an internal mirror laid out as URL/<Folder>/raw/<file>.
#
#   setup_head.sh SHARED [DATASET...]      datasets: mnist, fashion_mnist, kmnist (default: all three)
#
# A study then reads them with --data-root SHARED/data. A dataset left out here is downloaded by the
# launcher into GENSEARCH_CACHE the first time a study reads it.
set -euo pipefail

shared=${1:?usage: setup_head.sh SHARED [DATASET...]}
shift
mkdir -p "$shared/data" "$shared/cache" "$shared/runs"
cd ~/gensearch
.venv/bin/python -m orchestrator.data fetch "$@" --to "$shared/data"
