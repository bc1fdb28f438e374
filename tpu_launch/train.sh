#!/usr/bin/env bash
# Runs `python -m prottrans_jax.train` on every worker of the slice (one JAX process per
# host; jax.distributed finds the others from the TPU metadata).
#
#   tpu_launch/train.sh --config tpu_launch/configs/v4-32.env \
#       [--gin_file=gin/...]... [--gin.KEY=VALUE]... [--gin_bindings='K = V']... \
#       [--resume-loop [--max-restarts=N]] [--detach] [--dry-run]
#
# The config's GIN_FILES come first, then MODEL_DIR (always the config's gs:// path, so
# every worker and every restart share it), then the flags given here (later ones win).
# Each worker logs to ~/prottrans-logs/train-<run id>.log (train.log points to the latest)
# and copies its log to MODEL_DIR/logs/<hostname>-<run id>.log when the trainer exits.
#
# Exit status 75 means "stopped early by SIGTERM, checkpoint saved": a maintenance event or
# a spot preemption notice. --resume-loop then waits for the slice (re-creating a preempted
# spot slice and installing again), restarts, and the trainer resumes from the latest
# checkpoint in MODEL_DIR; it gives up after --max-restarts (default 100) restarts.
# --detach starts the job in the background on the workers and returns (logs.sh follows it).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_common_args "$@"

RESUME_LOOP=0
DETACH=0
MAX_RESTARTS=100
TRAIN_FLAGS=()
for file in $GIN_FILES; do
  TRAIN_FLAGS+=("--gin_file=$file")
done
TRAIN_FLAGS+=("--gin.MODEL_DIR='$MODEL_DIR'")
for arg in "${ARGS[@]+"${ARGS[@]}"}"; do
  case "$arg" in
    --resume-loop) RESUME_LOOP=1 ;;
    --detach) DETACH=1 ;;
    --max-restarts=*) MAX_RESTARTS="${arg#--max-restarts=}" ;;
    --gin_file=* | --gin.*=* | --gin_bindings=* | --gin_search_paths=*) TRAIN_FLAGS+=("$arg") ;;
    *) die "train.sh: unknown argument $arg (gin flags are passed as --gin_file=F, --gin.K=V)" ;;
  esac
done
((RESUME_LOOP && DETACH)) && die "train.sh: --resume-loop watches the job; it cannot --detach"
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "--max-restarts needs a number"
((${#TRAIN_FLAGS[@]} > 1)) || die "train.sh: no gin file: set GIN_FILES in the config or pass --gin_file="

RUN_ID="${RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}"
[[ "$RUN_ID" =~ ^[A-Za-z0-9._-]+$ ]] || die "train.sh: RUN_ID '$RUN_ID' may hold only letters, digits and . _ -"
EXIT_PREEMPTED=75

# What each worker runs, as one line.
train_script() {
  local flags="" flag log="$REMOTE_LOGS/train-$RUN_ID.log"
  for flag in "${TRAIN_FLAGS[@]}"; do
    flags+=" $(printf '%q' "$flag")"
  done
  local steps=(
    "set -uo pipefail"
    "cd $REMOTE_REPO"
    "mkdir -p $REMOTE_LOGS"
    "ln -sf $log $REMOTE_LOGS/train.log"
    "$REMOTE_VENV/bin/python -m prottrans_jax.train$flags 2>&1 | tee $log"
    "status=\${PIPESTATUS[0]}"
    "gcloud storage cp --quiet $log $(printf '%q' "$MODEL_DIR")/logs/\$(hostname)-$RUN_ID.log || true"
    "if [ \$status -eq 0 ] && grep -q 'stop requested: checkpoint saved' $log; then status=$EXIT_PREEMPTED; fi"
    "exit \$status"
  )
  join_steps "${steps[@]}"
}

if ((DETACH)); then
  on_workers all "setsid nohup bash -c $(printf '%q' "$(train_script)") > /dev/null 2>&1 < /dev/null &"
  exit 0
fi

if ((!RESUME_LOOP)); then
  on_workers all "$(train_script)"
  exit 0
fi

# Brings a lost or preempted slice back: delete what is left, create, wait, install.
recover_slice() {
  local state="" ready=READY
  [[ "$PROVISIONING" == spot ]] && ready=ACTIVE
  if ((DRY_RUN)); then
    echo "# when the job exits $EXIT_PREEMPTED or the slice is gone: check the slice"
    if [[ "$PROVISIONING" == spot ]]; then
      queued_resource describe --format='value(state.state)'
    else
      tpu_vm describe --format='value(state)'
    fi
    echo "# if it is not $ready: delete, create, wait, install; then run the job again"
  else
    state="$(slice_state)"
    echo "$(date -u +%FT%TZ) $TPU_NAME is $state" >&2
    [[ "$state" == "$ready" ]] && return 0
  fi
  if [[ "$state" != NOT_FOUND ]] || ((DRY_RUN)); then
    delete_slice || true
  fi
  create_slice
  wait_for_slice
  on_workers all "$(setup_script)"
  copy_tasks_file
}

restarts=0
while true; do
  status=0
  on_workers all "$(train_script)" || status=$?
  if ((DRY_RUN)); then
    recover_slice
    exit 0
  fi
  if ((status == 0)); then
    echo "training finished (MODEL_DIR $MODEL_DIR)" >&2
    exit 0
  fi
  ((restarts < MAX_RESTARTS)) || die "giving up after $restarts restarts (last exit status $status)"
  restarts=$((restarts + 1))
  echo "$(date -u +%FT%TZ) job exited $status: restart $restarts of $MAX_RESTARTS" >&2
  sleep "${RESTART_DELAY_S:-30}"  # let a preemption reach the slice's state first
  recover_slice
done
