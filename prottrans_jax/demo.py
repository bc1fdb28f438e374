"""A tiny model trained on the bundled sample, on CPU, and what it learnt (`make demo`).

    python -m prottrans_jax.demo [--gin_file gin/experiments/prot_t5_tiny_sample.gin] \
        [--model_dir runs/demo/model] [--gin.KEY=VALUE ...]

Expects the sample corpus in runs/demo/corpus (`make demo` builds it first). Starts from
scratch (the model directory is the demo's own and is replaced), trains with the gin file
(ProtT5 by default; `gin/experiments/prot_<family>_tiny_sample.gin` for the others), and prints
masked-token accuracy (with its 95% interval) and loss on the validation split before and
after training, next to the frequency baseline: always predicting the training split's most
frequent residue, or its frequencies. Works for any family: the hidden positions are the
model's own `masked_targets`, and a model's own baselines (`metric_baselines`: ELECTRA's
discriminator against always "original") are printed after.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time

import numpy as np

from prottrans_jax import train as train_cli, training
from prottrans_jax.data.dataset import get_task

DEFAULT_GIN_FILE = "gin/experiments/prot_t5_tiny_sample.gin"
TRAIN_BATCHES = 300  # for the residue frequencies of the training split (hidden positions)


@dataclasses.dataclass(frozen=True)
class FrequencyBaseline:
    """What the training split's residue frequencies alone score on the validation masks."""
    residue: str          # the most frequent training residue
    accuracy: float       # always predicting it
    cross_entropy: float  # predicting the training frequencies, in nats


def _hidden_residues(model, batches, residue_ids: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Target ids of the hidden positions that are residues, over the batches."""
    found = []
    for index, batch in enumerate(batches):
        if limit is not None and index >= limit:
            break
        targets, weights = model.masked_targets(batch)
        hidden = targets[weights > 0]
        found.append(hidden[np.isin(hidden, residue_ids)])
    return np.concatenate(found) if found else np.zeros((0,), np.int32)


def frequency_baseline(model, task_name: str, feature_lengths: dict, batch_size: int
                       ) -> FrequencyBaseline:
    vocabulary = get_task(task_name).output_features["targets"].vocabulary
    residue_ids = np.append(vocabulary.residue_ids, vocabulary.encode("X"))
    size = vocabulary.vocab_size
    converter = model.feature_converter_cls
    train = _hidden_residues(model, training.train_batches(
        task_name, feature_lengths, batch_size, seed=0, converter_cls=converter),
        residue_ids, TRAIN_BATCHES)
    counts = np.bincount(train, minlength=size).astype(np.float64)
    counts[residue_ids] += 1.0  # add-one smoothing over the residues
    probabilities = counts / counts.sum()
    top = int(np.argmax(probabilities))
    hidden = _hidden_residues(model, training.eval_batches(
        task_name, "validation", feature_lengths, batch_size, None, converter_cls=converter),
        residue_ids)
    return FrequencyBaseline(vocabulary.decode([top]), float(np.mean(hidden == top)),
                             float(-np.mean(np.log(np.maximum(probabilities[hidden], 1e-12)))))


def wilson_interval(accuracy: float, count: float) -> tuple[float, float]:
    """95% interval of an accuracy measured on `count` tokens."""
    z, n = 1.96, max(count, 1.0)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def report(result: dict, baseline: FrequencyBaseline, minutes: float) -> str:
    """The demo's verdict: masked-token accuracy and loss against the frequency baseline."""
    first, last = result["eval"][0], result["eval"][-1]
    count = last["masked_accuracy_count"]
    low, high = wilson_interval(last["masked_accuracy"], count)
    verdict = "above" if low > baseline.accuracy else "not distinguishable from"
    # What the model's "masked" positions are (ProtTXL: every next residue of the stream).
    label = getattr(result["model"], "masked_label", "masked-token")
    lines = [
        f"\n=== tiny {result['model'].family} on {result['task']} (validation split) ===",
        f"{label} positions: {int(count)}",
        f"{label + ' accuracy':<22} step {first['step']}: {first['masked_accuracy']:.1%}   "
        f"step {last['step']}: {last['masked_accuracy']:.1%} (95% CI {low:.1%}-{high:.1%})",
        f"{label + ' loss':<22} step {first['step']}: {first['masked_loss']:.3f}   "
        f"step {last['step']}: {last['masked_loss']:.3f} nats",
        f"frequency baseline: always '{baseline.residue}' {baseline.accuracy:.1%}; "
        f"training-split frequencies {baseline.cross_entropy:.3f} nats",
        f"target-token accuracy (every scored target) step {last['step']}: "
        f"{last['accuracy']:.1%}; wall time {minutes:.1f} min",
        f"{label} accuracy is {verdict} the frequency baseline at 95% confidence.",
    ]
    return "\n".join(lines + _model_baselines(result["model"], first, last))


def _model_baselines(model, first: dict, last: dict) -> list[str]:
    """The lines of the model's own baselines (`metric_baselines`, e.g. ELECTRA's
    discriminator against always saying "original"), measured on the same evaluation."""
    lines = []
    for metric, label, value in getattr(model, "metric_baselines", lambda _: [])(last):
        low, high = wilson_interval(last[metric], last[f"{metric}_count"])
        verdict = "above" if low > value else "not distinguishable from"
        lines += [f"{metric:<22} step {first['step']}: {first[metric]:.1%}   step {last['step']}: "
                  f"{last[metric]:.1%} (95% CI {low:.1%}-{high:.1%}); baseline {label} {value:.1%}",
                  f"{metric} is {verdict} its baseline at 95% confidence."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prottrans_jax.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", default=DEFAULT_GIN_FILE)
    parser.add_argument("--model_dir", default="runs/demo/model")
    args, gin_flags = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    shutil.rmtree(args.model_dir, ignore_errors=True)
    start = time.perf_counter()
    code, result = train_cli.run([f"--gin_file={args.gin_file}",
                                  f"--gin.MODEL_DIR='{args.model_dir}'", *gin_flags])
    if code != 0 or not result.get("eval"):
        return code or 1
    minutes = (time.perf_counter() - start) / 60
    baseline = frequency_baseline(result["model"], result["task"], result["feature_lengths"],
                                  result["host_batch"])
    print(report(result, baseline, minutes))
    if result["model"].family == "prot_t5":
        print("What context alone predicts on the same masks: python "
              "benchmarks/masked_residue_baselines.py "
              f"--inputs_length {result['feature_lengths']['inputs']}")
    print(f"\nTensorBoard: tensorboard --logdir {args.model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
