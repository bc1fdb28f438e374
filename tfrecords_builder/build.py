"""The builder's driver: runs the pipeline into a scratch directory, verifies, then publishes.

Nothing half-written looks complete: shards are written under `OUTPUT_DIR/.build-*`, every
shard is read back and counted (with CRC checks), the books must balance
(`read == written + dropped`), and only then are the files moved into OUTPUT_DIR, with
`stats.json`, the marker of a complete corpus, moved last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from prottrans_jax.errors import first_line
from prottrans_jax.fasta import FastaError
from tfrecords_builder import tfrecord_io
from tfrecords_builder.fasta_source import newlines_before
from tfrecords_builder.pipeline import (FATAL_REASONS, FILTER_REASONS, LENGTH_BINS, SPLITS, BuildConfig,
                                        build_pipeline)

STATS_FILE = "stats.json"


class BuildError(RuntimeError):
    """The build cannot proceed or its output failed verification."""


def _join(directory: str, name: str) -> str:
    return FileSystems.join(directory, name)


def expand_inputs(patterns: tuple[str, ...]) -> list[str]:
    """The files each pattern matches; a pattern that matches nothing is an error."""
    files = []
    for pattern in patterns:
        matched = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
        if not matched:
            raise BuildError(f"--input {pattern!r}: no files match")
        directories = [path for path in matched if os.path.isdir(path)]
        if directories:
            raise BuildError(f"--input {directories[0]}: a directory; give its FASTA files "
                             f"('{directories[0].rstrip('/')}/*.fasta.gz')")
        files.extend(matched)
    return files


def check_runner(options: PipelineOptions) -> None:
    """Refuses DirectRunner's multi_threading mode, seen to drop records silently."""
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    mode = options.view_as(DirectOptions).direct_running_mode
    if runner in ("DirectRunner", "direct") and mode == "multi_threading":
        raise BuildError("--direct_running_mode=multi_threading is refused: it was seen to drop "
                         "0.2-2.5% of records silently; use in_memory (default) or "
                         "multi_processing")


def _remove_stale_scratch(output_dir: str, log) -> None:
    """Deletes the scratch folders of builds that died here (`.build-PID-TIME` whose process
    no longer runs on this machine): a killed build once left 17-24 MB behind for good. Local
    directories only: another host's process cannot be checked."""
    if "://" in output_dir or not os.path.isdir(output_dir):
        return
    for name in sorted(os.listdir(output_dir)):
        match = re.fullmatch(r"\.build-(\d+)-\d+", name)
        if match and not _process_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
            log(f"removed {os.path.join(output_dir, name)}: the scratch of a build that did not finish")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _read_json(path: str):
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode() or "[]")


def _existing_outputs(output_dir: str) -> list[str]:
    if not FileSystems.exists(output_dir):
        return []
    patterns = [_join(output_dir, f"{split}.*-*-of-*") for split in SPLITS]
    patterns.append(_join(output_dir, STATS_FILE))
    return [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]


def _location(path: str, line: int | None, offset: int | None) -> str:
    """"FILE:LINE", turning a byte offset into a line number (error paths only: it rereads)."""
    if line is None and offset is not None:
        line = newlines_before(path, offset) + 1
    return f"{path}:{line}"


def _problem_text(problem: dict) -> str:
    """"FILE:LINE: message" for a dropped record."""
    message = problem["message"]
    if problem.get("first"):
        first_path, first_offset = problem["first"]
        message = message.replace("{first}", _location(first_path, None, first_offset))
    return f"{_location(problem['path'], problem['line'], problem['offset'])}: {message}"


def verify_shards(config: BuildConfig, work_dir: str, manifest: list[dict]) -> dict:
    """Counts every shard back from storage and compares it with what the pipeline wrote."""
    expected = {(row["split"], row["shard"]): row for row in manifest}
    counted = {split: {"records": 0, "residues": 0} for split in SPLITS}
    for split in SPLITS:
        for shard in range(config.num_shards):
            path = _join(work_dir, config.shard_name(split, shard))
            row = expected.get((split, shard))
            if row is None:  # no record hashed here: still write the shard, so names stay whole
                tfrecord_io.write_records(path, [])
                if config.text_layout:
                    tfrecord_io.write_records(_join(work_dir, config.shard_name(split, shard,
                                                                                "txt")), [])
                continue
            records, residues = tfrecord_io.count_records(path)
            if (records, residues) != (row["records"], row["residues"]):
                raise BuildError(f"{path}: counted {records} records / {residues} residues back, "
                                 f"the pipeline wrote {row['records']} / {row['residues']}")
            counted[split]["records"] += records
            counted[split]["residues"] += residues
    return counted


