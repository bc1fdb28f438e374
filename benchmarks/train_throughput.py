"""Train-step throughput: our jitted T5 step vs Hugging Face T5ForConditionalGeneration.

    python benchmarks/train_throughput.py [--steps 10] [--size auto|cpu|base]

Same config (T5 1.0 ReLU, untied output layer, no dropout), same batch and lengths
(unpacked rows, every token a target), AdamW (lr 1e-4, weight decay 0.01 on both sides: the
optimizer both libraries ship), in one run. CPU: a small config in float32. GPU (when JAX
and torch both see one): T5-base size, 512 + 512 tokens, bfloat16 compute (ours: float32
params + bf16 compute; HF: torch.autocast bf16), plus MFU from the model-FLOPs formula of
prottrans_jax.models.encoder_decoder. Prints one JSON object; tokens are encoder + decoder
tokens per second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from prottrans_jax import partitioning  # noqa: E402
from prottrans_jax.models.encoder_decoder import EncoderDecoderModel  # noqa: E402
from prottrans_jax.models.t5 import T5Config  # noqa: E402
from prottrans_jax.trainer import Trainer, peak_flops_per_device  # noqa: E402

SIZES = {
    "cpu": dict(d_model=128, num_heads=4, head_dim=32, d_ff=512, num_encoder_layers=2,
                num_decoder_layers=2, dtype="float32", batch=8, length=128),
    "base": dict(d_model=768, num_heads=12, head_dim=64, d_ff=3072, num_encoder_layers=12,
                 num_decoder_layers=12, dtype="bfloat16", batch=32, length=512),
}


def make_batch(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(3, 28, (batch, length)).astype(np.int32)
    masked = rng.random((batch, length)) < 0.15
    inputs = np.where(masked, 127, targets).astype(np.int32)
    decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
            "decoder_target_tokens": targets, "decoder_loss_weights": np.ones_like(targets),
            "decoder_masked_weights": masked.astype(np.int32)}


def time_ours(config: T5Config, batch: dict, steps: int) -> tuple[float, float, float]:
    """(seconds per step, compile seconds, model FLOPs per step)."""
    model = EncoderDecoderModel(config, z_loss=0.0)
    partitioner = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
    trainer = Trainer(model, optax.adamw(1e-4, weight_decay=0.01), partitioner)
    state = trainer.init_state()
    flops = model.flops_per_batch(batch)
    with partitioner.context():
        device_batch = partitioner.host_local_batch_to_global(batch)
        metrics = trainer.new_metrics(device_batch)
        state, metrics = trainer.train_step(state, device_batch, metrics)  # compile
        state, metrics = trainer.train_step(state, device_batch, metrics)  # warm-up
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = trainer.train_step(state, device_batch, metrics)
        jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps, trainer.compile_seconds, flops


def time_hf(config: T5Config, batch: dict, steps: int, device: str) -> float:
    import torch
    from transformers import T5Config as HFConfig, T5ForConditionalGeneration

    hf_config = HFConfig(vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.head_dim,
                         d_ff=config.d_ff, num_layers=config.num_encoder_layers,
                         num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
                         feed_forward_proj="relu", dropout_rate=0.0, tie_word_embeddings=False,
                         decoder_start_token_id=0, pad_token_id=0)
    model = T5ForConditionalGeneration(hf_config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    tensors = {k: torch.as_tensor(v, dtype=torch.long, device=device) for k, v in batch.items()}
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16,
                              enabled=config.dtype == "bfloat16")

    def step():
        with autocast:
            out = model(input_ids=tensors["encoder_input_tokens"],
                        decoder_input_ids=tensors["decoder_input_tokens"],
                        labels=tensors["decoder_target_tokens"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", choices=["auto", *SIZES], default="auto")
    args = parser.parse_args()
    import torch

    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    size = args.size if args.size != "auto" else ("base" if on_gpu else "cpu")
    spec = dict(SIZES[size])
    batch_size, length = spec.pop("batch"), spec.pop("length")
    config = T5Config(vocab_size=128, feed_forward="relu", dropout_rate=0.0,
                      tie_word_embeddings=False, scale_decoder_outputs=False, **spec)
    batch = make_batch(batch_size, length)
    tokens = batch_size * 2 * length
    if not on_gpu:
        torch.set_num_threads(os.cpu_count() or 1)
    ours, compile_seconds, flops = time_ours(config, batch, args.steps)
    hf = time_hf(config, batch, args.steps, "cuda" if on_gpu else "cpu")
    peak = peak_flops_per_device()
    result = {
        "benchmark": "train_throughput",
        "device": jax.devices()[0].device_kind,
        "host": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "size": size,
        "config": {**spec, "batch": batch_size, "inputs_length": length, "targets_length": length},
        "optimizer": "AdamW lr 1e-4 wd 0.01 (optax.adamw / torch.optim.AdamW)",
        "steps_timed": args.steps,
        "ours_tokens_per_second": tokens / ours,
        "hf_tokens_per_second": tokens / hf,
        "ratio_ours_over_hf": hf / ours,
        "ours_step_seconds": ours,
        "hf_step_seconds": hf,
        "ours_compile_seconds": compile_seconds,
        "model_flops_per_step": flops,
    }
    if peak:
        result["ours_mfu"] = flops / ours / peak
        result["hf_mfu"] = flops / hf / peak
    print(json.dumps(result))


if __name__ == "__main__":
    main()
