"""One attention layer's products alone: our implementations against PyTorch's, forward and
forward + backward, with T5's relative-position bias (the encoder's, bidirectional).

    python benchmarks/attention_speed.py                                   # 1 x 512 tokens, 12 heads x 64
    taskset -c 1 python benchmarks/attention_speed.py --torch_threads 1    # one core for both sides
    python benchmarks/attention_speed.py --length 2048 --implementations chunked --block_size 512

Ours: `dot_product_attention` with each `--implementations` entry, the bias described by an
`AttentionBias` (a 12 x 32 table and the positions); the gradient is taken with respect to
query, key, value and the table. PyTorch's: the same product as Hugging Face's T5 computes it
(the bias gathered from the table by bucket, added to q k^T, softmax in float32, times v),
float32 on the CPU. Both sides' calls are interleaved, `--rounds` rounds of `--calls` calls
after two warm-up calls. Prints one JSON object, with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import timing  # noqa: E402
from prottrans_jax.models.attention_bias import AttentionBias, relative_position_bucket  # noqa: E402
from prottrans_jax.models.dot_product_attention import dot_product_attention  # noqa: E402

NUM_BUCKETS, MAX_DISTANCE = 32, 128  # T5's, as in gin/models/t5/*.gin


def ours(implementation: str, operands: dict, block_size: int, calls: int) -> dict:
    """{"forward", "forward_backward"}: callables returning seconds per call; "output": the
    forward's result as numpy, to check against PyTorch's."""
    length = operands["query"].shape[1]
    positions = jnp.arange(length)[None]

    def attend(query, key, value, table):
        bias = AttentionBias.create(length, length, relative_table=table, query_positions=positions,
                                    key_positions=positions, num_buckets=NUM_BUCKETS,
                                    max_distance=MAX_DISTANCE, bidirectional=True)
        return dot_product_attention(query, key, value, bias, implementation=implementation,
                                     block_size=block_size)

    args = tuple(jnp.asarray(operands[name]) for name in ("query", "key", "value", "table"))
    forward = jax.jit(attend)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(attend(*a) ** 2), argnums=(0, 1, 2, 3)))
    return {"forward": lambda: timing.per_call(lambda: forward(*args), calls),
            "forward_backward": lambda: timing.per_call(lambda: grads(*args), calls),
            "output": lambda: np.asarray(forward(*args))}


def pytorch(operands: dict, calls: int) -> dict:
    """The same two phases and "output" in PyTorch, as Hugging Face's T5Attention computes them."""
    import torch

    length = operands["query"].shape[1]
    offsets = np.arange(length)[None, :] - np.arange(length)[:, None]
    buckets = torch.tensor(np.asarray(relative_position_bucket(
        jnp.asarray(offsets), bidirectional=True, num_buckets=NUM_BUCKETS, max_distance=MAX_DISTANCE)))
    tensors = {name: torch.tensor(value, requires_grad=True) for name, value in operands.items()}

    def attend():
        query, key, value, table = (tensors[n] for n in ("query", "key", "value", "table"))
        bias = table[:, buckets].unsqueeze(0)  # (1, heads, q, k)
        logits = torch.einsum("bqhd,bkhd->bhqk", query, key) + bias
        weights = torch.softmax(logits.float(), dim=-1).type_as(logits)
        return torch.einsum("bhqk,bkhd->bqhd", weights, value)

    def forward():
        with torch.no_grad():
            attend()

    def forward_backward():
        for tensor in tensors.values():
            tensor.grad = None
        (attend() ** 2).sum().backward()

    def timed(fn):
        return lambda: timing.per_call(fn, calls)

    def output():
        with torch.no_grad():
            return attend().numpy()

    return {"forward": timed(forward), "forward_backward": timed(forward_backward), "output": output}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--implementations", default="xla,chunked", help="comma-separated")
    parser.add_argument("--block_size", type=int, default=512, help="chunked's tiles")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torch_threads", type=int, default=None, help="default: os.cpu_count()")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    load_before = timing.load_average()
    rng = np.random.default_rng(0)
    shape = (args.batch, args.length, args.heads, args.head_dim)
    operands = {name: rng.standard_normal(shape, np.float32) for name in ("query", "key", "value")}
    operands["table"] = rng.standard_normal((args.heads, NUM_BUCKETS), np.float32)

    reference = pytorch(operands, args.calls)
    expected = reference.pop("output")()  # once: every implementation is checked against it
    phases, differences = {}, {}
    for implementation in args.implementations.split(","):
        mine = ours(implementation, operands, args.block_size, args.calls)
        # The two sides compute the same thing (else the timing compares nothing).
        differences[implementation] = float(np.max(np.abs(mine.pop("output")() - expected)))
        for phase, fn in mine.items():
            times = timing.interleave({"ours": fn, "pytorch": reference[phase]}, args.rounds)
            phases[f"{implementation}/{phase}"] = {
                "ours": timing.summary(times["ours"]), "pytorch": timing.summary(times["pytorch"]),
                "ratio_ours_over_pytorch": timing.ratio(times["pytorch"], times["ours"])}
    result = {
        "benchmark": "attention_speed", "backend": jax.default_backend(),
        "shape": {"batch": args.batch, "length": args.length, "heads": args.heads, "head_dim": args.head_dim},
        "block_size": args.block_size, "torch_threads": torch.get_num_threads(),
        "measured": f"{args.rounds} interleaved rounds of {args.calls} calls per phase and side; "
                    "seconds per call; ratio > 1: ours faster",
        "phases": phases, "max_abs_difference_from_pytorch": differences,
        "load_average": timing.load_report(load_before),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
