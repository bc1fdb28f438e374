r"""Bad inputs and injected faults across the five commands, and how each one ends.

    .venv/bin/python scripts/fault_sweep.py --work /tmp/sweep [--only build,train] [--trials 2]

Bad inputs: each case runs one command's `main(argv)` in this process and is classified as

    one-line   a non-zero exit with exactly one `error: ...` line, naming what it should
    accepted   exit 0 (what the cases marked `ok` expect)
    traceback  an exception escaped the command (a bug, or a user mistake not reported as one)
    unclear    any other ending: several error lines, the wrong thing named, a zero exit

and, where a half-written output could be taken for a complete one, what the case left is
checked too. Faults: kill -9 and SIGTERM at a random moment of `train`, the builder and
`embed` (real subprocesses), then the same command again to the end, compared bit for bit
with an uninterrupted run. Exit 0 when every case and fault ends as expected.

The sweep is what the closing notes of the robustness issue report; it is a script, not a
test, because it takes ~15 minutes on 2 cores (tests/test_fault_sweep.py runs a few cases).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE = REPO / "data" / "sample" / "uniprot_sample.fasta.gz"
SHARED_DATA = REPO.parent / "shared" / "data"
T5_GIN = "--gin_file=gin/experiments/prot_t5_tiny_sample.gin"
SMALLER = ["--gin.T5Config.d_model=32", "--gin.T5Config.head_dim=8", "--gin.T5Config.d_ff=64",
           "--gin.T5Config.num_encoder_layers=1", "--gin.T5Config.num_decoder_layers=1"]
COMMANDS = ("build", "train", "embed", "export_hf", "evaluate")


@dataclasses.dataclass
class Case:
    command: str
    name: str
    argv: Callable[["Work"], list[str]]
    expect: str | None  # a text the one error line must contain; None: the case must succeed
    left: Callable[["Work"], str | None] | None = None  # what it left behind: None if fine


@dataclasses.dataclass
class Outcome:
    case: Case
    ending: str  # one-line | accepted | traceback | unclear
    detail: str
    ok: bool


# ---------------------------------------------------------------------------- fixtures


class Work:
    """The inputs the cases damage: FASTA files, a corpus, a trained MODEL_DIR, HF dirs."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.proteins = _sample_proteins(48)
        self.fasta = self.write_fasta("small.fasta", self.proteins)
        self.corpus = root / "corpus"
        self.model_dir = root / "t5_model"
        self.hf_t5 = root / "t5_hf"
        self.hf_bert = root / "bert_hf"
        self.counter = 0

    def path(self, name: str) -> Path:
        """A fresh path for one case's files (the folder is reused between sweeps)."""
        while True:
            self.counter += 1
            path = self.root / f"{self.counter:03d}_{name}"
            if not path.exists():
                return path

    def write_fasta(self, name: str, proteins, text: str | None = None) -> Path:
        path = self.root / name
        path.write_text(text if text is not None else "".join(f">{i}\n{s}\n" for i, s in proteins))
        return path

    def prepare(self, commands) -> None:
        """Builds the corpus and, unless only the builder is swept, trains 4 steps of a tiny
        T5, exports it and writes a tiny BERT."""
        import tasks
        from prottrans_jax import export_hf, train
        from tfrecords_builder.__main__ import main as build

        if not (self.corpus / "stats.json").exists():
            _expect_zero(build(["--input", str(self.fasta), "--output_dir", str(self.corpus),
                                "--num_shards", "1", "--validation_fraction", "0.1"]), "build the corpus")
        tasks.register_corpus("sweep", self.corpus)
        if set(commands) <= {"build"}:
            return
        if not self.model_dir.exists():
            _expect_zero(train.main(self.train_flags(self.model_dir, 4, "--gin.train.checkpoint_interval=2")),
                         "train the tiny T5")
        if not self.hf_t5.exists():
            _expect_zero(export_hf.main(["--model_dir", str(self.model_dir), "--output", str(self.hf_t5)]),
                         "export the tiny T5")
        if not self.hf_bert.exists():
            _write_tiny_bert(self.hf_bert)

    def train_flags(self, model_dir, steps, *extra) -> list[str]:
        return [T5_GIN, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
                "--gin.MIXTURE_OR_TASK_NAME='sweep_prott5_denoise'", "--gin.BATCH_SIZE=8",
                "--gin.INPUTS_LENGTH=64", "--gin.train.eval_interval=None", *SMALLER, *extra]

    def copy_model_dir(self, name: str) -> Path:
        copy = self.path(name)
        shutil.copytree(self.model_dir, copy)
        return copy

    def copy_corpus(self, name: str, damage: Callable[[Path], None]) -> str:
        """A damaged copy of the corpus, registered as a task; returns the task name."""
        import tasks

        copy = self.path(name)
        shutil.copytree(self.corpus, copy)
        damage(copy)
        corpus_name = copy.name.replace("-", "_")
        tasks.register_corpus(corpus_name, copy)
        return f"{corpus_name}_prott5_denoise"


