#!/usr/bin/env bash
# The accelerator run on the GPU machine (README, "Accelerator run"): installs the carried
# wheels of .whl/ (gin-config: the GPU image lacks it) into /tmp/site, then runs the suite.
#   bash benchmarks/accelerator_run.sh "$OUT/accelerator.json" [suite flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash benchmarks/accelerator_run.sh OUT.json [suite flags...]}"
shift
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec python3 benchmarks/accelerator_suite.py --out "$out" "$@"
