"""`make demo`'s training part: tiny ProtT5 on the bundled sample, on CPU, and what it learnt.

    python -m prottrans_jax.demo [--model_dir runs/demo/model] [--gin.KEY=VALUE ...]

Expects the sample corpus in runs/demo/corpus (`make demo` builds it first). Starts from
scratch (the model directory is the demo's own and is replaced), trains with
gin/experiments/prot_t5_tiny_sample.gin, and prints masked-token accuracy on the validation
split before and after training next to the frequency baseline: always predicting the
training split's most frequent residue.
"""

from __future__ import annotations

import collections
import shutil
import sys
import time

import numpy as np

from prottrans_jax import train as train_lib
from prottrans_jax.vocab import prot_t5_vocabulary

GIN_FILE = "gin/experiments/prot_t5_tiny_sample.gin"
TASK = "sample_prott5_denoise"


def frequency_baseline(feature_lengths: dict, batch_size: int) -> tuple[str, float]:
    """(most frequent training residue, its share of the validation split's masked tokens)."""
    train_counts = collections.Counter()
    batches = train_lib.train_batches(TASK, feature_lengths, batch_size, seed=0)
    for _ in range(100):
        batch = next(batches)
        targets = batch["decoder_target_tokens"][batch["decoder_loss_weights"] > 0]
        train_counts.update(targets[(targets >= 3) & (targets < 28)].tolist())
    top = train_counts.most_common(1)[0][0]
    hits = total = 0
    for batch in train_lib.eval_batches(TASK, "validation", feature_lengths, batch_size, None):
        masked = (batch["encoder_input_tokens"] >= 28) & (batch["decoder_loss_weights"] > 0)
        hits += int(np.sum(batch["decoder_target_tokens"][masked] == top))
        total += int(np.sum(masked))
    return prot_t5_vocabulary().piece(top).lstrip("▁"), hits / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    model_dir = "runs/demo/model"
    for flag in list(argv):
        if flag.startswith("--model_dir="):
            model_dir = flag.split("=", 1)[1]
            argv.remove(flag)
    shutil.rmtree(model_dir, ignore_errors=True)
    start = time.perf_counter()
    code, result = train_lib.run([f"--gin_file={GIN_FILE}", f"--gin.MODEL_DIR='{model_dir}'", *argv])
    if code != 0 or not result.get("eval"):
        return code or 1
    minutes = (time.perf_counter() - start) / 60
    first, last = result["eval"][0], result["eval"][-1]
    residue, baseline = frequency_baseline(result["feature_lengths"], result["host_batch"])
    print("\n=== tiny ProtT5 on the UniProtKB sample (validation split) ===")
    print(f"masked-token accuracy before training (step {first['step']}): {first['masked_accuracy']:.1%}")
    print(f"masked-token accuracy after training  (step {last['step']}): {last['masked_accuracy']:.1%}")
    print(f"frequency baseline (always '{residue}', the most frequent residue): {baseline:.1%}")
    print(f"target-token accuracy after training: {last['accuracy']:.1%}; wall time {minutes:.1f} min")
    print(f"\nTensorBoard: tensorboard --logdir {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