def _sample_proteins(count: int) -> list[tuple[str, str]]:
    proteins, name, sequence = [], None, []
    with gzip.open(SAMPLE, "rt") as handle:
        for line in handle:
            if line.startswith(">"):
                if name is not None:
                    proteins.append((name, "".join(sequence)))
                    if len(proteins) == count:
                        break
                name, sequence = line[1:].split()[0], []
            else:
                sequence.append(line.strip())
    return [(f"p{i}", s[:200]) for i, (_, s) in enumerate(proteins)]


def _write_tiny_bert(directory: Path) -> None:
    import torch
    import transformers

    from prottrans_jax.convert import bert
    from prottrans_jax.vocab import prot_bert_vocabulary

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertForMaskedLM(config).save_pretrained(directory)
    bert.write_tokenizer(str(directory), prot_bert_vocabulary())


def _expect_zero(code: int, what: str) -> None:
    if code != 0:
        sys.exit(f"fault_sweep: could not {what} (exit {code})")


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _lose_a_shard(directory: Path) -> None:
    stats = json.loads((directory / "stats.json").read_text())
    (directory / "stats.json").write_text(json.dumps(stats | {"config": stats["config"] | {"num_shards": 2}}))
    for split in ("train", "validation"):
        (directory / f"{split}.tfrecord-00000-of-00001").rename(directory / f"{split}.tfrecord-00000-of-00002")
    (directory / "validation.tfrecord-00001-of-00002").write_bytes(b"")


def _corrupt_latest_checkpoint(model_dir: Path) -> Path:
    steps = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    for path in (model_dir / str(steps[-1])).rglob("*"):
        if path.is_file() and path.stat().st_size > 64 and path.suffix != ".json":
            _cut_in_half(path)
    return model_dir


def _no_stats(directory_of: Callable[[list[str]], Path]):
    """`left` check of a refused build: no stats.json, the mark of a complete corpus."""
    def check(argv):
        directory = directory_of(argv)
        return f"{directory}/stats.json exists" if (directory / "stats.json").exists() else None
    return check


# ------------------------------------------------------------------------------ cases


