"""One attention layer's products alone: our implementations against PyTorch's, forward and
forward + backward, with T5's relative-position bias or BERT's padding mask.

    python benchmarks/attention_speed.py                                   # 1 x 512 tokens, 12 heads x 64
    taskset -c 1 python benchmarks/attention_speed.py --torch_threads 1    # one core for both sides
    python benchmarks/attention_speed.py --length 2048 --implementations chunked --block_size 512
    python benchmarks/attention_speed.py --bias padding --batch 12 --length 320 --heads 8   # ProtBert's

Ours: `dot_product_attention` with each `--implementations` entry, the bias described by an
`AttentionBias`. `--bias t5` (the default): T5's encoder bias, a 12 x 32 table and the
positions; the gradient is taken with respect to query, key, value and the table; PyTorch's
side is the product as Hugging Face's T5 computes it (the bias gathered from the table by
bucket, added to q k^T, softmax in float32, times v). `--bias padding`: BERT's, the last
quarter of every row's keys padding (a batch of proteins of mixed lengths), queries scaled
by 1/sqrt(head_dim) beforehand; gradients for query, key and value; two PyTorch sides, the
two attentions Hugging Face's BertModel offers: `pytorch`,
`torch.nn.functional.scaled_dot_product_attention` (its default, "sdpa": a fused kernel on
the CPU too) and `pytorch_eager` (q k^T, mask, softmax, times v). float32 on the CPU. The
sides' calls are interleaved, `--rounds` rounds of `--calls` calls after two warm-up calls.
Prints one JSON object, with the machine's load.
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


BIASES = ("t5", "padding")


def padding_validity(batch: int, length: int) -> np.ndarray:
    """(batch, length) bool: the keys that are real tokens, all but each row's last quarter."""
    valid = np.ones((batch, length), bool)
    valid[:, length - length // 4:] = False
    return valid


def operand_names(bias: str) -> tuple[str, ...]:
    """What the gradient is taken with respect to."""
    return ("query", "key", "value", "table") if bias == "t5" else ("query", "key", "value")


def ours(implementation: str, operands: dict, bias: str, block_size: int, calls: int) -> dict:
    """{"forward", "forward_backward"}: callables returning seconds per call; "output": the
    forward's result as numpy, to check against PyTorch's."""
    length = operands["query"].shape[1]
    positions = jnp.arange(length)[None]
    valid = jnp.asarray(padding_validity(operands["query"].shape[0], length))

    def attend(query, key, value, table=None):
        if bias == "t5":
            logit_bias = AttentionBias.create(length, length, relative_table=table, query_positions=positions,
                                              key_positions=positions, num_buckets=NUM_BUCKETS,
                                              max_distance=MAX_DISTANCE, bidirectional=True)
        else:
            logit_bias = AttentionBias.create(length, length, key_valid=valid)
        return dot_product_attention(query, key, value, logit_bias, implementation=implementation,
                                     block_size=block_size)

    names = operand_names(bias)
    args = tuple(jnp.asarray(operands[name]) for name in names)
    forward = jax.jit(attend)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(attend(*a) ** 2), argnums=tuple(range(len(names)))))
    return {"forward": lambda: timing.per_call(lambda: forward(*args), calls),
            "forward_backward": lambda: timing.per_call(lambda: grads(*args), calls),
            "output": lambda: np.asarray(forward(*args))}


def pytorch(operands: dict, bias: str, calls: int) -> dict[str, dict]:
    """{side: the same two phases and "output" in PyTorch}: for `t5`, "pytorch" as Hugging
    Face's T5Attention computes it; for `padding`, "pytorch" (SDPA) and "pytorch_eager"."""
    import torch

    batch, length = operands["query"].shape[:2]
    names = operand_names(bias)
    tensors = {name: torch.tensor(operands[name], requires_grad=True) for name in names}

    def t5():
        offsets = np.arange(length)[None, :] - np.arange(length)[:, None]
        buckets = torch.tensor(np.asarray(relative_position_bucket(
            jnp.asarray(offsets), bidirectional=True, num_buckets=NUM_BUCKETS, max_distance=MAX_DISTANCE)))

        def attend():
            query, key, value, table = (tensors[n] for n in names)
            logits = torch.einsum("bqhd,bkhd->bhqk", query, key) + table[:, buckets].unsqueeze(0)
            weights = torch.softmax(logits.float(), dim=-1).type_as(logits)
            return torch.einsum("bhqk,bkhd->bqhd", weights, value)
        return attend

    valid = torch.from_numpy(padding_validity(batch, length))[:, None, None, :]  # (b, 1, 1, k)

    def heads_first():
        return (tensors[n].transpose(1, 2) for n in names)  # (b, h, l, d), as Hugging Face's BERT

    def sdpa():
        query, key, value = heads_first()
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=valid,
                                                                scale=1.0).transpose(1, 2)

    def eager():
        query, key, value = heads_first()
        logits = (query @ key.transpose(-1, -2)).masked_fill(~valid, torch.finfo(query.dtype).min)
        return (torch.softmax(logits, dim=-1) @ value).transpose(1, 2)

    def phases(attend):
        def forward():
            with torch.no_grad():
                attend()

        def forward_backward():
            for tensor in tensors.values():
                tensor.grad = None
            (attend() ** 2).sum().backward()

        def output():
            with torch.no_grad():
                return attend().numpy()

        return {"forward": lambda: timing.per_call(forward, calls),
                "forward_backward": lambda: timing.per_call(forward_backward, calls), "output": output}

    if bias == "t5":
        return {"pytorch": phases(t5())}
    return {"pytorch": phases(sdpa), "pytorch_eager": phases(eager)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--implementations", default="xla,chunked", help="comma-separated")
    parser.add_argument("--block_size", type=int, default=512, help="chunked's tiles")
    parser.add_argument("--bias", choices=BIASES, default="t5",
                        help="t5: T5's relative-position bias; padding: BERT's padding mask")
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
    if args.bias == "t5":
        operands["table"] = rng.standard_normal((args.heads, NUM_BUCKETS), np.float32)
    else:  # BERT scales the queries before attention (dot_product_attention does not)
        operands["query"] *= args.head_dim ** -0.5

    references = pytorch(operands, args.bias, args.calls)
    # Once: every implementation is checked against it (the sides compute the same thing, else
    # the timing compares nothing).
    expected = {side: reference.pop("output")() for side, reference in references.items()}
    phases, differences = {}, {}
    for implementation in args.implementations.split(","):
        mine = ours(implementation, operands, args.bias, args.block_size, args.calls)
        output = mine.pop("output")()
        differences[implementation] = max(float(np.max(np.abs(output - e))) for e in expected.values())
        for phase, fn in mine.items():
            times = timing.interleave({"ours": fn, **{side: r[phase] for side, r in references.items()}},
                                      args.rounds)
            phases[f"{implementation}/{phase}"] = {
                "ours": timing.summary(times["ours"]),
                **{side: timing.summary(times[side]) for side in references},
                **{f"ratio_ours_over_{side}": timing.ratio(times[side], times["ours"]) for side in references}}
    result = {
        "benchmark": "attention_speed", "backend": jax.default_backend(),
        "shape": {"batch": args.batch, "length": args.length, "heads": args.heads, "head_dim": args.head_dim},
        "bias": args.bias,
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
