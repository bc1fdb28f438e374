"""Each head learns a synthetic, separable task (and padding never changes real residues)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prottrans_jax.downstream import datasets, heads, training


def _synthetic_residue_set(n, seed):
    """The 3-state label is a function of the residue's own feature (separable)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 60, n)
    labels = [rng.integers(0, 3, L).astype(np.int8) for L in lengths]
    feats = [
        (np.eye(3)[y] * 2 + rng.normal(0, 0.3, (len(y), 3))).astype(np.float16) for y in labels
    ]
    data = datasets.ResidueSet(
        "synthetic",
        [f"p{i}" for i in range(n)],
        ["A" * L for L in lengths],
        labels,
        [np.ones(L, bool) for L in lengths],
        [(y * 2).astype(np.int8) for y in labels],
    )
    return data, feats


@pytest.mark.parametrize("head", ["cnn", "lr", "fnn", "lstm"])
def test_residue_head_learns_separable_task(head):
    train, train_x = _synthetic_residue_set(60, 0)
    test, test_x = _synthetic_residue_set(20, 1)
    config = training.TrainConfig(
        max_epochs=15, patience=3, learning_rate=1e-2, tokens_per_batch=256
    )
    result = training.train_residue_head(head, train, train_x, test, test_x, config, log=None)
    pred3, pred8 = training.predict_residues(head, result.params, test_x)
    q3 = np.mean(np.concatenate(pred3) == np.concatenate(test.ss3))
    q8 = np.mean(np.concatenate(pred8) == np.concatenate(test.ss8))
    assert q3 > 0.9 and q8 > 0.9, (q3, q8)
    assert result.history[0]["train_loss"] > result.history[-1]["train_loss"]


def test_cnn_ignores_padding():
    model = heads.CNNHead()
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 10, 5))
    params = model.init(jax.random.PRNGKey(1), x, jnp.ones((1, 10), bool))
    short = model.apply(params, x[:, :6], jnp.ones((1, 6), bool))["ss3"]
    padded_x = x.at[:, 6:].set(100.0)  # junk beyond the chain must not leak back
    mask = jnp.arange(10)[None] < 6
    padded = model.apply(params, padded_x, mask)["ss3"][:, :6]
    np.testing.assert_allclose(short, padded, rtol=1e-5, atol=1e-5)


def test_protein_head_learns_location_and_membrane():
    rng = np.random.default_rng(0)
    n = 400
    location = rng.integers(0, 10, n)
    membrane = np.where(rng.random(n) < 0.3, -1, location % 2)  # some unknown M/S labels
    x = np.eye(10)[location] + rng.normal(0, 0.2, (n, 10))
    data = datasets.ProteinSet(
        "s", [str(i) for i in range(n)], ["A"] * n, location, membrane, datasets.DEEPLOC_CLASSES
    )
    fit, test = np.arange(300), np.arange(300, 400)
    predictor, result = training.train_protein_head(
        x[fit], data.subset(fit), x[test], data.subset(test), training.PROTEIN_HEAD_TRAINING, log=None
    )
    location_pred, membrane_pred = predictor(x[test])
    assert np.mean(location_pred == location[test]) > 0.9
    known = membrane[test] >= 0
    assert np.mean(membrane_pred[known] == membrane[test][known]) > 0.9
