"""How predictable are ProtT5's hidden residues without a language model? Prints one JSON object.

    python benchmarks/masked_residue_baselines.py [--task sample_prott5_denoise] \
        [--inputs_length 256] [--train_batches N]

The yardstick for `make demo`'s masked-token accuracy: the same task, crops and masks as the
trainer's evaluation (the validation split, batch by batch), scored by predictors fitted on the
training split, from the least to the most context:
- frequency: always the most frequent training residue;
- composition: the most frequent visible residue of the same protein crop;
- local_context: multinomial logistic regression on the visible residues within +-3 and the
  crop's composition (what a small model can learn from unseen proteins);
- seven_mer_lookup: the residue seen most often in training between the same +-3 visible
  neighbours, else composition (memorising near-duplicate training proteins).
Accuracies carry 95% Wilson intervals; cross-entropies are in nats.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression

import tasks  # noqa: F401  (registers the sample tasks)
from prottrans_jax import training
from prottrans_jax.data.dataset import get_task, task_feature_lengths
from prottrans_jax.demo import wilson_interval
from prottrans_jax.vocab import prot_t5_residue_ids, prot_t5_vocabulary

FIRST_RESIDUE, FIRST_SENTINEL = prot_t5_residue_ids()
NUM_RESIDUES = FIRST_SENTINEL - FIRST_RESIDUE  # 20 standard + X B Z U O
WINDOW = 3
OUTSIDE, HIDDEN = NUM_RESIDUES, NUM_RESIDUES + 1


def masked_examples(batches, limit: int | None = None):
    """(neighbours [n, 2*WINDOW], composition [n, NUM_RESIDUES], target [n]) of every hidden residue.

    Neighbours are residue indices (0..NUM_RESIDUES-1), OUTSIDE (beyond the crop) or HIDDEN (also masked).
    """
    neighbours, compositions, targets = [], [], []
    for index, batch in enumerate(batches):
        if limit is not None and index >= limit:
            break
        inputs, labels = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
        segments, masked = batch["encoder_segment_ids"], batch["decoder_masked_weights"] > 0
        for row in range(inputs.shape[0]):
            for segment in np.unique(segments[row][segments[row] > 0]):
                tokens = inputs[row][segments[row] == segment]
                truth = labels[row][segments[row] == segment]
                hidden = masked[row][segments[row] == segment]
                residue = (tokens >= FIRST_RESIDUE) & (tokens < FIRST_SENTINEL) & ~hidden
                code = np.where(hidden, HIDDEN, np.where(residue, tokens - FIRST_RESIDUE, OUTSIDE))
                composition = np.bincount(code[residue], minlength=NUM_RESIDUES)[:NUM_RESIDUES].astype(np.float32)
                composition /= max(composition.sum(), 1.0)
                padded = np.concatenate([[OUTSIDE] * WINDOW, code, [OUTSIDE] * WINDOW])
                for i in np.nonzero(hidden)[0]:
                    if not FIRST_RESIDUE <= truth[i] < FIRST_SENTINEL:
                        continue
                    window = padded[i:i + 2 * WINDOW + 1]
                    neighbours.append(np.delete(window, WINDOW))
                    compositions.append(composition)
                    targets.append(truth[i] - FIRST_RESIDUE)
    return np.array(neighbours), np.array(compositions), np.array(targets)


def features(neighbours: np.ndarray, compositions: np.ndarray) -> np.ndarray:
    one_hot = np.eye(HIDDEN + 1, dtype=np.float32)[neighbours].reshape(len(neighbours), -1)
    return np.concatenate([one_hot, compositions], axis=1)


def score(predictions: np.ndarray, targets: np.ndarray, probabilities: np.ndarray | None = None) -> dict:
    accuracy = float(np.mean(predictions == targets))
    result = {"accuracy": round(accuracy, 4),
              "accuracy_95ci": [round(x, 4) for x in wilson_interval(accuracy, len(targets))]}
    if probabilities is not None:
        chosen = np.clip(probabilities[np.arange(len(targets)), targets], 1e-9, 1.0)
        result["cross_entropy"] = round(float(-np.mean(np.log(chosen))), 4)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sample_prott5_denoise")
    parser.add_argument("--inputs_length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--train_batches", type=int, default=None,
                        help="training batches to fit on (default 128,000 / inputs_length: "
                             "about 1M tokens, 150k hidden residues)")
    args = parser.parse_args(argv)
    args.train_batches = args.train_batches or 128_000 // args.inputs_length
    lengths = task_feature_lengths(get_task(args.task), args.inputs_length)
    train_n, train_comp, train_y = masked_examples(
        training.train_batches(args.task, lengths, args.batch_size, seed=0), args.train_batches)
    val_n, val_comp, val_y = masked_examples(
        training.eval_batches(args.task, "validation", lengths, args.batch_size, None))

    prior = np.bincount(train_y, minlength=NUM_RESIDUES).astype(np.float64) + 1.0
    prior /= prior.sum()
    frequency = np.full(len(val_y), np.argmax(prior))
    composition = np.argmax(val_comp + 1e-6 * prior, axis=1)  # ties: the more frequent residue
    smoothed = 0.5 * val_comp + 0.5 * prior  # a crop's composition, shrunk towards the prior

    model = LogisticRegression(max_iter=300).fit(features(train_n, train_comp), train_y)
    probabilities = np.zeros((len(val_y), NUM_RESIDUES))
    probabilities[:, model.classes_] = model.predict_proba(features(val_n, val_comp))

    seen = collections.defaultdict(collections.Counter)
    for context, target in zip(map(bytes, train_n.astype(np.uint8)), train_y):
        seen[context][target] += 1
    lookup = np.array([seen[c].most_common(1)[0][0] if c in seen else fallback
                       for c, fallback in zip(map(bytes, val_n.astype(np.uint8)), composition)])

    vocabulary = prot_t5_vocabulary()
    report = {
        "task": args.task, "inputs_length": args.inputs_length,
        "train_masked_residues": int(len(train_y)), "validation_masked_residues": int(len(val_y)),
        "most_frequent_residue": vocabulary.piece(int(np.argmax(prior)) + FIRST_RESIDUE).lstrip("▁"),
        "frequency": score(frequency, val_y, np.tile(prior, (len(val_y), 1))),
        "composition": score(composition, val_y, smoothed),
        "local_context": score(np.argmax(probabilities, axis=1), val_y, probabilities),
        "seven_mer_lookup": score(lookup, val_y),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