def build_cases(work: Work) -> list[Case]:
    def out(name):
        return lambda w: ["--output_dir", str(w.root / f"build_{name}"), "--num_shards", "1"]

    def build(name, inputs, expect, *extra):
        return Case("build", name, lambda w: [*(a for p in inputs(w) for a in ("--input", str(p))),
                                              *out(name)(w), *extra], expect)

    def fasta(name, text, binary=False):
        def make(w):
            path = w.root / name
            path.write_bytes(text) if binary else path.write_text(text)
            return [path]
        return make

    good = ">a\nMKV\n>b\nACDEF\n"
    gz = gzip.compress(("".join(f">{i}\n{s}\n" for i, s in work.proteins)).encode())
    file_output = work.root / "a_file"
    file_output.write_text("not a directory\n")
    cases = [
        build("missing_input", lambda w: [w.root / "nope.fasta"], "nope.fasta"),
        build("input_is_a_directory", lambda w: [w.root], str(work.root)),
        Case("build", "output_dir_is_a_file", lambda w: ["--input", str(w.fasta), "--output_dir", str(file_output)],
             str(file_output)),
        Case("build", "output_dir_unwritable", lambda w: ["--input", str(w.fasta), "--output_dir", "/proc/sweep_corpus"],
             "/proc/sweep_corpus"),
        build("empty_fasta", fasta("empty.fasta", ""), "empty.fasta"),
        build("sequence_before_header", fasta("headless.fasta", "MKV\n>a\nMKV\n"), "headless.fasta:1"),
        build("digits_in_sequence", fasta("digits.fasta", ">a\nMK3V\n"), "digits.fasta:2"),
        build("header_without_sequence", fasta("no_seq.fasta", ">a\n>b\nMKV\n"), "no_seq.fasta"),
        build("duplicate_id", fasta("dup.fasta", ">a\nMKV\n>a\nACD\n"), "dup.fasta"),
        build("truncated_gz", fasta("cut.fasta.gz", gz[: len(gz) // 2], binary=True), "cut.fasta.gz"),
        build("corrupt_gz", fasta("bad.fasta.gz", gz[:20] + b"\x00" * 64 + gz[84:], binary=True), "bad.fasta.gz"),
        build("plain_text_named_gz", fasta("plain.fasta.gz", good), "plain.fasta.gz"),
        build("num_shards_0", fasta("good1.fasta", good), "num_shards", "--num_shards", "0"),
        build("validation_fraction_1.5", fasta("good2.fasta", good), "validation_fraction",
              "--validation_fraction", "1.5"),
        build("min_length_above_max", fasta("good3.fasta", good), "min_length", "--min_length", "10",
              "--max_length", "5"),
        build("everything_filtered_out", fasta("good4.fasta", good), "", "--min_length", "100"),
        build("bom", fasta("bom.fasta", "\ufeff" + good), None),
        build("crlf_line_ends", fasta("crlf.fasta", good.replace("\n", "\r\n")), None),
        build("good", fasta("good5.fasta", good), None),
    ]
    cases.append(Case("build", "output_exists_without_overwrite",
                      lambda w: ["--input", str(w.fasta), "--output_dir", str(w.corpus), "--num_shards", "1"],
                      "--overwrite"))
    for case in cases:
        if case.expect is not None and case.name not in ("output_exists_without_overwrite",):
            case.left = _no_stats(lambda argv: Path(argv[argv.index("--output_dir") + 1]))
    return cases


def train_cases(work: Work) -> list[Case]:
    def train(name, expect, *extra, model_dir=None):
        return Case("train", name, lambda w: w.train_flags(model_dir(w) if model_dir else w.path(name), 2, *extra),
                    expect)

    gin_error = work.root / "syntax_error.gin"
    gin_error.write_text("train.log_every = (\n")
    a_file = work.root / "model_dir_is_a_file"
    a_file.write_text("x\n")

    def ghost_task(w):
        import tasks
        tasks.register_corpus("ghost", w.root / "not_built")
        return "ghost_prott5_denoise"

    def damaged(name, damage):
        return lambda w: w.train_flags(w.path(name), 2,
                                       f"--gin.MIXTURE_OR_TASK_NAME='{w.copy_corpus(name, damage)}'")

    return [
        train("batch_size_0", "BATCH_SIZE", "--gin.BATCH_SIZE=0"),
        train("inputs_length_0", "INPUTS_LENGTH", "--gin.INPUTS_LENGTH=0"),
        train("train_steps_abc", "TRAIN_STEPS", "--gin.TRAIN_STEPS='abc'"),
        train("train_steps_negative", "TRAIN_STEPS", "--gin.TRAIN_STEPS=-5"),
        train("unknown_parameter", "bogus_setting", "--gin.train.bogus_setting=1"),
        train("unknown_configurable", "NoSuchConfigurable", "--gin.NoSuchConfigurable.x=1"),
        train("misspelt_macro", "TRAIN_STEPZ", "--gin.TRAIN_STEPZ=3"),
        Case("train", "missing_gin_file", lambda w: ["--gin_file=nope.gin"], "nope.gin"),
        Case("train", "gin_syntax_error", lambda w: [f"--gin_file={gin_error}"], "syntax_error.gin"),
        train("unknown_task", "nope_prott5_denoise", "--gin.MIXTURE_OR_TASK_NAME='nope_prott5_denoise'"),
        train("bert_task_on_t5", "sweep_bert_mlm", "--gin.MIXTURE_OR_TASK_NAME='sweep_bert_mlm'"),
        train("model_dir_is_a_file", "is a file", model_dir=lambda w: a_file),
        train("model_dir_unwritable", "/proc/sweep_model", model_dir=lambda w: Path("/proc/sweep_model")),
        Case("train", "missing_corpus", lambda w: w.train_flags(w.path("ghost"), 2,
                                                                 f"--gin.MIXTURE_OR_TASK_NAME='{ghost_task(w)}'"),
             "no built corpus"),
        Case("train", "missing_shard", damaged("missing_shard", _lose_a_shard), "missing"),
        Case("train", "torn_stats_json", damaged("torn_stats", lambda d: _cut_in_half(d / "stats.json")),
             "stats.json"),
        Case("train", "truncated_shard",
             damaged("truncated_shard", lambda d: _cut_in_half(d / "train.tfrecord-00000-of-00001")),
             "truncated or corrupt"),
        train("microbatches_do_not_divide", "microbatch", "--gin.train.num_microbatches=3"),
        train("unknown_rule_set", "rule_set", "--gin.partitioning.Partitioner.rule_set='nope'"),
        train("mesh_too_large", "mesh_shape", "--gin.partitioning.Partitioner.mesh_shape=(64, 2)"),
        train("label_smoothing_1.5", "label_smoothing", "--gin.EncoderDecoderModel.label_smoothing=1.5"),
        train("init_from_another_family", "prot_bert", f"--gin.train.init_from_hf='{work.hf_bert}'"),
        train("init_from_missing_dir", "train.init_from_hf", f"--gin.train.init_from_hf='{work.root / 'nope'}'"),
        train("phase_2_of_a_fresh_dir", "train.phase", "--gin.train.phase=2"),
        Case("train", "resume_with_another_batch_size",
             lambda w: w.train_flags(w.copy_model_dir("batch"), 6, "--gin.BATCH_SIZE=16"), "batch"),
        Case("train", "another_models_checkpoint",
             lambda w: w.train_flags(w.copy_model_dir("other"), 6, "--gin.T5Config.d_model=48"), "does not match"),
        Case("train", "corrupt_checkpoint",
             lambda w: w.train_flags(_corrupt_latest_checkpoint(w.copy_model_dir("corrupt")), 6), "step 2"),
        train("good", None),
    ]


def embed_cases(work: Work) -> list[Case]:
    def embed(name, expect, fasta=None, *extra, source=None):
        def argv(w):
            return ["--fasta", str(fasta(w) if fasta else w.fasta), "--output", str(w.path(name) / "out.h5"),
                    *(source(w) if source else ["--hf_model", str(w.hf_t5)]), "--no_progress", *extra]
        return Case("embed", name, argv, expect, left=None)

    def text(name, content):
        return lambda w: w.write_fasta(name, [], content)

    def hf_dir(name, change):
        def make(w):
            copy = w.path(name)
            shutil.copytree(w.hf_t5, copy)
            change(copy)
            return ["--hf_model", str(copy)]
        return make

    def other_model_type(d):
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))

    def existing_per_protein(w):
        path = w.path("existing") / "out.h5"
        path.parent.mkdir()
        from prottrans_jax import embed as embed_lib
        _expect_zero(embed_lib.main(["--fasta", str(w.fasta), "--output", str(path), "--hf_model", str(w.hf_t5),
                                     "--per_protein", "--no_progress"]), "embed per protein")
        return ["--fasta", str(w.fasta), "--output", str(path), "--hf_model", str(w.hf_t5), "--no_progress"]

    return [
        embed("missing_fasta", "nope.fasta", lambda w: w.root / "nope.fasta"),
        embed("sequence_before_header", "e_headless.fasta:1", text("e_headless.fasta", "MKV\n>a\nMKV\n")),
        embed("digits_in_sequence", "e_digits.fasta:2", text("e_digits.fasta", ">a\nMK3V\n")),
        embed("empty_fasta", "e_empty.fasta", text("e_empty.fasta", "")),
        embed("id_dot", "'.'", text("e_dot.fasta", ">.\nMKV\n")),
        embed("id_incomplete", "_incomplete", text("e_inc.fasta", ">_incomplete\nMKV\n")),
        embed("max_tokens_0", "max_tokens", None, "--max_tokens", "0"),
        embed("max_length_0", "max_length", None, "--max_length", "0"),
        embed("model_dir_missing", "does not exist", source=lambda w: ["--model_dir", str(w.root / "nope")]),
        embed("model_dir_without_a_model", "", source=lambda w: ["--model_dir", str(w.root / "build_good")]),
        embed("hf_dir_of_unknown_type", "gpt2", source=hf_dir("gpt2", other_model_type)),
        embed("hf_dir_without_config", "config.json", source=hf_dir("noconf", lambda d: (d / "config.json").unlink())),
        embed("hf_dir_with_torn_weights", "safetensors",
              source=hf_dir("torn", lambda d: _cut_in_half(d / "model.safetensors"))),
        embed("corrupt_checkpoint", "step 2",
              source=lambda w: ["--model_dir", str(_corrupt_latest_checkpoint(w.copy_model_dir("e_corrupt")))]),
        embed("unknown_part", "--part", None, "--part", "nope"),
        Case("embed", "output_holds_other_settings", existing_per_protein, "holds embeddings with"),
        embed("good_model_dir", None, source=lambda w: ["--model_dir", str(w.model_dir)]),
        embed("good", None),
    ]


def export_cases(work: Work) -> list[Case]:
    def export(name, expect, model_dir=lambda w: w.model_dir, *extra, output=None):
        return Case("export_hf", name, lambda w: ["--model_dir", str(model_dir(w)),
                                                  "--output", str(output(w) if output else w.path(name)), *extra],
                    expect)

    def staged_leftovers(argv):
        output = Path(argv[argv.index("--output") + 1])
        leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}")]
        return f"staging left: {leftovers}" if leftovers else None

    cases = [
        export("missing_model_dir", "nope", lambda w: w.root / "nope"),
        export("output_holds_a_model", "already holds", output=lambda w: w.hf_t5),
        export("unknown_part", "--part", lambda w: w.model_dir, "--part", "nope"),
        export("model_dir_is_an_hf_dir", "", lambda w: w.hf_t5),
        export("corrupt_checkpoint", "step 2", lambda w: _corrupt_latest_checkpoint(w.copy_model_dir("x_corrupt"))),
        export("step_that_does_not_exist", "999", lambda w: w.model_dir, "--step", "999"),
        export("good", None),
    ]
    for case in cases:
        case.left = staged_leftovers
    return cases


