#!/usr/bin/env bash
# Opens a shell on a worker, or runs a command on one or all workers.
#
#   tpu_launch/ssh.sh --config C                       # interactive shell on worker 0
#   tpu_launch/ssh.sh --config C --worker=3
#   tpu_launch/ssh.sh --config C --worker=all -- 'nvidia-smi || true; df -h ~'
#   tpu_launch/ssh.sh --config C --dry-run ...
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"

WORKER=0
COMMAND=""
rest=("${ARGS[@]+"${ARGS[@]}"}")
while ((${#rest[@]})); do
  case "${rest[0]}" in
    --worker=*) WORKER="${rest[0]#--worker=}"; rest=("${rest[@]:1}") ;;
    --) COMMAND="${rest[*]:1}"; rest=() ;;
    *) die "ssh.sh: unknown argument ${rest[0]} (put a command after --)" ;;
  esac
done

if [[ -n "$COMMAND" ]]; then
  on_workers "$WORKER" "$COMMAND"
else
  [[ "$WORKER" != all ]] || die "ssh.sh: an interactive shell needs one worker, not all"
  tpu_vm ssh --worker="$WORKER"
fi
