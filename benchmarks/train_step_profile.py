"""Where a train step's time goes, ours against PyTorch, phase by phase, in one process.

    python benchmarks/train_step_profile.py                          # ProtT5 at train_throughput's CPU shape
    python benchmarks/train_step_profile.py --d_model 512 --heads 8 --d_ff 2048 --batch 2 --length 512
    python benchmarks/train_step_profile.py --d_model 768 --heads 12 --d_ff 3072 --layers 12 \
        --batch 1 --length 512 --calls 1          # ProtT5 base's shape (gin/models/t5/base.gin)
    python benchmarks/train_step_profile.py --family bert [--d_model 768 --heads 12 --d_ff 3072 --layers 12 ...]
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false python benchmarks/train_step_profile.py

`--family` t5 (ProtT5, `EncoderDecoderModel` vs `T5ForConditionalGeneration`; `--layers`
encoder and decoder layers each, `--length` encoder and decoder tokens each), bert
(`BertMLMModel` vs `BertForMaskedLM`) or albert (`AlbertMLMModel` vs `AlbertForMaskedLM`,
its embedding width as in train_throughput): the models, batches and Hugging Face steps of
`benchmarks/train_throughput.py`, at its CPU shape unless the shape flags say otherwise.

Phases, each a compiled program timed on its own after a warm-up (seconds per call; the two
sides' phases interleaved, `--rounds` rounds of `--calls` calls, min and median):
- forward: the loss alone;
- forward_backward: loss and gradients;
- optimizer: AdamW's update and apply on gradient-shaped arrays (optax.adamw; torch's AdamW
  step with the gradients set);
- step_plain: forward, backward and AdamW in one jitted function with donated state (ours);
  forward, backward, step, zero_grad (PyTorch);
- step_trainer (ours only): `Trainer.train_step`, which adds the NaN/Inf guard (a `where` over
  parameters and optimizer state), on-device metrics and the bound on steps in flight;
- dispatch (ours only): the host time to launch `step_plain` without waiting (its result
  blocked on after timing), i.e. the Python and dispatch overhead per step;
- gemm_forward, gemm_input_grad, gemm_weight_grad: the feed-forward layer's matrix products
  alone, (batch x length, d_model) @ (d_model, d_ff) and the two its backward runs (dy @ W^T,
  x^T @ dy), float32: what the backend's matrix-product kernels reach on both sides, apart
  from the model (XLA:CPU's own kernels against PyTorch's oneDNN/MKL on a CPU).
With `--op_profile`, one forward + backward call of ours is also traced (jax.profiler) and
its time summed per XLA operation kind, with the slowest operations and the model code they
come from. Prints one JSON object (with the load average: on a busy machine ratios say little).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import optax  # noqa: E402

from benchmarks import timing  # noqa: E402
from benchmarks.train_throughput import HF, SIZES, Ours, build  # noqa: E402

# The shape flags -> each family's config fields (t5's --layers: encoder and decoder each).
SHAPE_FIELDS = {
    "t5": {"d_model": ("d_model",), "heads": ("num_heads",), "d_ff": ("d_ff",),
           "layers": ("num_encoder_layers", "num_decoder_layers")},
    "bert": {"d_model": ("hidden_size",), "heads": ("num_heads",), "d_ff": ("intermediate_size",),
             "layers": ("num_layers",)},
}
SHAPE_FIELDS["albert"] = SHAPE_FIELDS["bert"]


def loss_fn(ours: Ours):
    """params -> the train loss on the benchmark's batch (dropout is off in its config)."""
    model, batch = ours.trainer.model, ours.batch
    return lambda params: model.loss_and_metrics(params, batch, jax.random.key(0), True)[0]