def evaluate_cases(work: Work) -> list[Case]:
    if not SHARED_DATA.is_dir():
        return []
    not_h5 = work.root / "not.h5"
    not_h5.write_text("plain text\n")
    empty_h5 = work.root / "empty.h5"
    import h5py
    h5py.File(empty_h5, "w").close()

    def evaluate(name, expect, *extra, benchmark="localisation"):
        return Case("evaluate", name, lambda w: ["--benchmark", benchmark, "--data_dir", str(SHARED_DATA),
                                                 "--report", str(w.path(name)), *extra], expect)

    def hf_gpt2(w):
        copy = w.path("gpt2_eval")
        shutil.copytree(w.hf_t5, copy)
        config = json.loads((copy / "config.json").read_text())
        (copy / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
        return str(copy)

    return [
        evaluate("features_not_hdf5", "not an HDF5", "--features", str(not_h5)),
        evaluate("features_missing", "no such embeddings file", "--features", str(work.root / "nope.h5")),
        evaluate("features_lack_a_protein", "missing", "--features", str(empty_h5)),
        evaluate("unknown_features", "unknown features", "--features", "nope"),
        evaluate("cv_folds_0", "cv_folds", "--cv_folds", "0", benchmark="secondary_structure"),
        evaluate("cv_folds_1", "cv_folds", "--cv_folds", "1", benchmark="secondary_structure"),
        evaluate("max_epochs_0", "max_epochs", "--max_epochs", "0"),
        evaluate("patience_0", "patience", "--patience", "0"),
        evaluate("max_train_negative", "max_train", "--max_train", "-1"),
        Case("evaluate", "missing_data_dir", lambda w: ["--benchmark", "localisation", "--data_dir",
                                                        str(w.root / "nope"), "--report", str(w.path("x"))], "nope"),
        Case("evaluate", "hf_dir_of_unknown_type", lambda w: ["--benchmark", "localisation", "--data_dir",
                                                              str(SHARED_DATA), "--hf_model", hf_gpt2(w),
                                                              "--report", str(w.path("y"))], "gpt2"),
    ]


# ------------------------------------------------------------------------------ running


def entry_point(command: str):
    if command == "build":
        from tfrecords_builder.__main__ import main
    elif command == "train":
        from prottrans_jax.train import main
    elif command == "embed":
        from prottrans_jax.embed import main
    elif command == "export_hf":
        from prottrans_jax.export_hf import main
    else:
        from prottrans_jax.downstream.evaluate import main
    return main


def run_case(case: Case, work: Work) -> Outcome:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # what setting the case up prints
            argv = case.argv(work)
    except Exception as err:  # noqa: BLE001 (the sweep reports its own set-up failures)
        return Outcome(case, "unclear", f"could not set the case up: {err!r}", False)
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = entry_point(case.command)(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
            if not isinstance(exit_.code, int):
                print(f"error: {exit_.code}", file=sys.stderr)
        except BaseException as error:  # noqa: BLE001
            escaped, code = error, None
    # `error: ...` from the commands, `PROG: error: ...` after argparse's usage line
    errors = [line for line in err.getvalue().splitlines()
              if line.startswith("error:") or re.match(r"^\S+: error: ", line)]
    left = case.left(argv) if case.left else None
    if escaped is not None:
        return Outcome(case, "traceback", f"{type(escaped).__name__}: {str(escaped).splitlines()[0][:160]}"
                       if str(escaped) else type(escaped).__name__, False)
    if code == 0:
        ok = case.expect is None and left is None
        return Outcome(case, "accepted", left or "exit 0", ok)
    if len(errors) == 1:
        named = case.expect is not None and case.expect in errors[0]
        ok = named and left is None
        detail = errors[0][:200] + ("" if named else f"   [expected to name {case.expect!r}]")
        return Outcome(case, "one-line", detail + (f"   [{left}]" if left else ""), ok)
    return Outcome(case, "unclear", f"exit {code}, {len(errors)} error lines: {errors[:2]}", False)


# ------------------------------------------------------------------------------ faults


def _env(work: Work) -> dict:
    """The subprocesses' environment: the sweep's corpus is the `sample` task's."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
            "PROTTRANS_SAMPLE_CORPUS_DIR": str(work.corpus)}


def _run_to_end(work: Work, argv: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env=_env(work), capture_output=True, text=True, timeout=timeout)


def _interrupt(work: Work, argv: list[str], after: float, signum: int) -> int | None:
    process = subprocess.Popen(argv, cwd=REPO, env=_env(work), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=after)
        return process.returncode  # finished before the fault
    except subprocess.TimeoutExpired:
        process.send_signal(signum)
        process.wait(timeout=300)
        return None


def _train_argv(work: Work, model_dir: Path) -> list[str]:
    return [sys.executable, "-m", "prottrans_jax.train", *work.train_flags(model_dir, 12),
            "--gin.train.checkpoint_interval=3", "--gin.train.log_every=3",
            "--gin.MIXTURE_OR_TASK_NAME='sample_prott5_denoise'"]


def _train_result(model_dir: Path):
    import jax
    import numpy as np

    from prottrans_jax.model_dir import read_model, restore_params

    params, step = restore_params(str(model_dir), read_model(str(model_dir)))
    return step, [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


def _build_argv(work: Work, output: Path) -> list[str]:
    return [sys.executable, "-m", "tfrecords_builder", "--input", str(SAMPLE), "--output_dir", str(output),
            "--num_shards", "2"]


def _build_result(output: Path):
    if not (output / "stats.json").exists():
        return None
    return {p.name: p.read_bytes() for p in sorted(output.iterdir()) if p.is_file()}


def _embed_argv(work: Work, output: Path) -> list[str]:
    return [sys.executable, "-m", "prottrans_jax.embed", "--fasta", str(SAMPLE), "--output", str(output),
            "--hf_model", str(work.hf_t5), "--no_progress", "--per_protein", "--max_tokens", "2048"]


def _embed_result(output: Path):
    import h5py
    import numpy as np

    with h5py.File(output, "r") as handle:
        return {name: np.asarray(handle[name]) for name in handle}


def _same(a, b) -> bool:
    import numpy as np

    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def fault_runs(work: Work, commands: list[str], trials: int, seed: int) -> list[dict]:
    """kill -9 / SIGTERM at random moments, then the same command to the end: bit-identical?"""
    rng = random.Random(seed)
    jobs = {"train": (_train_argv, _train_result), "build": (_build_argv, _build_result),
            "embed": (_embed_argv, _embed_result)}
    results = []
    for command in [c for c in ("train", "build", "embed") if c in commands]:
        make_argv, result_of = jobs[command]
        reference_out = work.root / f"fault_{command}_reference" / ("out.h5" if command == "embed" else "")
        reference_out.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        finished = _run_to_end(work, make_argv(work, reference_out))
        duration = time.time() - started
        if finished.returncode != 0:
            results.append({"command": command, "fault": "none", "ok": False,
                            "detail": finished.stderr.strip().splitlines()[-1:]})
            continue
        reference = result_of(reference_out)
        for trial in range(trials):
            for name, signum in (("kill -9", signal.SIGKILL), ("SIGTERM", signal.SIGTERM)):
                out = work.root / f"fault_{command}_{trial}_{signum}" / ("out.h5" if command == "embed" else "")
                out.parent.mkdir(parents=True, exist_ok=True)
                after = rng.uniform(0.2, 0.95) * duration
                early = _interrupt(work, make_argv(work, out), after, signum)
                again = _run_to_end(work, make_argv(work, out))
                ok = again.returncode == 0 and _same(result_of(out), reference)
                results.append({"command": command, "fault": name, "at_seconds": round(after, 1),
                                "of_seconds": round(duration, 1), "finished_before_fault": early is not None,
                                "rerun_exit": again.returncode, "bit_identical": ok, "ok": ok})
                print(f"  {command:9s} {name:8s} at {after:5.1f} of {duration:5.1f} s -> rerun exit "
                      f"{again.returncode}, {'bit-identical' if ok else 'DIFFERENT'}", flush=True)
    return results


# ------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="scratch folder (reused: fixtures are built once)")
    parser.add_argument("--only", default=",".join(COMMANDS), help="commands to sweep, comma-separated")
    parser.add_argument("--cases", default=None, help="only these case names (command/name), comma-separated")
    parser.add_argument("--trials", type=int, default=2, help="fault runs per command and signal (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the outcomes here")
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    commands = [c for c in args.only.split(",") if c]
    unknown = sorted(set(commands) - set(COMMANDS))
    if unknown:
        parser.error(f"--only: unknown command {unknown[0]!r}; choose from {COMMANDS}")
    work = Work(Path(args.work))
    with contextlib.redirect_stdout(sys.stderr):
        work.prepare(commands)
    makers = {"build": build_cases, "train": train_cases, "embed": embed_cases, "export_hf": export_cases,
              "evaluate": evaluate_cases}
    cases = [case for command in commands for case in makers[command](work)]
    if args.cases:
        wanted = set(args.cases.split(","))
        cases = [c for c in cases if f"{c.command}/{c.name}" in wanted]
    outcomes = []
    for case in cases:
        outcome = run_case(case, work)
        outcomes.append(outcome)
        mark = "ok " if outcome.ok else "BAD"
        print(f"{mark} {case.command:9s} {case.name:34s} {outcome.ending:9s} {outcome.detail}", flush=True)
    faults = fault_runs(work, commands, args.trials, args.seed) if args.trials > 0 else []
    summary = {}
    for outcome in outcomes:
        counts = summary.setdefault(outcome.case.command, {"cases": 0, "as_expected": 0})
        counts["cases"] += 1
        counts["as_expected"] += outcome.ok
        counts[outcome.ending] = counts.get(outcome.ending, 0) + 1
    print("\nby command:", json.dumps(summary))
    if faults:
        print(f"faults: {sum(f['ok'] for f in faults)} of {len(faults)} reruns bit-identical")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cases": [{"command": o.case.command, "name": o.case.name, "ending": o.ending, "detail": o.detail,
                       "as_expected": o.ok} for o in outcomes],
            "by_command": summary, "faults": faults}, indent=1))
    return 0 if all(o.ok for o in outcomes) and all(f["ok"] for f in faults) else 1


if __name__ == "__main__":
    sys.exit(main())
