#!/usr/bin/env bash
# Shared helpers for the tpu_launch scripts; sourced, never run.
#
# Every script takes `--config configs/NAME.env` (one file per deployment) and `--dry-run`
# (print each gcloud command, one per line, instead of running it). Printed commands are
# shell-quoted, so they can be copied and pasted as they are.

# Directory of the scripts, for finding configs relative to it.
TPU_LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DRY_RUN=0
CONFIG=""
ARGS=()   # what is left after --config and --dry-run, for the calling script

# On the TPU workers: where the repository, its virtual environment and the logs live.
# The tildes are expanded by the worker's shell, in the commands sent there.
# shellcheck disable=SC2088,SC2034
REMOTE_REPO='~/prottrans-jax' REMOTE_VENV='~/prottrans-venv' REMOTE_LOGS='~/prottrans-logs'

die() {
  echo "error: $*" >&2
  exit 1
}

# Parses --config FILE / --config=FILE and --dry-run; everything else goes to ARGS.
parse_common_args() {
  while (($#)); do
    case "$1" in
      --config) (($# >= 2)) || die "--config needs a file"; CONFIG="$2"; shift 2 ;;
      --config=*) CONFIG="${1#--config=}"; shift ;;
      --dry-run) DRY_RUN=1; shift ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
  [[ -n "$CONFIG" ]] || die "give --config tpu_launch/configs/NAME.env"
  load_config "$CONFIG"
}

# Reads a deployment file and checks it; a path is tried as given, then under configs/.
load_config() {
  local file="$1"
  [[ -f "$file" ]] || file="$TPU_LAUNCH_DIR/configs/$1"
  [[ -f "$file" ]] || die "config file not found: $1"
  # shellcheck source=/dev/null
  source "$file"
  local name
  for name in PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION PROVISIONING BUCKET \
              MODEL_DIR REPO_URL REPO_COMMIT; do
    [[ -n "${!name:-}" ]] || die "$file: $name is not set"
  done
  case "$PROVISIONING" in
    spot | reserved | on-demand) ;;
    *) die "$file: PROVISIONING must be spot, reserved or on-demand, not '$PROVISIONING'" ;;
  esac
  [[ "$BUCKET" == gs://* ]] || die "$file: BUCKET must be a gs:// URL"
  [[ "$MODEL_DIR" == gs://* ]] || die "$file: MODEL_DIR must be a gs:// URL (workers share it)"
  # They end up in the command line every worker runs: plain path characters only.
  local url
  for url in BUCKET MODEL_DIR; do
    [[ "${!url}" =~ ^gs://[A-Za-z0-9._/-]+$ ]] ||
      die "$file: $url '${!url}' may hold only letters, digits and . _ / - after gs://"
  done
  QUEUED_RESOURCE="${QUEUED_RESOURCE:-${TPU_NAME}-qr}"
  GIN_FILES="${GIN_FILES:-}"
  # The pinned dependencies (numpy 2.4, jax 0.10) need Python >= 3.11; TPU VM images run
  # Ubuntu 22.04, whose python3 is 3.10, so setup.sh installs 3.11 from apt.
  PYTHON="${PYTHON:-python3.11}"
  APT_PACKAGES="${APT_PACKAGES:-git python3.11 python3.11-venv}"
  TENSORBOARD_PORT="${TENSORBOARD_PORT:-6006}"
  TASKS_FILE="${TASKS_FILE:-}"
  if [[ -n "$TASKS_FILE" && ! -f "$TASKS_FILE" ]]; then
    die "$file: TASKS_FILE $TASKS_FILE does not exist"
  fi
}

# Prints one argument shell-quoted: bare when it is plainly safe, else in single quotes
# (after the `--flag=` part, for readability).
quote_arg() {
  local arg="$1" prefix=""
  if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$arg"
    return 0
  fi
  if [[ "$arg" =~ ^(--[A-Za-z0-9_-]+=)(.*)$ ]]; then
    prefix="${BASH_REMATCH[1]}"
    arg="${BASH_REMATCH[2]}"
  fi
  printf "%s'%s'" "$prefix" "${arg//\'/\'\\\'\'}"
}

# Runs a command, or with --dry-run prints it (quoted, on one line) and returns 0.
run() {
  if ((DRY_RUN)); then
    local first=1 arg
    for arg in "$@"; do
      ((first)) || printf ' '
      quote_arg "$arg"
      first=0
    done
    printf '\n'
    return 0
  fi
  "$@"
}

# gcloud's TPU VM commands with the deployment's project and zone.
tpu_vm() {
  local verb="$1"
  shift
  run gcloud compute tpus tpu-vm "$verb" "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" "$@"
}

queued_resource() {
  local verb="$1"
  shift
  run gcloud compute tpus queued-resources "$verb" "$QUEUED_RESOURCE" \
    --project="$PROJECT" --zone="$ZONE" "$@"
}

# Runs a bash script on the given workers ("all" or an index) through gcloud ssh.
on_workers() {
  local worker="$1" script="$2"
  tpu_vm ssh --worker="$worker" --command="$script"
}

# State of the slice: ACTIVE / WAITING_FOR_RESOURCES / SUSPENDED ... for a queued resource,
# READY / PREEMPTED ... for a plain TPU VM, NOT_FOUND when it does not exist.
slice_state() {
  local state
  if [[ "$PROVISIONING" == spot ]]; then
    state="$(gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" \
      --project="$PROJECT" --zone="$ZONE" --format='value(state.state)' 2>/dev/null)" || state=""
  else
    state="$(gcloud compute tpus tpu-vm describe "$TPU_NAME" \
      --project="$PROJECT" --zone="$ZONE" --format='value(state)' 2>/dev/null)" || state=""
  fi
  echo "${state:-NOT_FOUND}"
}

# Waits until the slice can run jobs (a spot queued resource can wait hours for capacity).
wait_for_slice() {
  local ready state
  if [[ "$PROVISIONING" == spot ]]; then ready=ACTIVE; else ready=READY; fi
  if ((DRY_RUN)); then
    echo "# poll every 60 s until the state is $ready:"
    if [[ "$PROVISIONING" == spot ]]; then
      queued_resource describe --format='value(state.state)'
    else
      tpu_vm describe --format='value(state)'
    fi
    return 0
  fi
  while true; do
    state="$(slice_state)"
    echo "$(date -u +%FT%TZ) $TPU_NAME: $state" >&2
    case "$state" in
      "$ready") return 0 ;;
      FAILED | SUSPENDED | PREEMPTED | TERMINATED | NOT_FOUND)
        die "$TPU_NAME is $state: delete it (delete.sh) and create it again" ;;
    esac
    sleep 60
  done
}

create_slice() {
  case "$PROVISIONING" in
    spot)
      queued_resource create --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
        --runtime-version="$RUNTIME_VERSION" --spot ;;
    reserved)
      tpu_vm create --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" --reserved ;;
    on-demand)
      tpu_vm create --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" ;;
  esac
}

