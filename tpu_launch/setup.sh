#!/usr/bin/env bash
# Installs the project on every worker of the slice, identically: the repository at
# REPO_COMMIT, a virtual environment, `pip install -e '.[tpu]'` (jax[tpu] pulls libtpu).
# Safe to run again (after a new commit, or on a recreated slice). With TASKS_FILE set in
# the config (a module registering your corpora, e.g. my_tasks.py), that file is copied
# next to the repository on every worker, for --gin.MIXTURE_OR_TASK_MODULE="'my_tasks'".
#
#   tpu_launch/setup.sh --config tpu_launch/configs/v4-32.env [--dry-run]
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"
((${#ARGS[@]} == 0)) || die "setup.sh: unknown argument ${ARGS[0]}"

on_workers all "$(setup_script)"
copy_tasks_file
