"""python -m tfrecords_builder --input 'uniref50/*.fasta.gz' --output_dir corpus/ [Beam options]

Flags this job does not know are Beam pipeline options, passed through: e.g.
`--runner DataflowRunner --project P --region R --temp_location gs://B/tmp`, or
`--direct_running_mode multi_processing --direct_num_workers 8` for a local run.
"""

from __future__ import annotations

import argparse
import logging
import sys

from prottrans_jax.errors import USER_ERRORS
from tfrecords_builder.build import BuildError, build
from tfrecords_builder.pipeline import BuildConfig


def parse_args(argv: list[str]) -> tuple[BuildConfig, bool, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m tfrecords_builder", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", action="append", required=True,
                        help="FASTA file or glob (plain or .gz; local, gs://, ...); repeatable")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_shards", type=int, default=16, help="shards per split")
    parser.add_argument("--validation_fraction", type=float, default=0.01)
    parser.add_argument("--min_length", type=int, default=1)
    parser.add_argument("--max_length", type=int, default=None,
                        help="drop longer proteins (default: keep all; training crops them)")
    parser.add_argument("--dedupe", action="store_true",
                        help="keep one record per distinct sequence")
    parser.add_argument("--policy", choices=("error", "skip"), default="error",
                        help="malformed records: fail (default) or drop and count")
    parser.add_argument("--text_layout", action="store_true",
                        help="also write the paper's text layout (one protein per line)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a corpus already in --output_dir")
    args, pipeline_args = parser.parse_known_args(argv)
    config = BuildConfig(
        inputs=tuple(args.input), output_dir=args.output_dir, num_shards=args.num_shards,
        validation_fraction=args.validation_fraction, min_length=args.min_length,
        max_length=args.max_length, dedupe=args.dedupe, policy=args.policy,
        text_layout=args.text_layout)
    return config, args.overwrite, pipeline_args


def main(argv: list[str] | None = None) -> int:
    config, overwrite, pipeline_args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    try:
        stats = build(config, pipeline_args, overwrite=overwrite)
    except (BuildError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"statistics ({config.output_dir}/stats.json):")
    for key in ("records_read", "written", "dropped", "residues", "rare_residues_mapped_to_x",
                "min_length", "max_length"):
        print(f"  {key}: {stats[key]}")
    hist = stats["length_histogram"]
    print("  length histogram: " + ", ".join(
        f">={start}: {count}" for start, count in zip(hist["bin_starts"], hist["counts"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
