"""The test suite's GPU-only tests (cuDNN attention and the Pallas kernel compiled by
Triton equal `xla`, output and bias gradient), run where they can run: on the accelerator
machine, whose image has pytest and JAX but neither seqio nor TensorFlow
(benchmarks/import_stand_ins.py stands in for them, as for the accelerator suite). CI never
has a GPU, so there these tests only ever skip.

    python benchmarks/gpu_tests.py [--junitxml $OUT/gpu_tests.xml] [more pytest flags]

Exit status: pytest's (0: all selected tests passed; 5: none collected). On a CPU they are
collected and skipped, which `tests/test_accelerator_suite.py` checks.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path[:0] = [str(REPO), str(BENCHMARKS)]

import import_stand_ins  # noqa: E402

GPU_TESTS = ("tests/models/test_dot_product_attention.py", "tests/models/test_relative_scores.py",
             "tests/models/test_pallas_attention.py")
SELECT = "cudnn_equals_xla or compiled_on_gpu"  # the tests marked to skip without a CUDA GPU


def main(argv: list[str] | None = None) -> int:
    import_stand_ins.install()
    import pytest

    args = ["-q", "-p", "no:cacheprovider", "-rs", "-k", SELECT, "--rootdir", str(REPO),
            *(str(REPO / path) for path in GPU_TESTS), *(sys.argv[1:] if argv is None else argv)]
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main())