delete_slice() {
  if [[ "$PROVISIONING" == spot ]]; then
    queued_resource delete --force --quiet  # --force: delete its TPU VM too
  else
    tpu_vm delete --quiet
  fi
}

# The install every worker runs (one line: it travels as gcloud's --command): the repository
# at REPO_COMMIT, a virtual environment with `pip install -e '.[tpu]'`, then a check line.
setup_script() {
  local steps=(
    "set -euo pipefail"
    "if ! command -v git > /dev/null || ! $PYTHON -c 'import ensurepip' 2> /dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES; fi"
    "if [ ! -d $REMOTE_REPO/.git ]; then git clone --quiet $(printf '%q' "$REPO_URL") $REMOTE_REPO; fi"
    "cd $REMOTE_REPO"
    "git fetch --quiet origin"
    "git checkout --quiet --detach $(printf '%q' "$REPO_COMMIT")"
    "if [ ! -x $REMOTE_VENV/bin/python ]; then $PYTHON -m venv $REMOTE_VENV; fi"
    "$REMOTE_VENV/bin/pip install --quiet --upgrade pip"
    "$REMOTE_VENV/bin/pip install --quiet -e '.[tpu]'"
    "echo \"\$(hostname): commit \$(git rev-parse --short HEAD), jax \$($REMOTE_VENV/bin/python -c 'import jax; print(jax.__version__)')\""
  )
  join_steps "${steps[@]}"
}

# Copies the config's TASKS_FILE (corpus registrations) into the repository on every worker.
copy_tasks_file() {
  [[ -n "$TASKS_FILE" ]] || return 0
  run gcloud compute tpus tpu-vm scp "$TASKS_FILE" "$TPU_NAME:$REMOTE_REPO/" \
    --project="$PROJECT" --zone="$ZONE" --worker=all
}

join_steps() {
  local out="$1"
  shift
  local step
  for step in "$@"; do
    out+="; $step"
  done
  printf '%s' "$out"
}
