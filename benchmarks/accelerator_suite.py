"""One prepared accelerator run: every GPU figure of issue 13 in one call, one JSON file.

    python benchmarks/accelerator_suite.py --out $OUT/accelerator.json     # one H100/H200, <= 8 min
    python benchmarks/accelerator_suite.py --smoke --out /tmp/smoke.json    # the same paths, tiny, CPU

Measurements, in this order (each guarded: a failure is recorded and the rest still run;
one that would overrun `--budget_s` by its estimate is skipped, recorded; the JSON is
rewritten after each, so a run killed at its limit keeps what it measured):
- long_protein: one 35,213-residue protein (Swiss-Prot 2014's longest) through a ProtT5-XL-
  shaped encoder with chunked attention, via `inference.embed_sequences`: time, and peak
  device memory (`memory_stats()["peak_bytes_in_use"]`, first in the run so that the process
  peak is this one's; XLA's compiled memory analysis where the device keeps no statistics).
- device/matmul: an 8192^3 bf16 matrix product, the FLOP/s plain matmuls reach here, beside
  the datasheet peak that MFU divides by.
- t5_train: ProtT5 train step at base size (gin/models/t5/base.gin), 512 + 512 tokens,
  bfloat16 compute, AdamW: tokens/s and MFU (the model's `flops_per_batch` over the device's
  dense bf16 peak, `trainer.peak_flops_per_device`) with `xla`, `cudnn`, `chunked` and
  `pallas` attention, beside Hugging Face `T5ForConditionalGeneration` (bf16 autocast) on the same
  device and batch (benchmarks/train_throughput.py's two steps).
- embed: ProtT5-XL-shaped encoder over real proteins (a fixed sample of the bundled UniProtKB
  FASTA, long tail included) through `inference.embed_sequences` with `embed`'s default
  attention ("auto": xla up to max_length, chunked above) and, on a GPU, with cudnn for all
  (`embed --attention cudnn`, opt-in until measured here): residues/s and
  fraction of peak FLOP/s (useful FLOPs, real tokens), beside HF `T5EncoderModel` in float16
  with prott5_embedder.py's batching (benchmarks/embed_throughput.py's loop).
- bert_train: ProtBert (gin/models/bert/prot_bert.gin) train step, 512 tokens: MFU.
- long_protein/pallas (GPU): the 35,213-residue protein again through the fused Pallas kernel
  that computes T5's bias inside it (models/pallas_attention.py): time, and XLA's compiled
  memory analysis (the process peak is the first measurement's by then).

The measurements themselves are benchmarks/accelerator_measurements.py; this file runs them.
`--sections long_protein,t5_train,...` runs only those (the others are recorded as not
selected): a second call that measures what the first one's budget skipped.

Weights are random (speed only), dropout is off on both sides. Compilation is timed apart
from steady state: train steps report compile seconds and the median / min of `rounds`
timed rounds of `steps` steps; embeddings a cold pass (compiles) and warm passes. The JSON
records device kind, versions, date, the exact configs and batches, and the machine's load.
seqio and tensorflow are replaced by import stand-ins (benchmarks/import_stand_ins.py): the
accelerator image has neither and nothing timed here uses them. gin-config must be there
(README, "Accelerator run": its wheel travels); without it the JSON says so.
`--smoke` runs the same code paths with tiny gin configs, few steps, short proteins and a
2,048-residue "long" protein, in well under a minute on a CPU (tests/test_accelerator_suite.py).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Torch shares the GPU, and memory_stats' peak should be what the run used, not a preallocation.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path[:0] = [str(REPO), str(BENCHMARKS)]

import accelerator_measurements as measure  # noqa: E402  (imports nothing heavy)
import import_stand_ins  # noqa: E402

from prottrans_jax.errors import first_line  # noqa: E402  (imports nothing but sys)

ATTENTION = ("xla", "cudnn", "chunked", "pallas")
GPU_ONLY = ("cudnn", "pallas")  # fused kernels for CUDA GPUs: recorded as skipped elsewhere
SECTIONS = ("long_protein", "device", "t5_train", "embed", "bert_train")

# Sizes; `estimate_s` is a guess of each measurement's wall time on an H100/H200, for the budget.
FULL = {
    "t5_train": dict(gin="gin/models/t5/base.gin", batch=32, inputs_length=512, targets_length=512,
                     rounds=5, steps=5, estimate_s=70, hf_estimate_s=40),
    "embed": dict(gin="gin/models/t5/xl.gin", proteins=384, repeats=2, estimate_s=120, hf_estimate_s=45),
    "long_protein": dict(residues=35213, attention="chunked", estimate_s=90),
    "bert_train": dict(gin="gin/models/bert/prot_bert.gin", batch=32, length=512, rounds=5, steps=5,
                       estimate_s=75),
    "matmul": dict(n=8192, repeats=10, estimate_s=10),
    "budget_s": 440,
}
SMOKE = {  # tiny gin configs cut to one layer: the smoke run checks code paths, and compiling dominates it
    "t5_train": dict(gin="gin/models/t5/tiny.gin",  # 16-token tiles: chunked really tiles its 32 tokens
                     overrides=dict(num_encoder_layers=1, num_decoder_layers=1, attention_block_size=16), batch=2,
                     inputs_length=32, targets_length=32, rounds=2, steps=2, estimate_s=10, hf_estimate_s=5),
    "embed": dict(gin="gin/models/t5/tiny.gin", overrides=dict(num_encoder_layers=1), proteins=6, max_residues=31,
                  repeats=2, estimate_s=10, hf_estimate_s=5),
    "long_protein": dict(residues=2048, attention="chunked", estimate_s=10),  # 512-token tiles (the default)
    "bert_train": dict(gin="gin/models/bert/tiny.gin", overrides=dict(num_layers=1), batch=2, length=32, rounds=2,
                       steps=2, estimate_s=10),
    "matmul": dict(n=256, repeats=3, estimate_s=5),
    "budget_s": 600,
}


# ------------------------------------------------------------------------------ the run


class Run:
    """The JSON being written: one entry per measurement, rewritten after each."""

    def __init__(self, out: Path, budget_s: float, header: dict, sections: tuple[str, ...] | None = None):
        self.out, self.budget_s, self.start = out, budget_s, time.perf_counter()
        self.sections = sections  # None: every section
        self.result = {**header, "budget_seconds": budget_s, "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def measure(self, section: str, name: str, estimate_s: float, fn: Callable[[], dict]) -> dict:
        """Runs fn unless it would overrun the budget or its section was not selected; an
        exception is recorded, not raised."""
        if self.sections is not None and section not in self.sections:
            return self.record(section, name, {"skipped": "not selected (--sections)"})
        spent = self.elapsed()
        if spent + estimate_s > self.budget_s:
            return self.record(section, name, {"skipped": f"time budget: {spent:.0f} s spent + ~{estimate_s:.0f} s "
                                                          f"estimated > {self.budget_s:.0f} s"})
        load, start = os.getloadavg()[0], time.perf_counter()
        try:
            entry = fn()
        except Exception as err:  # one failure must not cost the run's other figures
            lines = traceback.format_exc().strip().splitlines()
            entry = {"error": f"{type(err).__name__}: {first_line(err, 500)}", "traceback_tail": lines[-6:]}
        entry.update(wall_seconds=round(time.perf_counter() - start, 2), load_average_1min=round(load, 2))
        return self.record(section, name, entry)

    def record(self, section: str, name: str, entry: dict) -> dict:
        self.result["sections"].setdefault(section, {})[name] = entry
        self.result["elapsed_seconds"] = round(self.elapsed(), 1)
        self.write()
        status = entry.get("skipped") or entry.get("error") or "ok"
        print(f"[{self.elapsed():6.1f} s] {section}/{name}: {status}", flush=True)
        return entry

    def why_not(self, section: str, name: str) -> str:
        """Why a measurement that needs what `section/name` builds cannot run: its skip reason,
        or that it failed."""
        return self.result["sections"][section][name].get("skipped") or f"{section}/{name} failed"

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        partial = self.out.with_name(self.out.name + ".partial")
        partial.write_text(json.dumps(self.result, indent=1, default=_jsonable))
        partial.replace(self.out)


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def hf_device(backend: str) -> tuple[str | None, str | None]:
    """(torch device for the HF side, None) or (None, why it cannot run beside ours)."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as err:
        return None, f"unavailable ({err})"
    if backend == "gpu":
        return ("cuda", None) if torch.cuda.is_available() else (None, "unavailable (torch has no CUDA here)")
    if backend == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
        return "cpu", None
    return None, f"unavailable (JAX runs on {backend}; the comparison needs torch on the same device)"


