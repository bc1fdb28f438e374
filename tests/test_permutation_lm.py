"""XLNet's permutation-LM features: static shapes, determinism, the factorisation-order
invariants, and, through our XLNet, that a prediction depends only on what its order allows."""

import functools

import jax
import numpy as np
import pytest

from prottrans_jax.data.permutation_lm import CLS_ID, SEP_ID, permutation_lm_features, sample_targets
from prottrans_jax.models.xlnet import XLNet, XLNetConfig, init_params

LENGTH, REUSE, PERM, PREDICT = 64, 32, 16, 11  # the official recipe (512, 256, 256, 85) scaled down


def protein(seed, length=LENGTH, padding=0):
    """<pad>s on the left, residues (ids 9..29), then <sep> <cls> (XLNet's framing)."""
    rng = np.random.default_rng(seed)
    tokens = np.full(length, 5, np.int32)
    tokens[padding:] = [*rng.integers(9, 30, length - padding - 2), SEP_ID, CLS_ID]
    return tokens


def features(seed, tokens=None, **kwargs):
    tokens = protein(seed) if tokens is None else tokens
    kwargs = {"reuse_len": REUSE, "perm_size": PERM, **kwargs}
    return tokens, permutation_lm_features(tokens, PREDICT, np.random.default_rng(seed), **kwargs)


def test_shapes_are_static_and_a_seed_gives_the_same_features():
    _, a = features(0)
    _, again = features(0)
    _, other = features(1)
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {
        "perm_mask": ((LENGTH, LENGTH), np.float32), "target_mapping": ((PREDICT, LENGTH), np.float32),
        "target": ((PREDICT,), np.int32), "target_weights": ((PREDICT,), np.float32)}
    for key in a:
        np.testing.assert_array_equal(a[key], again[key])
    assert not np.array_equal(a["perm_mask"], other["perm_mask"])
    # Few maskable positions: the same shapes, padding rows of weight 0.
    tokens = protein(2, padding=LENGTH - 8)  # 6 residues
    _, few = features(2, tokens, maskable=tokens != 5)
    assert few["target_mapping"].shape == (PREDICT, LENGTH)
    np.testing.assert_array_equal(few["target_weights"], [1] * 6 + [0] * (PREDICT - 6))
    assert not few["target_mapping"][6:].any() and not few["target"][6:].any()


@pytest.mark.parametrize("seed", range(8))
def test_each_target_sees_exactly_the_context_and_the_tokens_earlier_in_its_order(seed):
    tokens, f = features(seed)
    perm_mask = f["perm_mask"].astype(bool)
    visible = ~perm_mask
    positions = f["target_mapping"].argmax(-1)[f["target_weights"] > 0]
    assert len(positions) == PREDICT and len(set(positions)) == PREDICT
    np.testing.assert_array_equal(f["target"], tokens[positions])
    is_target = np.zeros(LENGTH, bool)
    is_target[positions] = True
    functional = np.isin(tokens, (SEP_ID, CLS_ID))
    context = ~is_target & ~functional
    assert not (is_target & functional).any()
    assert not visible[positions, positions].any()  # a target never sees itself
    reuse = np.arange(LENGTH) < REUSE
    # The reused part never sees the new part; the new part sees all of it (as memory).
    assert not visible[np.ix_(reuse, ~reuse)].any() and visible[np.ix_(~reuse, reuse)].all()
    for part in (reuse, ~reuse):
        assert visible[np.ix_(part, context & part)].all()  # the context is visible to all its part
        assert not visible[np.ix_(context & part, (is_target | functional) & part)].any()  # and sees no target
        # Targets and functional tokens of a part: "sees" is a strict total order (the
        # factorisation order), so ranking them by how many they see reproduces it.
        ordered = np.flatnonzero(part & (is_target | functional))
        sees = visible[np.ix_(ordered, ordered)] & ~np.eye(len(ordered), dtype=bool)
        rank = sees.sum(1)
        assert sorted(rank) == list(range(len(ordered)))
        np.testing.assert_array_equal(sees, rank[None, :] < rank[:, None])


def test_targets_come_in_spans_and_avoid_unmaskable_positions():
    rng = np.random.default_rng(0)
    maskable = np.ones(512, bool)
    maskable[::7] = False
    runs = []
    for _ in range(20):
        chosen = sample_targets(maskable, 85, rng)
        assert chosen.sum() == 85 and not (chosen & ~maskable).any()
        edges = np.diff(np.concatenate([[0], chosen.astype(int), [0]]))
        runs += list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
    assert max(runs) >= 3 and np.mean(np.array(runs) == 1) < 0.9  # n-grams, not only single tokens