def ours_phases(ours: Ours, grads_fn, calls: int) -> dict:
    copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)  # noqa: E731
    params = copy(ours.state["params"])  # the trainer's own buffers are donated to its next step
    optimizer = optax.adamw(1e-4, weight_decay=0.01)
    loss = loss_fn(ours)
    forward = jax.jit(loss)
    grads = grads_fn(params)

    def update(state, g):
        updates, opt_state = optimizer.update(g, state[1], state[0])
        return optax.apply_updates(state[0], updates), opt_state

    update_fn = jax.jit(update, donate_argnums=(0,))

    def plain(state):
        g = jax.grad(loss)(state[0])
        return update(state, g)

    plain_fn = jax.jit(plain, donate_argnums=(0,))
    holder = {"u": (copy(params), optimizer.init(params)), "p": (copy(params), optimizer.init(params))}

    def run_update():
        holder["u"] = update_fn(holder["u"], grads)
        return holder["u"]

    def run_plain():
        holder["p"] = plain_fn(holder["p"])
        return holder["p"]

    def dispatch_seconds():
        jax.block_until_ready(holder["p"])
        start = time.perf_counter()
        for _ in range(calls):
            holder["p"] = plain_fn(holder["p"])
        seconds = (time.perf_counter() - start) / calls
        jax.block_until_ready(holder["p"])
        return seconds

    with ours.partitioner.context():
        return {"forward": lambda: timing.per_call(lambda: forward(params), calls),
                "forward_backward": lambda: timing.per_call(lambda: grads_fn(params), calls),
                "optimizer": lambda: timing.per_call(run_update, calls),
                "step_plain": lambda: timing.per_call(run_plain, calls),
                "step_trainer": lambda: ours.time(calls),
                "dispatch": dispatch_seconds}