def build(config: BuildConfig, pipeline_args: list[str] | None = None, overwrite: bool = False,
          log=print) -> dict:
    """Runs the whole build; returns the statistics written to stats.json."""
    if config.num_shards < 1:
        raise BuildError(f"--num_shards must be >= 1, got {config.num_shards}")
    if not 0.0 <= config.validation_fraction < 1.0:
        raise BuildError(f"--validation_fraction must be in [0, 1), got "
                         f"{config.validation_fraction}")
    if config.max_length is not None and config.max_length < config.min_length:
        raise BuildError(f"--max_length {config.max_length} < --min_length {config.min_length}")
    if config.policy not in ("error", "skip"):
        raise BuildError(f"--policy must be 'error' or 'skip', got {config.policy!r}")
    options = PipelineOptions(pipeline_args or [])
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = "DirectRunner"
    check_runner(options)
    files = expand_inputs(config.inputs)
    existing = _existing_outputs(config.output_dir)
    if existing and not overwrite:
        raise BuildError(f"{config.output_dir}: already holds a corpus ({len(existing)} files); "
                         "pass --overwrite to replace it")

    if os.path.isfile(config.output_dir):
        raise BuildError(f"--output_dir {config.output_dir}: a file, not a directory")
    _remove_stale_scratch(config.output_dir, log)
    work_dir = _join(config.output_dir, f".build-{os.getpid()}-{int(time.time())}")
    try:
        FileSystems.mkdirs(work_dir)
    except OSError as err:  # Beam wraps PermissionError & co. in IOError
        raise BuildError(f"--output_dir {config.output_dir}: cannot be written ({first_line(err)})") from None
    try:
        started = time.time()
        log(f"building {config.output_dir} from {len(files)} file(s) "
            f"with {options.view_as(StandardOptions).runner}")
        with beam.Pipeline(options=options) as pipeline:
            build_pipeline(pipeline, config, work_dir)
        stats = _check_and_summarise(config, files, work_dir)
        if existing:
            FileSystems.delete(existing)
        _publish(config, work_dir, stats)
        seconds = time.time() - started  # the whole build: pipeline, count-back, publish
    except Exception:
        if FileSystems.exists(work_dir):
            FileSystems.delete([work_dir])
        raise
    if FileSystems.exists(work_dir):
        FileSystems.delete([work_dir])
    log(f"built in {seconds:.1f} s: {stats['records_read']} read, "
        f"{stats['written']['train']} train + {stats['written']['validation']} validation "
        f"written, {sum(stats['dropped'].values())} dropped {stats['dropped']}")
    stats["seconds"] = round(seconds, 2)  # returned, not stored: stats.json stays reproducible
    return stats


def _check_and_summarise(config: BuildConfig, files: list[str], work_dir: str) -> dict:
    (records_read,) = _read_json(_join(work_dir, "read.json")) or [0]
    manifest = _read_json(_join(work_dir, "manifest.json"))
    dropped = dict(sorted((reason, count) for reason, count in
                          _read_json(_join(work_dir, "dropped.json"))))
    problems = _read_json(_join(work_dir, "problems.json"))
    damaged = [p for p in problems if p["reason"] in FATAL_REASONS]
    if damaged:  # whatever the policy: what lies beyond the damage is unknown
        raise BuildError(_problem_text(damaged[0]))
    num_problems = sum(c for r, c in dropped.items() if r not in FILTER_REASONS)
    if num_problems and config.policy == "error":
        first = _problem_text(problems[0])
        more = f" (and {num_problems - 1} more problem(s); --policy skip drops and counts them)" \
            if num_problems > 1 else ""
        raise FastaError(first + more)

    counted = verify_shards(config, work_dir, manifest)
    written = {split: counted[split]["records"] for split in SPLITS}
    if records_read != sum(written.values()) + sum(dropped.values()):
        raise BuildError(f"records lost: read {records_read}, wrote {sum(written.values())}, "
                         f"dropped {sum(dropped.values())}")
    if not sum(written.values()):  # an empty corpus would only fail later, in training
        raise BuildError(f"{', '.join(files)}: no protein to write ({records_read} record(s) read"
                         + (f", all dropped: {dropped})" if records_read else ")"))
    histogram = [sum(row["length_histogram"][i] for row in manifest)
                 for i in range(len(LENGTH_BINS))]
    return {
        "inputs": files,
        "records_read": records_read,
        "written": written,
        "dropped": dropped,
        "residues": {split: counted[split]["residues"] for split in SPLITS},
        "rare_residues_mapped_to_x": sum(row["rare_residues"] for row in manifest),
        "min_length": min((row["min_length"] for row in manifest), default=0),
        "max_length": max((row["max_length"] for row in manifest), default=0),
        "length_histogram": {"bin_starts": list(LENGTH_BINS), "counts": histogram},
        "problem_examples": [_problem_text(p) for p in problems],
        "config": {"num_shards": config.num_shards,
                   "validation_fraction": config.validation_fraction,
                   "min_length": config.min_length, "max_length": config.max_length,
                   "dedupe": config.dedupe, "policy": config.policy,
                   "text_layout": config.text_layout},
    }


def _publish(config: BuildConfig, work_dir: str, stats: dict) -> None:
    kinds = ["tfrecord"] + (["txt"] if config.text_layout else [])
    names = [config.shard_name(split, shard, kind) for kind in kinds for split in SPLITS
             for shard in range(config.num_shards)]
    FileSystems.rename([_join(work_dir, n) for n in names],
                       [_join(config.output_dir, n) for n in names])
    with FileSystems.create(_join(config.output_dir, STATS_FILE)) as handle:
        handle.write(json.dumps(stats, indent=2, sort_keys=True).encode() + b"\n")