def test_a_prediction_depends_only_on_what_its_order_lets_it_see():
    """Through the model: changing every token the target may not see (itself and the later
    ones of its order, all of the new part for the reused part) leaves its logits unchanged."""
    length, predict = 16, 4
    config = XLNetConfig(vocab_size=30, hidden_size=16, num_layers=2, num_heads=2, head_dim=8,
                         intermediate_size=32, initializer_range=0.3, dropout_prob=0.0,
                         attention_dropout_prob=0.0, dtype="float32")
    params = init_params(config, jax.random.key(0))
    tokens = protein(3, length)
    f = permutation_lm_features(tokens, predict, np.random.default_rng(3), reuse_len=8, perm_size=4)
    apply = functools.partial(XLNet(config).apply, {"params": params})
    batch = lambda t: (t[None], None, None, f["perm_mask"][None], f["target_mapping"][None])  # noqa: E731
    logits = np.asarray(apply(*batch(tokens))[0])[0]
    for slot in range(predict):
        target = int(f["target_mapping"][slot].argmax())
        hidden = f["perm_mask"][target].astype(bool)
        changed = np.where(hidden, (tokens - 9 + 5) % 21 + 9, tokens).astype(np.int32)
        np.testing.assert_allclose(np.asarray(apply(*batch(changed))[0])[0, slot], logits[slot],
                                   rtol=1e-5, atol=1e-5)
        seen = np.flatnonzero(~hidden & (np.arange(length) != target))
        changed = tokens.copy()
        changed[seen[0]] = (tokens[seen[0]] - 9 + 5) % 21 + 9 if tokens[seen[0]] >= 9 else 10
        assert np.abs(np.asarray(apply(*batch(changed))[0])[0, slot] - logits[slot]).max() > 1e-4


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="perm_size 20 must be <= reuse_len 16"):
        permutation_lm_features(protein(0), 5, np.random.default_rng(0), reuse_len=16, perm_size=20)
    with pytest.raises(ValueError, match="perm_size 5 must divide the part's length 64"):
        permutation_lm_features(protein(0), 5, np.random.default_rng(0), perm_size=5)
    with pytest.raises(ValueError, match="num_predict must be positive"):
        permutation_lm_features(protein(0), 0, np.random.default_rng(0))


# ------------------------------------------------------------------ the seqio task


@pytest.fixture(scope="module")
def short_task(tmp_path_factory):
    """`short_permutation_lm`: the objective over 32 real sample proteins (< 50 residues)."""
    import tasks
    from tests.conftest import short_protein_corpus

    tasks.register_corpus("short", short_protein_corpus(tmp_path_factory))
    return "short_permutation_lm"


def test_the_task_frames_pads_and_permutes_real_proteins(short_task):
    """Fixed shapes from one length (num_predict = L / 6); `residues <sep> <cls>` padded on
    the right; every target a residue that sees neither itself nor any context token's view
    of it; the context residues visible to all and blind to every target."""
    from prottrans_jax.data.dataset import get_batches, get_task, task_feature_lengths

    lengths = task_feature_lengths(get_task(short_task), 60)
    assert lengths["inputs"] == lengths["perm_mask"] == 60 and lengths["targets"] == 10
    batch = next(get_batches(short_task, "train", lengths, 8, seed=2).as_numpy_iterator())
    shapes = {key: value.shape for key, value in batch.items()}
    assert shapes == {"encoder_input_tokens": (8, 60), "attention_mask": (8, 60), "token_types": (8, 60),
                      "perm_mask": (8, 60, 60), "target_mapping": (8, 10, 60), "target_tokens": (8, 10),
                      "target_weights": (8, 10)}
    for row in range(8):
        tokens, perm = batch["encoder_input_tokens"][row], batch["perm_mask"][row].astype(bool)
        n = int(batch["attention_mask"][row].sum()) - 2
        assert 5 < n < 50 and np.all(tokens[:n] >= 9) and list(tokens[n:n + 2]) == [SEP_ID, CLS_ID]
        assert np.all(tokens[n + 2:] == 5) and np.all(batch["attention_mask"][row][n + 2:] == 0)
        types = batch["token_types"][row]
        assert np.all(types[:n + 1] == 0) and types[n + 1] == 2 and np.all(types[n + 2:] == 3)
        weights = batch["target_weights"][row] > 0
        assert weights.sum() == min(10, n)
        positions = np.argmax(batch["target_mapping"][row][weights], axis=1)
        assert len(set(positions)) == weights.sum() and np.all(positions < n)  # residues only
        assert np.array_equal(batch["target_tokens"][row][weights], tokens[positions])
        assert not batch["target_mapping"][row][~weights].any()
        assert np.all(perm[positions, positions])  # a target never sees itself
        context = np.setdiff1d(np.arange(n), positions)
        assert not perm[:, context].any()  # every position sees the context residues
        assert np.all(perm[np.ix_(context, positions)])  # which see no target
