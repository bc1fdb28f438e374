"""Prints one decoded, packed batch per objective of a corpus (the demo's window into the data).

python -m tasks.show_batches --corpus_dir runs/demo/corpus --corpus_name sample
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from prottrans_jax.data.dataset import get_batches, get_task, task_feature_lengths
from prottrans_jax.errors import USER_ERRORS, first_line
from tasks.corpus import OBJECTIVES, register_corpus


def _segments(tokens: np.ndarray, segment_ids: np.ndarray) -> list[np.ndarray]:
    return [tokens[segment_ids == s] for s in np.unique(segment_ids) if s != 0]


def describe_batch(task_name: str, batch: dict[str, np.ndarray], max_chars: int = 100) -> str:
    """Human-readable batch: per row and packed protein, the decoded inputs and targets."""
    task = get_task(task_name)
    vocabulary = task.output_features["targets"].vocabulary
    if "perm_mask" in batch:  # XLNet's permutation LM: one protein per row, never packed
        return _describe_permutation_batch(task_name, batch, vocabulary, max_chars)
    if "encoder_input_tokens" not in batch:  # a causal LM stream (data/stream.py): one row each
        return "\n".join([f"== {task_name}: {batch['decoder_input_tokens'].shape} rows, each a stream"] + [
            f"row {row}: " + vocabulary.decode(tokens.tolist()).replace(" ", "")[:max_chars]
            for row, tokens in enumerate(batch["decoder_input_tokens"])])
    side = "decoder" if "decoder_target_tokens" in batch else "encoder"  # encoder-only models
    inputs_key = "encoder_input_tokens"
    targets_key, target_segments_key = f"{side}_target_tokens", f"{side}_segment_ids"
    hidden_key = "decoder_masked_weights" if side == "decoder" else "encoder_loss_weights"
    lines = []
    shapes = ", ".join(f"{k} {v.shape}" for k, v in sorted(batch.items()))
    fill = float(np.mean(batch["encoder_segment_ids"] > 0))
    lines.append(f"== {task_name}: {shapes}; encoder rows {100 * fill:.0f}% filled by packing")

    def show(ids):
        text = vocabulary.decode(ids.tolist()).replace(" ", "")
        text = text.replace("<extra_id_", "<").replace("[MASK]", "#")
        return text if len(text) <= max_chars else text[:max_chars] + "..."

    for row in range(batch[inputs_key].shape[0]):
        inputs = _segments(batch[inputs_key][row], batch["encoder_segment_ids"][row])
        targets = _segments(batch[targets_key][row], batch[target_segments_key][row])
        lines.append(f"row {row}: {len(inputs)} protein(s) packed")
        for k, (inp, tgt) in enumerate(zip(inputs, targets)):
            lines.append(f"  [{k + 1}] inputs  ({len(inp):3d}) {show(inp)}")
            lines.append(f"      targets ({len(tgt):3d}) {show(tgt)}")
            hidden = batch[hidden_key][row][batch[target_segments_key][row] == k + 1]
            lines.append(f"      {int(hidden.sum())} hidden position(s)")
    return "\n".join(lines)


def _describe_permutation_batch(task_name: str, batch: dict[str, np.ndarray], vocabulary, max_chars: int) -> str:
    """Per row: the framed protein and the residues its factorisation order predicts."""
    shapes = ", ".join(f"{k} {v.shape}" for k, v in sorted(batch.items()))
    lines = [f"== {task_name}: {shapes}; one protein per row"]
    for row in range(batch["encoder_input_tokens"].shape[0]):
        n = int(batch["attention_mask"][row].sum())
        tokens = batch["encoder_input_tokens"][row][:n]
        text = " ".join(vocabulary.piece(int(t)).lstrip("\u2581") for t in tokens)
        weights = batch["target_weights"][row] > 0
        positions = np.argmax(batch["target_mapping"][row][weights], axis=1)
        targets = vocabulary.decode(batch["target_tokens"][row][weights].tolist()).replace(" ", "")
        lines.append(f"row {row}: ({n:3d}) {text if len(text) <= max_chars else text[:max_chars] + '...'}")
        lines.append(f"      {int(weights.sum())} targets at {positions.tolist()}: {targets}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.show_batches", description=__doc__)
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument("--corpus_name", default="sample")
    parser.add_argument("--objective", choices=OBJECTIVES + ("all",), default="all")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--inputs_length", type=int, default=128)
    parser.add_argument("--targets_length", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    objectives = OBJECTIVES if args.objective == "all" else (args.objective,)
    try:
        names = register_corpus(args.corpus_name, args.corpus_dir, objectives)
        for name in names:
            lengths = task_feature_lengths(get_task(name), args.inputs_length, args.targets_length)
            batches = get_batches(name, args.split, lengths, args.batch_size, shuffle=True,
                                  seed=args.seed)
            batch = next(batches.as_numpy_iterator())
            print(describe_batch(name, batch))
    except USER_ERRORS as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
