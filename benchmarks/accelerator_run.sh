#!/usr/bin/env bash
# The accelerator run on the GPU machine (README, "Accelerator run"): installs the carried
# wheels of .whl/ (gin-config, which the GPU image lacks, and the pinned transformers) into
# /tmp/site, runs the suite's GPU-only tests (benchmarks/gpu_tests.py: cuDNN and Pallas
# attention equal xla; at most 150 s, their report beside the JSON), then the accelerator
# suite in the time left of its 440 s.
#   bash benchmarks/accelerator_run.sh OUT.json [suite flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash benchmarks/accelerator_run.sh OUT.json [suite flags...]}"
shift
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
mkdir -p "$(dirname "$out")"
report="${out%.json}_gpu_tests"
start=$SECONDS
status=0
timeout 150 python3 benchmarks/gpu_tests.py --junitxml "$report.xml" >"$report.txt" 2>&1 || status=$?
echo "gpu_tests: exit $status in $((SECONDS - start)) s (report: $report.txt)"
tail -n 5 "$report.txt" || true
budget=$((440 - (SECONDS - start)))
exec python3 benchmarks/accelerator_suite.py --out "$out" --budget_s "$budget" "$@"
