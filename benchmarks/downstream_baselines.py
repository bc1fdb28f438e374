"""One-hot and UniRep baselines on the paper's benchmarks; prints one JSON object.

  python benchmarks/downstream_baselines.py --data_dir ../shared/data \
      --output runs/downstream_baselines [--reuse] [--configs onehot_ss,unirep64_loc,...]

Each configuration runs `python -m prottrans_jax.downstream.evaluate` (same heads, same
protocol) and the table collects its report.json. The defaults fit a 2-core CPU: UniRep
secondary structure trains on a random subset of the NetSurfP-2.0 training set (`max_train`),
UniRep-1900 runs only the CB513 cross-validation (5 folds), and UniRep localisation skips
SCL2205, because the 1900-unit mLSTM embeds ~300-1,300 residues/s on 2 free cores (84/s on a
shared, overloaded one). The unirep256 configs exist but were not part of the recorded run.
Every subset is stated in the output. `--reuse` keeps reports already in the output folder.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import timing  # noqa: E402
from prottrans_jax.downstream import evaluate  # noqa: E402

# name -> evaluate flags (besides --data_dir/--report/--cache_dir).
SECONDARY_STRUCTURE = [
    "--benchmark",
    "secondary_structure",
    "--max_epochs",
    "10",
    "--patience",
    "2",
]
LOCALISATION = ["--benchmark", "localisation"]
CONFIGS = {
    "onehot_ss": SECONDARY_STRUCTURE + ["--features", "onehot"],
    "onehot_loc": LOCALISATION + ["--features", "onehot"],
    # UniRep on 2 CPU cores: secondary structure on a random 1,500 of the 9,712 training chains,
    # DeepLoc only (SCL2205 reuses DeepLoc ids with other sequences: one feature cache each).
    **{
        f"unirep{size}_ss": SECONDARY_STRUCTURE
        + ["--features", f"unirep{size}", "--max_train", "1500"]
        for size in (64, 256)
    },
    **{
        f"unirep{size}_loc": LOCALISATION + ["--features", f"unirep{size}", "--skip_scl2205"]
        for size in (64, 256)
    },
    "unirep1900_ss": SECONDARY_STRUCTURE
    + ["--features", "unirep1900", "--only_cv", "--cv_folds", "5"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data_dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    )
    parser.add_argument("--output", default="runs/downstream_baselines")
    parser.add_argument("--cache_dir", default="runs/downstream_baselines/feature_cache")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    table, timings = [], {}
    load_before = timing.load_average()
    for name in args.configs.split(","):
        report_dir = Path(args.output) / name
        report_path = report_dir / "report.json"
        if not (args.reuse and report_path.exists()):
            started = time.time()
            old_stdout, sys.stdout = sys.stdout, sys.stderr  # keep stdout for the JSON object
            try:
                code = evaluate.main(
                    CONFIGS[name]
                    + [
                        "--data_dir",
                        args.data_dir,
                        "--report",
                        str(report_dir),
                        "--cache_dir",
                        args.cache_dir,
                    ]
                )
            finally:
                sys.stdout = old_stdout
            if code != 0:
                sys.exit(f"{name}: evaluate failed (exit {code})")
            timings[name] = round(time.time() - started, 1)
        report = json.loads(report_path.read_text())
        for row in report["paper_comparison"]:
            table.append(
                {
                    "config": name,
                    "features": report["setup"]["features"],
                    "metric": row["metric"],
                    "test_set": row["test_set"],
                    "value": row["ours"],
                    "ci95": row["ours_ci95"],
                    "paper_ProtT5_XL_U50": row["paper"],
                    "protocol": report[row["metric"]][row["test_set"]]["protocol"],
                    "max_train": report["setup"]["max_train"],
                }
            )
        timings.setdefault(name, report["setup"].get("wall_seconds"))
    print(
        json.dumps(
            {
                "benchmark": "downstream_baselines",
                "machine": f"{os.cpu_count()} CPU cores",
                "wall_seconds": timings,  # one run each: they scale with the load
                "load_average": timing.load_report(load_before),
                "rows": table,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
