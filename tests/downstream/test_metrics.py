"""Metrics against hand-computed cases."""

import numpy as np
import pytest

from prottrans_jax.downstream import metrics


def test_residue_accuracy_pools_scored_residues_only():
    predictions = [np.array([0, 1, 2, 0]), np.array([1, 1])]
    labels = [np.array([0, 1, 1, 2]), np.array([1, 0])]
    masks = [np.array([True, True, True, False]), np.array([True, True])]
    # Scored: protein 1 -> 2 of 3 correct (the masked wrong one ignored); protein 2 -> 1 of 2.
    result = metrics.residue_accuracy(predictions, labels, masks)
    assert result["value"] == pytest.approx(3 / 5)
    assert result["n_residues"] == 5 and result["n_proteins"] == 2
    low, high = result["ci95"]
    assert 0 <= low <= result["value"] <= high <= 1


def test_bootstrap_interval_shrinks_with_more_proteins():
    rng = np.random.default_rng(0)
    small = metrics.protein_accuracy(rng.integers(0, 2, 50), np.zeros(50, int))
    large = metrics.protein_accuracy(rng.integers(0, 2, 5000), np.zeros(5000, int))
    width = lambda r: r["ci95"][1] - r["ci95"][0]
    assert width(large) < width(small) / 5
    # Binomial standard error sqrt(p(1-p)/n) ~= 0.0071 for n=5000, p=0.5.
    assert large["stderr"] == pytest.approx(0.0071, abs=0.001)


def test_protein_accuracy_ignores_unknown_labels():
    result = metrics.protein_accuracy([1, 0, 1, 1], [1, -1, 0, 1])
    assert result["value"] == pytest.approx(2 / 3) and result["n_proteins"] == 3


def test_mcc_hand_computed():
    # tp=2, tn=1, fp=1, fn=1 -> (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6.
    predictions = [1, 1, 1, 0, 0, 0]
    labels = [1, 1, 0, 1, 0, -1]
    assert metrics.mcc(predictions, labels) == pytest.approx(1 / 6)
    assert metrics.mcc([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert metrics.mcc([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert metrics.mcc([1, 1], [1, 1]) == 0.0  # undefined -> 0


def test_confusion_matrix_and_per_class_accuracy():
    matrix = metrics.confusion_matrix([0, 1, 1, 2, 2, 0], [0, 1, 2, 2, -1, 1], 3)
    assert matrix.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    per_class = metrics.per_class_accuracy(matrix, ["H", "E", "C"])
    assert per_class == {"H": 1.0, "E": 0.5, "C": 0.5}
    assert metrics.per_class_accuracy(np.zeros((2, 2), int), ["a", "b"]) == {"a": None, "b": None}
