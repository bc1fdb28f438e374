#!/usr/bin/env bash
# Deletes the TPU slice of a deployment (MODEL_DIR and the bucket are left alone).
#
#   tpu_launch/delete.sh --config tpu_launch/configs/v4-32.env [--dry-run]
#
# A spot slice is deleted through its queued resource (--force deletes its TPU VM first).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"
((${#ARGS[@]} == 0)) || die "delete.sh: unknown argument ${ARGS[0]}"

delete_slice