def versions() -> dict:
    import importlib.metadata

    found = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "gin-config", "torch", "transformers"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def header(args: argparse.Namespace, stand_ins: list[str]) -> dict:
    return {"suite": "accelerator_suite", "mode": "smoke" if args.smoke else "full", "argv": sys.argv[1:],
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": {"machine": platform.machine(), "cpu_count": os.cpu_count(),
                     "load_average_1min_start": round(os.getloadavg()[0], 2)},
            "versions": versions(), "import_stand_ins": stand_ins,
            "weights": "random everywhere (speed only; no figure here depends on trained values)"}


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU, well under a minute")
    parser.add_argument("--budget_s", type=float, default=None, help="default: 440 (full), 600 (smoke)")
    parser.add_argument("--attention", default=",".join(ATTENTION), help="T5 train-step implementations")
    parser.add_argument("--long_attention", default=None, help="default: chunked")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="which sections run (default all); the others are recorded as not selected")
    parser.add_argument("--peak_flops", type=float, default=None,
                        help="peak FLOP/s per device for MFU (default: trainer.peak_flops_per_device)")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.long_attention:
        sizes = {**sizes, "long_protein": {**sizes["long_protein"], "attention": args.long_attention}}
    sections = tuple(s for s in args.sections.split(",") if s)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; expected some of {SECTIONS}")
    run = Run(Path(args.out), args.budget_s or sizes["budget_s"], header(args, import_stand_ins.install()), sections)
    try:
        import gin  # noqa: F401
    except ImportError as err:
        for section in ("long_protein", "t5_train", "embed", "bert_train"):
            run.record(section, "all", {"skipped": f"gin-config is not installed ({err}): carry its wheel "
                                                   "(README, 'Accelerator run')"})
        return 0

    import jax

    from prottrans_jax.trainer import peak_flops_per_device

    backend, device = jax.default_backend(), jax.devices()[0]
    peak = args.peak_flops or peak_flops_per_device(device)
    hf_on, hf_why = hf_device(backend)
    run.result.update(backend=backend, device_kind=device.device_kind, device_count=jax.device_count(),
                      peak_flops_per_device=peak,
                      peak_flops_source="--peak_flops" if args.peak_flops else "trainer.peak_flops_per_device",
                      hf_device=hf_on or hf_why, sizes=sizes)
    run.write()
    embed_dtype = "float32" if backend == "cpu" else "bfloat16"
    encoders: dict[str, measure.Encoders] = {}

    def xl() -> measure.Encoders:  # built once, shared by long_protein and embed
        if "xl" not in encoders:
            encoders["xl"] = measure.Encoders(sizes["embed"], embed_dtype)
        return encoders["xl"]

    # 1. The long protein first: the process's memory peak is then its own. Then the
    # device's plain-matmul ceiling, beside the datasheet peak.
    long_spec, matmul_spec = sizes["long_protein"], sizes["matmul"]
    run.measure("long_protein", long_spec["attention"], long_spec["estimate_s"],
                lambda: measure.long_protein(xl(), long_spec, long_spec["attention"]))
    run.measure("device", "matmul", matmul_spec["estimate_s"], lambda: measure.matmul_ceiling(matmul_spec, peak))

    # 2. ProtT5 base train step: xla, then HF beside it, the other implementations after embed.
    t5_spec, t5 = sizes["t5_train"], {}

    def t5_setup() -> dict:
        t5["model"], t5["config"] = measure.t5_model(t5_spec)
        t5["batch"], t5["tokens"] = measure.t5_batch(t5_spec)
        t5["flops"] = t5["model"].flops_per_batch(t5["batch"])
        return {**measure.describe_train(t5_spec, t5["config"]), "model_flops_per_step": t5["flops"],
                "tokens_per_step": t5["tokens"]}

    run.measure("t5_train", "setup", 5, t5_setup)
    implementations = [i for i in args.attention.split(",") if i]

    def t5_measure(implementation: str) -> None:
        if "config" not in t5:
            run.record("t5_train", implementation, {"skipped": run.why_not("t5_train", "setup")})
        elif implementation in GPU_ONLY and backend != "gpu":
            run.record("t5_train", implementation, {"skipped": gpu_only(implementation, backend)})
        else:
            run.measure("t5_train", implementation, t5_spec["estimate_s"],
                        lambda: measure.t5_train(t5, t5_spec, implementation, peak))

    for implementation in implementations[:1]:
        t5_measure(implementation)
    if not hf_on or "config" not in t5:
        run.record("t5_train", "hf", {"skipped": f"hf: {hf_why}" if not hf_on else run.why_not("t5_train", "setup")})
    else:
        run.measure("t5_train", "hf", t5_spec["hf_estimate_s"], lambda: {
            "model": "transformers.T5ForConditionalGeneration", "device": hf_on,
            **measure.hf_train_step("t5", t5["config"], t5["batch"], t5["tokens"], t5_spec["rounds"], t5_spec["steps"],
                            t5["flops"], peak, hf_on)})

    # 3. Embedding throughput, ours then HF's route.
    embed_spec, proteins = sizes["embed"], []

    def embed_measure() -> dict:
        proteins.extend(measure.sample_proteins(embed_spec))
        return measure.embed_ours(xl(), embed_spec, proteins, peak)

    run.measure("embed", "ours", embed_spec["estimate_s"], embed_measure)
    if backend != "gpu":
        run.record("embed", "ours_cudnn", {"skipped": gpu_only("cudnn", backend)})
    elif not proteins:
        run.record("embed", "ours_cudnn", {"skipped": run.why_not("embed", "ours")})
    else:
        run.measure("embed", "ours_cudnn", embed_spec["estimate_s"],
                    lambda: measure.embed_ours(xl(), embed_spec, proteins, peak, attention="cudnn"))
    if not hf_on or not proteins:
        run.record("embed", "hf", {"skipped": f"hf: {hf_why}" if not hf_on else run.why_not("embed", "ours")})
    else:
        run.measure("embed", "hf", embed_spec["hf_estimate_s"], lambda: {
            "model": "transformers.T5EncoderModel", "device": hf_on,
            **measure.embed_hf(xl(), embed_spec, proteins, hf_on)})
    encoders.clear()
    gc.collect()

    # 4. The other attention implementations of the T5 step.
    for implementation in implementations[1:]:
        t5_measure(implementation)

    # 5. ProtBert's train step.
    bert_spec = sizes["bert_train"]
    run.measure("bert_train", "xla", bert_spec["estimate_s"], lambda: measure.bert_train(bert_spec, peak))

    # 6. The long protein through the fused Pallas kernel (T5's bias computed in it).
    if long_spec["attention"] != "pallas":
        if backend != "gpu":
            run.record("long_protein", "pallas", {"skipped": gpu_only("pallas", backend)})
        else:
            run.measure("long_protein", "pallas", long_spec["estimate_s"],
                        lambda: measure.long_protein(xl(), long_spec, "pallas", device_peak=False))

    add_ratios(run.result["sections"])
    run.result["host"]["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    run.record("summary", "targets", targets(run.result["sections"]))
    return 0


def gpu_only(implementation: str, backend: str) -> str:
    return f"{implementation} attention runs only on a GPU backend ({backend} here)"


def add_ratios(sections: dict) -> None:
    """Speed-ups over Hugging Face, where both sides were measured (HF's time / ours)."""
    train = sections.get("t5_train", {})
    hf = train.get("hf", {}).get("step_seconds")
    for name, entry in train.items():
        if hf and name in ATTENTION and "step_seconds" in entry:
            entry["speedup_vs_hf"] = round(hf["median"] / entry["step_seconds"]["median"], 3)
    embed = sections.get("embed", {})
    for name in ("ours", "ours_cudnn"):
        if "seconds" in embed.get("hf", {}) and "warm_seconds" in embed.get(name, {}):
            ours, hf_seconds = embed[name]["warm_seconds"]["median"], embed["hf"]["seconds"]["median"]
            embed[name]["speedup_vs_hf"] = round(hf_seconds / ours, 3)


def targets(sections: dict) -> dict:
    """Issue 13's targets, as measured in this run (None: not measured)."""
    xla = sections.get("t5_train", {}).get("xla", {})
    embed = sections.get("embed", {}).get("ours", {})
    best = [e["mfu"] for n, e in sections.get("t5_train", {}).items() if n in ATTENTION and e.get("mfu")]
    return {"t5_train_mfu_best (target >= 0.40)": max(best) if best else None,
            "t5_train_xla_speedup_vs_hf (target >= 2)": xla.get("speedup_vs_hf"),
            "embed_speedup_vs_hf_fp16 (target >= 3)": embed.get("speedup_vs_hf")}


if __name__ == "__main__":
    sys.exit(main())