def gemm_phases(tokens: int, d_model: int, d_ff: int, calls: int) -> tuple[dict, dict]:
    """The feed-forward matrix products and their two backward forms, each side on the same
    random float32 operands; ({phase: ours}, {phase: torch})."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x, w, dy = (rng.standard_normal(shape, dtype=np.float32)
                for shape in ((tokens, d_model), (d_model, d_ff), (tokens, d_ff)))
    products = {"gemm_forward": (lambda a, b: a @ b, (x, w)),
                "gemm_input_grad": (lambda a, b: a @ b.T, (dy, w)),
                "gemm_weight_grad": (lambda a, b: a.T @ b, (x, dy))}

    def timed(product, operands):
        return lambda: timing.per_call(lambda: product(*operands), calls)

    ours = {name: timed(jax.jit(product), [jax.device_put(a) for a in operands])
            for name, (product, operands) in products.items()}
    theirs = {name: timed(product, [torch.from_numpy(a) for a in operands])
              for name, (product, operands) in products.items()}
    return ours, theirs


def op_profile(ours: Ours, grads_fn, top: int = 12) -> dict:
    """Where one forward + backward call spends its time, per XLA operation: jax's profiler
    trace (Perfetto JSON) of one call, its op events summed by kind (the op name less its
    ".N" suffix: ynn_fusion, dot, copy_bitcast_fusion, ...) and the slowest ops with the
    model code they come from (the HLO's op_name metadata). `grads_fn`: the forward_backward
    phase's jitted function, warmed here again on the trainer's current parameters."""
    params = ours.state["params"]
    with ours.partitioner.context():
        for _ in range(2):
            jax.block_until_ready(grads_fn(params))
        with tempfile.TemporaryDirectory() as folder:
            with jax.profiler.trace(folder, create_perfetto_trace=True):
                jax.block_until_ready(grads_fn(params))
            (trace,) = Path(folder).rglob("*.trace.json.gz")
            events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
        hlo = grads_fn.lower(params).compile().as_text()
    origin = {}  # every HLO instruction -> the model code it comes from (None: no metadata)
    for line in hlo.splitlines():
        name = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
        if name:
            code = re.search(r'op_name="([^"]+)"', line)
            origin[name.group(1)] = code and code.group(1)
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in events:  # the op events: complete events named as an HLO instruction
        if event.get("ph") == "X" and event.get("name") in origin:
            per_op[event["name"]] += event.get("dur", 0) / 1e6
    total = sum(per_op.values())
    per_kind: dict[str, float] = collections.defaultdict(float)
    for name, seconds in per_op.items():
        per_kind[re.sub(r"\.\d+$", "", name)] += seconds
    slowest = sorted(per_op.items(), key=lambda item: -item[1])[:top]
    return {"ops_seconds": round(total, 6), "ops": len(per_op),
            "by_kind": {kind: {"seconds": round(s, 6), "share": round(s / total, 3)}
                        for kind, s in sorted(per_kind.items(), key=lambda item: -item[1])[:top]},
            "slowest": [{"op": name, "seconds": round(s, 6), "from": origin.get(name)} for name, s in slowest]}


def hf_phases(hf: HF, calls: int) -> dict:
    torch = hf.torch

    def timed(fn):
        def run():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            return (time.perf_counter() - start) / calls
        return run

    def forward():
        with torch.no_grad():
            hf.model(**hf.inputs)

    def forward_backward():
        hf.model(**hf.inputs).loss.backward()

    forward_backward()  # gradients exist for the optimizer phase
    return {"forward": timed(forward), "forward_backward": timed(forward_backward),
            "optimizer": timed(hf.optimizer.step), "step_plain": timed(hf.step)}


def shape(family: str, args: argparse.Namespace) -> dict:
    """train_throughput's CPU shape of the family with the shape flags given applied: the
    config's fields plus batch and length."""
    spec = dict(SIZES[family]["cpu"])
    for flag, fields in [*SHAPE_FIELDS[family].items(), ("batch", ("batch",)), ("length", ("length",))]:
        if getattr(args, flag) is not None:
            spec.update(dict.fromkeys(fields, getattr(args, flag)))
    if family == "t5":
        spec["head_dim"] = spec["d_model"] // spec["num_heads"]
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(SHAPE_FIELDS), default="t5")
    parser.add_argument("--d_model", type=int, default=None,
                        help="the width (default, as for every shape flag: train_throughput's CPU shape)")
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--d_ff", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None, help="t5: encoder and decoder layers each")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--length", type=int, default=None, help="t5: encoder and decoder tokens each")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch_threads", type=int, default=None, help="default: os.cpu_count()")
    parser.add_argument("--op_profile", action="store_true",
                        help="also trace one forward + backward call of ours: time per XLA op kind")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    load_before = timing.load_average()
    spec = shape(args.family, args)
    config, model, batch, _ = build(args.family, {**spec, "dtype": "float32"})
    ours, hf = Ours(model, batch), HF(args.family, config, batch, "cpu")
    grads_fn = jax.jit(jax.grad(loss_fn(ours)))  # the forward_backward phase, and what --op_profile traces
    ours_sides, hf_sides = ours_phases(ours, grads_fn, args.calls), hf_phases(hf, args.calls)
    fields = SHAPE_FIELDS[args.family]
    gemm_ours, gemm_hf = gemm_phases(spec["batch"] * spec["length"], spec[fields["d_model"][0]],
                                     spec[fields["d_ff"][0]], max(args.calls, 5))
    ours_sides, hf_sides = {**ours_sides, **gemm_ours}, {**hf_sides, **gemm_hf}
    phases = {}
    for name, ours_fn in ours_sides.items():
        sides = {"ours": ours_fn, **({"hf": hf_sides[name]} if name in hf_sides else {})}
        times = timing.interleave(sides, args.rounds)
        phases[name] = {side: timing.summary(t) for side, t in times.items()}
        if "hf" in times:
            phases[name]["ratio_ours_over_hf"] = timing.ratio(times["hf"], times["ours"])
    print(json.dumps({
        "benchmark": "train_step_profile",
        "family": args.family,
        "config": {flag: spec[fields[0]] for flag, fields in fields.items()}
                  | {"batch": spec["batch"], "length": spec["length"]},
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "torch_threads": torch.get_num_threads(),
        "model_flops_per_step": ours.flops,
        "measured": f"{args.rounds} interleaved rounds of {args.calls} calls per phase and side; seconds per call",
        "phases": phases,
        **({"op_profile_forward_backward": op_profile(ours, grads_fn)} if args.op_profile else {}),
        "load_average": timing.load_report(load_before),
    }))


if __name__ == "__main__":
    main()
