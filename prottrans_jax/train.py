r"""Pre-training entry point, configured with gin as in T5X.

    python -m prottrans_jax.train \
        --gin_file=gin/experiments/prot_t5_tiny_sample.gin \
        --gin.MODEL_DIR="'runs/x'" --gin.TRAIN_STEPS=100

Flags: --gin_file (repeatable, later files override earlier ones), --gin.KEY=VALUE and
--gin_bindings='KEY = VALUE' (repeatable, applied after the files), --gin_search_paths
(comma-separated roots for `include`; the repository root and the working directory are
always searched), --compilation_cache_dir (persistent XLA cache folder or `off`; see
`prottrans_jax.compilation_cache`), --debug (full tracebacks instead of one-line errors).

A thin shell over `prottrans_jax.training.train` (what it writes to MODEL_DIR, resuming,
phases and continued pre-training are described there). SIGTERM checkpoints at the next step
boundary and exits cleanly.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tokenize
from typing import Sequence

import gin
import tensorflow as tf

from prottrans_jax import compilation_cache, distributed
from prottrans_jax.errors import USER_ERRORS, UserError, first_line
from prottrans_jax.training import train

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------ command line


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
    """argparse flags plus T5X's `--gin.KEY=VALUE` shorthand (turned into bindings)."""
    parser = argparse.ArgumentParser(prog="python -m prottrans_jax.train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", action="append", default=[])
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--gin_search_paths", action="append", default=[])
    parser.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    distributed.add_flags(parser)
    compilation_cache.add_flag(parser)
    rest = []
    args, unknown = parser.parse_known_args(list(argv))
    for flag in unknown:
        if flag.startswith("--gin.") and "=" in flag:
            key, value = flag[len("--gin."):].split("=", 1)
            args.gin_bindings.append(f"{key} = {value}")
        else:
            rest.append(flag)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    if not args.gin_file:
        parser.error("give at least one --gin_file")
    return args




def check_override_macros(bindings: Sequence[str]) -> None:
    """Refuses a `--gin.NAME=...` macro that no gin file reads (gin itself accepts any name).

    Without this, a misspelt `--gin.TRAIN_STEPZ=10` would silently train for the file's
    TRAIN_STEPS. Keys with a dot bind a configurable's parameter and gin checks those itself.
    """
    macro = gin.config.get_configurable(gin.config.macro)
    # gin has no public accessor for the parsed bindings; _CONFIG is stable since gin 0.1.
    used = {ref.config_key[0] for ref in gin.config.iterate_references(gin.config._CONFIG, to=macro)}
    for binding in bindings:
        name = binding.split("=", 1)[0].strip()
        if name and "." not in name and name not in used:
            close = difflib.get_close_matches(name, sorted(used), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UserError(f"unknown macro in binding '{binding.strip()}': no gin file "
                             f"reads %{name}{hint}")


def run(argv: Sequence[str]) -> tuple[int, dict]:
    """Parses gin and runs `train`: (exit code: 0 ok, 1 bad input or halted; train's result)."""
    args = parse_flags(argv)
    distributed.initialize_from_flags(args)  # before any JAX computation
    compilation_cache.enable(args.compilation_cache_dir)
    gin.clear_config()
    for path in [REPO_ROOT, os.getcwd()] + [p for arg in args.gin_search_paths
                                           for p in arg.split(",") if p]:
        gin.add_config_file_search_path(path)
    try:
        for path in args.gin_file:  # one at a time, so that a syntax error names its file
            try:
                gin.parse_config_file(path)
            except tokenize.TokenError as error:  # an unclosed bracket or string
                raise SyntaxError(f"{path}: {error.args[0]}") from None
        gin.parse_config(args.gin_bindings)
        gin.finalize()
        check_override_macros(args.gin_bindings)
    except (ValueError, IOError, SyntaxError, ImportError) as error:
        if args.debug:
            raise
        print(f"error: gin: {first_line(error)}", file=sys.stderr)
        return 1, {}
    try:
        result = train()
    except USER_ERRORS as error:  # a bare ValueError is a bug and keeps its traceback
        if args.debug:
            raise
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 1, {}
    except tf.errors.DataLossError as error:  # tf.data checks each record's CRC as it reads
        if args.debug:
            raise
        print(f"error: a corpus shard is truncated or corrupt ({first_line(error.message)}); rebuild the "
              "corpus or restore the shard from its source", file=sys.stderr)
        return 1, {}
    if result.get("halted"):
        print(f"error: {result['message']}", file=sys.stderr)
        return 1, result
    return 0, result


def main(argv: Sequence[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)[0]


if __name__ == "__main__":
    sys.exit(main())
