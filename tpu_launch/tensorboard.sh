#!/usr/bin/env bash
# TensorBoard for MODEL_DIR, served on worker 0 on its loopback interface and reached
# through an SSH tunnel: open http://localhost:6006 here. No port is opened to the network.
#
#   tpu_launch/tensorboard.sh --config tpu_launch/configs/v4-32.env [--port=6006] [--dry-run]
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"

LOCAL_PORT="$TENSORBOARD_PORT"
for arg in "${ARGS[@]+"${ARGS[@]}"}"; do
  case "$arg" in
    --port=*) LOCAL_PORT="${arg#--port=}" ;;
    *) die "tensorboard.sh: unknown argument $arg" ;;
  esac
done

for port in "$LOCAL_PORT" "$TENSORBOARD_PORT"; do
  [[ "$port" =~ ^[0-9]+$ ]] || die "tensorboard.sh: a port must be a number, not '$port'"
done
echo "TensorBoard for $MODEL_DIR: http://localhost:$LOCAL_PORT (Ctrl-C to stop)" >&2
tpu_vm ssh --worker=0 \
  --command="$REMOTE_VENV/bin/tensorboard --logdir=$(printf '%q' "$MODEL_DIR") --host=127.0.0.1 --port=$TENSORBOARD_PORT" \
  -- -o ExitOnForwardFailure=yes -L "127.0.0.1:$LOCAL_PORT:127.0.0.1:$TENSORBOARD_PORT"
