"""`make demo`'s training part: tiny ProtT5 on the bundled sample, on CPU, and what it learnt.

    python -m prottrans_jax.demo [--model_dir runs/demo/model] [--gin.KEY=VALUE ...]

Expects the sample corpus in runs/demo/corpus (`make demo` builds it first). Starts from
scratch (the model directory is the demo's own and is replaced), trains with
gin/experiments/prot_t5_tiny_sample.gin, and prints masked-token accuracy (with its 95%
interval) and loss on the validation split before and after training, next to the frequency
baseline: always predicting the training split's most frequent residue, or its frequencies.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time

import numpy as np

from prottrans_jax import train as train_lib
from prottrans_jax.vocab import prot_t5_residue_ids, prot_t5_vocabulary

GIN_FILE = "gin/experiments/prot_t5_tiny_sample.gin"
TASK = "sample_prott5_denoise"
FIRST_RESIDUE, FIRST_SENTINEL = prot_t5_residue_ids()


@dataclasses.dataclass(frozen=True)
class FrequencyBaseline:
    """What the training split's residue frequencies alone score on the validation masks."""
    residue: str          # the most frequent training residue
    accuracy: float       # always predicting it
    cross_entropy: float  # predicting the training frequencies, in nats


def frequency_baseline(feature_lengths: dict, batch_size: int) -> FrequencyBaseline:
    train_counts = np.ones(FIRST_SENTINEL, np.float64)  # add-one smoothing
    train_counts[:FIRST_RESIDUE] = 0
    batches = train_lib.train_batches(TASK, feature_lengths, batch_size, seed=0)
    for _ in range(100):
        batch = next(batches)
        targets = batch["decoder_target_tokens"][batch["decoder_loss_weights"] > 0]
        targets = targets[(targets >= FIRST_RESIDUE) & (targets < FIRST_SENTINEL)]
        train_counts += np.bincount(targets, minlength=FIRST_SENTINEL)[:FIRST_SENTINEL]
    probabilities = train_counts / train_counts.sum()
    top = int(np.argmax(probabilities))
    hidden = []
    for batch in train_lib.eval_batches(TASK, "validation", feature_lengths, batch_size, None):
        masked = (batch["encoder_input_tokens"] >= FIRST_SENTINEL) & (batch["decoder_loss_weights"] > 0)
        hidden.append(batch["decoder_target_tokens"][masked])
    hidden = np.concatenate(hidden)
    hidden = hidden[hidden < FIRST_SENTINEL]
    return FrequencyBaseline(prot_t5_vocabulary().piece(top).lstrip("▁"), float(np.mean(hidden == top)),
                             float(-np.mean(np.log(np.maximum(probabilities[hidden], 1e-12)))))


def wilson_interval(accuracy: float, count: float) -> tuple[float, float]:
    """95% interval of an accuracy measured on `count` tokens."""
    z, n = 1.96, max(count, 1.0)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


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
    baseline = frequency_baseline(result["feature_lengths"], result["host_batch"])
    low, high = wilson_interval(last["masked_accuracy"], last["masked_tokens"])
    print("\n=== tiny ProtT5 on the UniProtKB sample (validation split) ===")
    print(f"masked tokens: {int(last['masked_tokens'])} hidden residues")
    print(f"masked-token accuracy  step {first['step']}: {first['masked_accuracy']:.1%}   "
          f"step {last['step']}: {last['masked_accuracy']:.1%} (95% CI {low:.1%}-{high:.1%})")
    print(f"masked-token loss      step {first['step']}: {first['masked_loss']:.3f}   "
          f"step {last['step']}: {last['masked_loss']:.3f} nats")
    print(f"frequency baseline: always '{baseline.residue}' {baseline.accuracy:.1%}; "
          f"training-split frequencies {baseline.cross_entropy:.3f} nats")
    print(f"target-token accuracy (every residue, visible ones included) step {last['step']}: "
          f"{last['accuracy']:.1%}; wall time {minutes:.1f} min")
    verdict = "above" if low > baseline.accuracy else "not distinguishable from"
    print(f"masked-token accuracy is {verdict} the frequency baseline at 95% confidence.")
    print("What context alone predicts on the same masks: python benchmarks/masked_residue_baselines.py "
          f"--inputs_length {result['feature_lengths']['inputs']}")
    print(f"\nTensorBoard: tensorboard --logdir {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
