"""Where a ProtT5 train step's time goes, ours against PyTorch, phase by phase, in one process.

    python benchmarks/train_step_profile.py                          # train_throughput's CPU shape
    python benchmarks/train_step_profile.py --d_model 512 --heads 8 --d_ff 2048 --batch 2 --length 512
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false python benchmarks/train_step_profile.py

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
  blocked on after timing), i.e. the Python and dispatch overhead per step.
Prints one JSON object (with the load average: on a busy machine ratios say little).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import optax  # noqa: E402

from benchmarks import timing  # noqa: E402
from benchmarks.train_throughput import HF, Ours, t5_batch  # noqa: E402
from prottrans_jax.models.encoder_decoder import EncoderDecoderModel  # noqa: E402
from prottrans_jax.models.t5 import T5Config  # noqa: E402


def per_call(fn, calls: int) -> float:
    """Seconds per call of fn (which returns something to block on), after the loop."""
    out = fn()
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def ours_phases(ours: Ours, calls: int) -> dict:
    model, batch = ours.trainer.model, ours.batch
    copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)  # noqa: E731
    params = copy(ours.state["params"])  # the trainer's own buffers are donated to its next step
    optimizer = optax.adamw(1e-4, weight_decay=0.01)

    def loss(p):
        return model.loss_and_metrics(p, batch, jax.random.key(0), True)[0]

    forward = jax.jit(loss)
    grads_fn = jax.jit(jax.grad(loss))
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
        return {"forward": lambda: per_call(lambda: forward(params), calls),
                "forward_backward": lambda: per_call(lambda: grads_fn(params), calls),
                "optimizer": lambda: per_call(run_update, calls),
                "step_plain": lambda: per_call(run_plain, calls),
                "step_trainer": lambda: ours.time(calls),
                "dispatch": dispatch_seconds}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d_model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d_ff", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="encoder and decoder tokens each")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch_threads", type=int, default=None, help="default: os.cpu_count()")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    load_before = timing.load_average()
    config = T5Config(vocab_size=128, feed_forward="relu", dropout_rate=0.0, tie_word_embeddings=False,
                      scale_decoder_outputs=False, d_model=args.d_model, num_heads=args.heads,
                      head_dim=args.d_model // args.heads, d_ff=args.d_ff, num_encoder_layers=args.layers,
                      num_decoder_layers=args.layers, dtype="float32")
    model = EncoderDecoderModel(config, z_loss=0.0)
    batch = t5_batch(args.batch, args.length)
    ours, hf = Ours(model, batch), HF("t5", config, batch, "cpu")
    ours_sides, hf_sides = ours_phases(ours, args.calls), hf_phases(hf, args.calls)
    phases = {}
    for name, ours_fn in ours_sides.items():
        sides = {"ours": ours_fn, **({"hf": hf_sides[name]} if name in hf_sides else {})}
        times = timing.interleave(sides, args.rounds)
        phases[name] = {side: timing.summary(t) for side, t in times.items()}
        if "hf" in times:
            phases[name]["ratio_ours_over_hf"] = timing.ratio(times["hf"], times["ours"])
    print(json.dumps({
        "benchmark": "train_step_profile",
        "config": {"d_model": args.d_model, "heads": args.heads, "d_ff": args.d_ff, "layers": args.layers,
                   "batch": args.batch, "length": args.length},
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "torch_threads": torch.get_num_threads(),
        "model_flops_per_step": ours.flops,
        "measured": f"{args.rounds} interleaved rounds of {args.calls} calls per phase and side; seconds per call",
        "phases": phases,
        "load_average": timing.load_report(load_before),
    }))


if __name__ == "__main__":
    main()
