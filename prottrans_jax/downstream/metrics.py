"""Accuracy (Q3/Q8/Q10/Q2) with uncertainty, MCC, per-class accuracy and confusion matrices.

Uncertainty is a bootstrap over proteins (1,000 resamples, fixed seed): residues of one chain
are not independent, so resampling residues would understate the interval. Per-residue Q3/Q8
is the fraction of all scored residues predicted correctly (residues pooled, as in the paper).
"""

import numpy as np

BOOTSTRAP_SAMPLES = 1000


def bootstrap_ratio(numerators, denominators, samples=BOOTSTRAP_SAMPLES, seed=0):
    """sum(num)/sum(den) with a percentile 95% interval and standard error over resampled items."""
    numerators = np.asarray(numerators, dtype=np.float64)
    denominators = np.asarray(denominators, dtype=np.float64)
    value = numerators.sum() / denominators.sum()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(numerators), size=(samples, len(numerators)))
    resampled = numerators[picks].sum(1) / np.maximum(denominators[picks].sum(1), 1e-12)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {
        "value": float(value),
        "ci95": [float(low), float(high)],
        "stderr": float(resampled.std(ddof=1)),
    }


def residue_accuracy(predictions, labels, masks):
    """Q3/Q8 over the residues with mask True; interval by bootstrapping proteins."""
    correct = [int(((p == y) & m).sum()) for p, y, m in zip(predictions, labels, masks)]
    scored = [int(m.sum()) for m in masks]
    keep = [i for i, s in enumerate(scored) if s > 0]
    result = bootstrap_ratio([correct[i] for i in keep], [scored[i] for i in keep])
    result.update(n_proteins=len(keep), n_residues=int(sum(scored)))
    return result


def protein_accuracy(predictions, labels):
    """Q10/Q2 over proteins with a known label (label >= 0)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    known = labels >= 0
    result = bootstrap_ratio(
        (predictions[known] == labels[known]).astype(float), np.ones(int(known.sum()))
    )
    result.update(n_proteins=int(known.sum()))
    return result


def mcc(predictions, labels):
    """Matthews correlation coefficient of a binary task (labels 0/1; -1 ignored)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    known = labels >= 0
    p, y = predictions[known] == 1, labels[known] == 1
    tp, tn = float(np.sum(p & y)), float(np.sum(~p & ~y))
    fp, fn = float(np.sum(p & ~y)), float(np.sum(~p & y))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / denominator


def bootstrap_mcc(predictions, labels, samples=BOOTSTRAP_SAMPLES, seed=0):
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    known = np.flatnonzero(labels >= 0)
    rng = np.random.default_rng(seed)
    values = [
        mcc(predictions[pick], labels[pick])
        for pick in (known[rng.integers(0, len(known), len(known))] for _ in range(samples))
    ]
    low, high = np.percentile(values, [2.5, 97.5])
    return {
        "value": float(mcc(predictions, labels)),
        "ci95": [float(low), float(high)],
        "stderr": float(np.std(values, ddof=1)),
        "n_proteins": int(len(known)),
    }


def confusion_matrix(predictions, labels, num_classes):
    """Rows: true class, columns: predicted class; entries with label < 0 are skipped."""
    predictions = (
        np.concatenate([np.atleast_1d(p) for p in predictions])
        if isinstance(predictions, list)
        else np.asarray(predictions)
    )
    labels = (
        np.concatenate([np.atleast_1d(y) for y in labels])
        if isinstance(labels, list)
        else np.asarray(labels)
    )
    known = labels >= 0
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels[known], predictions[known]), 1)
    return matrix


def per_class_accuracy(matrix, class_names):
    """Recall per true class (the diagonal over row sums); None for classes never seen."""
    totals = matrix.sum(1)
    return {
        name: (float(matrix[i, i] / totals[i]) if totals[i] else None)
        for i, name in enumerate(class_names)
    }


def masked_flat(sequences_of_values, masks):
    """Concatenates per-protein arrays, keeping only mask-True positions."""
    return np.concatenate([np.asarray(v)[m] for v, m in zip(sequences_of_values, masks)])
