#!/usr/bin/env bash
# The training log of one worker or of all of them (each worker keeps its own).
#
#   tpu_launch/logs.sh --config C [--worker=0|N|all] [--lines=100] [--follow] [--dry-run]
#
# Finished runs' logs are also in MODEL_DIR/logs/ (gcloud storage ls MODEL_DIR/logs/).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"

WORKER=0
LINES=100
FOLLOW=""
for arg in "${ARGS[@]+"${ARGS[@]}"}"; do
  case "$arg" in
    --worker=*) WORKER="${arg#--worker=}" ;;
    --lines=*) LINES="${arg#--lines=}" ;;
    --follow) FOLLOW=" -F" ;;
    *) die "logs.sh: unknown argument $arg" ;;
  esac
done
[[ "$LINES" =~ ^[0-9]+$ ]] || die "--lines needs a number"

on_workers "$WORKER" "tail -n $LINES$FOLLOW $REMOTE_LOGS/train.log"
