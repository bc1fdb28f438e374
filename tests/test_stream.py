"""The causal LM stream (data/stream.py): each row one stream of whole proteins in order,
consecutive segments that continue each other, per-host shards, and exact resume."""

import numpy as np
import seqio

from prottrans_jax import training
from prottrans_jax.data.dataset import get_batches
from prottrans_jax.data.objectives import CHOSEN, NOT_CHOSEN
from prottrans_jax.data.stream import stream_rows
from prottrans_jax.vocab import prot_txl_vocabulary
from tasks.show_batches import describe_batch

EOS = prot_txl_vocabulary().eos_id


def protein(index, length):
    residues = np.full((length,), 3 + index % 25, np.int32)
    return {"targets": np.append(residues, EOS), "targets_masked": np.append(np.full(length, CHOSEN), NOT_CHOSEN)}


def row_streams(batches):
    """Each row's stream, rebuilt from its inputs and the last segment's last target."""
    rows = batches[0]["decoder_input_tokens"].shape[0]
    return [np.concatenate([b["decoder_input_tokens"][r] for b in batches]
                           + [batches[-1]["decoder_target_tokens"][r, -1:]]) for r in range(rows)]


def proteins_of(tokens):
    """Residue runs between separators (the first and last may be cut)."""
    return [tuple(part) for part in np.split(tokens, np.flatnonzero(tokens == EOS)) if part.size]


def test_rows_are_streams_of_whole_proteins_in_order_cut_into_continuing_segments():
    lengths = [3, 9, 1, 4, 12, 2, 7, 5, 6, 3, 8, 2, 11, 4, 1, 6]
    batches = list(stream_rows([protein(i, n) for i, n in enumerate(lengths)], rows=3, length=5))
    assert len(batches) >= 4
    for a, b in zip(batches, batches[1:]):  # row r of step t + 1 continues row r of step t
        np.testing.assert_array_equal(a["decoder_target_tokens"][:, -1], b["decoder_input_tokens"][:, 0])
    for batch in batches:
        np.testing.assert_array_equal(batch["decoder_target_tokens"][:, :-1], batch["decoder_input_tokens"][:, 1:])
        np.testing.assert_array_equal(batch["decoder_masked_weights"], batch["decoder_target_tokens"] != EOS)
        assert batch["decoder_loss_weights"].all() and batch["decoder_input_tokens"].shape == (3, 5)
    seen = []
    for tokens in row_streams(batches):
        runs = proteins_of(tokens)
        whole = [run[1:] if run[0] == EOS else run for run in runs[:-1]]  # the last run may be cut
        ids = [run[0] - 3 for run in whole]
        assert ids == sorted(ids), "a row takes its proteins in the stream's order"
        for index, run in zip(ids, whole):
            assert len(run) == lengths[index], "proteins are whole, one after another"
        seen += ids
    assert len(seen) == len(set(seen)) >= 9  # each protein in one row only


def test_each_host_reads_its_own_proteins(corpus):
    hosts = []
    for index in range(2):
        batches = list(get_batches("short_causal_lm", "train", {"targets": 16}, 2, shuffle=False, num_epochs=1,
                                   shard_info=seqio.ShardInfo(index, 2)).as_numpy_iterator())
        hosts.append({run for tokens in row_streams(batches) for run in proteins_of(tokens)[1:-1]})
    assert len(hosts[0]) >= 5 and len(hosts[1]) >= 5
    assert not hosts[0] & hosts[1]


def test_a_resumed_stream_continues_where_it_stopped(corpus):
    lengths = {"targets": 16}
    straight = training.train_batches("short_causal_lm", lengths, 4, seed=5)
    expected = [next(straight) for _ in range(24)][18:]  # crosses an epoch boundary (~16 batches)
    resumed = training.train_batches("short_causal_lm", lengths, 4, seed=5, start=18)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    other = next(training.train_batches("short_causal_lm", lengths, 4, seed=6, start=18))
    assert not np.array_equal(other["decoder_input_tokens"], expected[0]["decoder_input_tokens"])


def test_an_evaluation_stream_ends_and_the_batch_shows(corpus):
    batches = list(training.eval_batches("short_causal_lm", "train", {"targets": 16}, 4, None))
    tokens = sum(len(p) for tokens in row_streams(batches) for p in proteins_of(tokens))
    assert 10 <= len(batches) <= 20 and tokens > 500  # 32 proteins of < 50 residues, once
    text = describe_batch("short_causal_lm", batches[0])
    assert text.startswith("== short_causal_lm: (4, 16) rows") and text.count("\nrow ") == 4
