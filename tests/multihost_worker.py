"""One process of a local multi-host job, for tests/test_multihost.py.

    python -m tests.multihost_worker steps --coordinator_address 127.0.0.1:PORT \
        --num_processes 2 --process_id I --steps 4 --out DIR
    python -m tests.multihost_worker train --coordinator_address 127.0.0.1:PORT \
        --num_processes 2 --process_id I -- --gin_file=... --gin.MODEL_DIR="'...'"

`steps`: trains tiny T5 with the Trainer for a few steps under each rule set (data parallel,
FSDP); every process feeds only its own rows of each global batch (the rows
`Partitioner.input_shard()` assigns it). Process 0 writes the gathered parameters and losses
to DIR/<rule set>.npz, for comparison with a single-process run on the same global batches.

`train`: joins the job with prottrans_jax.distributed, then runs the real entry point
(`python -m prottrans_jax.train` with the given flags), as train.py does with the
--coordinator_address / --num_processes / --process_id flags.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from prottrans_jax import distributed

RULE_SET_NAMES = ("data_parallel", "fsdp")
GLOBAL_ROWS = 8
LENGTH = 24


def tiny_model():
    from prottrans_jax.models.encoder_decoder import EncoderDecoderModel
    from prottrans_jax.models.t5 import T5Config

    # Dropout on: the masks must also agree between the single- and multi-process runs.
    config = T5Config(vocab_size=128, d_model=32, num_heads=4, head_dim=8, d_ff=64,
                      num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1,
                      dtype="float32", tie_word_embeddings=False)
    return EncoderDecoderModel(config)


def global_batch(step: int) -> dict[str, np.ndarray]:
    """Global batch `step`: a ProtT5-denoiser-shaped packed batch (two segments per row,
    15% sentinels), the same on every process."""
    rng = np.random.default_rng(1000 + step)
    targets = rng.integers(3, 28, (GLOBAL_ROWS, LENGTH)).astype(np.int32)
    segments = np.ones((GLOBAL_ROWS, LENGTH), np.int32)
    segments[:, LENGTH // 2:] = 2
    segments[:, -3:] = 0
    positions = np.concatenate([np.arange(LENGTH // 2), np.arange(LENGTH - LENGTH // 2)])
    positions = np.tile(positions, (GLOBAL_ROWS, 1)).astype(np.int32) * (segments > 0)
    targets = targets * (segments > 0)
    masked = (rng.random(targets.shape) < 0.15) & (segments > 0)
    inputs = np.where(masked, 127, targets) * (segments > 0)
    decoder_inputs = np.roll(targets, 1, axis=1) * (positions > 0)
    return {"encoder_input_tokens": inputs, "encoder_segment_ids": segments,
            "encoder_positions": positions, "decoder_input_tokens": decoder_inputs,
            "decoder_target_tokens": targets,
            "decoder_loss_weights": (segments > 0).astype(np.int32),
            "decoder_masked_weights": masked.astype(np.int32),
            "decoder_segment_ids": segments, "decoder_positions": positions}


def train_steps(partitioner, steps: int) -> tuple[dict[str, np.ndarray], list[float]]:
    """Trains tiny T5 (ProtT5's Adafactor) for `steps`; returns the full parameters, by
    name, and each step's loss. Each process feeds its own rows of each global batch."""
    import jax
    from jax.experimental import multihost_utils

    from prottrans_jax import optimizers, partitioning
    from prottrans_jax.models.base import summarize
    from prottrans_jax.trainer import Trainer

    optimizer, _ = optimizers.make_optimizer("adafactor", learning_rate=0.05)
    trainer = Trainer(tiny_model(), optimizer, partitioner, num_microbatches=1, seed=0)
    state = trainer.init_state()
    shard_index, num_shards = partitioner.input_shard()
    print(f"process {jax.process_index()} reads input shard {shard_index} of {num_shards}",
          flush=True)
    rows = GLOBAL_ROWS // num_shards
    losses = []
    with partitioner.context():
        for step in range(steps):
            mine = {k: v[shard_index * rows:(shard_index + 1) * rows]
                    for k, v in global_batch(step).items()}
            batch = partitioner.host_local_batch_to_global(mine)
            state, metrics = trainer.train_step(state, batch, trainer.new_metrics(batch))
            losses.append(summarize(metrics)["loss"])
    # FSDP shards live on both processes: gather whole arrays on every host.
    params = multihost_utils.process_allgather(state["params"], tiled=True)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {partitioning.path_to_name(path): np.asarray(x) for path, x in flat}, losses


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = []
    if "--" in argv:
        rest = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["steps", "train"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default=None)
    distributed.add_flags(parser)
    args = parser.parse_args(argv)
    how = distributed.initialize_from_flags(args)

    import jax

    print(f"[{how}] {distributed.environment_summary()}", flush=True)
    if args.mode == "train":
        from prottrans_jax import train

        return train.main(rest)

    from prottrans_jax import partitioning

    for name in RULE_SET_NAMES:
        partitioner = partitioning.Partitioner(
            mesh_shape=(-1, 1), logical_axis_rules=partitioning.RULE_SETS[name])
        params, losses = train_steps(partitioner, args.steps)
        if jax.process_index() == 0:
            np.savez(os.path.join(args.out, f"{name}.npz"), losses=np.asarray(losses), **params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
