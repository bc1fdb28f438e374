#!/usr/bin/env bash
# Creates the TPU slice of a deployment and waits until it is ready.
#
#   tpu_launch/create.sh --config tpu_launch/configs/v4-32.env [--no-wait] [--dry-run]
#
# PROVISIONING=spot asks for a queued resource with --spot (capacity may take a while; the
# slice can be preempted at any time: see train.sh --resume-loop); reserved and on-demand
# create the TPU VM directly (reserved uses the project's reservation).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"

WAIT=1
for arg in "${ARGS[@]+"${ARGS[@]}"}"; do
  case "$arg" in
    --no-wait) WAIT=0 ;;
    *) die "create.sh: unknown argument $arg" ;;
  esac
done

create_slice
if ((WAIT)); then
  wait_for_slice
fi
