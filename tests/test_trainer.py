"""Train step on meshes vs one device, microbatches, NaN guard, metrics, FLOPs, overfitting.

Needs 8 CPU devices (tests/conftest.py sets XLA_FLAGS before jax is imported).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prottrans_jax import partitioning
from prottrans_jax.data import objectives
from prottrans_jax.models.albert import AlbertConfig, AlbertMLMModel
from prottrans_jax.models.base import Average, Sum, summarize
from prottrans_jax.models.bert import BertConfig, BertMLMModel
from prottrans_jax.models.electra import ElectraConfig, ElectraPretrainModel
from prottrans_jax.models.encoder_decoder import EncoderDecoderModel
from prottrans_jax.models.t5 import T5Config
from prottrans_jax.models.xlnet import SPECIAL_IDS, XLNetConfig, XLNetPermutationLMModel
from prottrans_jax.trainer import Trainer, peak_flops_per_device

# Tiny T5 (both stacks, relative bias, packing, dropout) that compiles in a few seconds.
TINY = T5Config(vocab_size=128, d_model=32, num_heads=4, head_dim=8, d_ff=64,
                num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1, dtype="float32",
                tie_word_embeddings=False, scale_decoder_outputs=True)


def packed_batch(seed=0, rows=8, length=24):
    """A ProtT5-denoiser-shaped packed batch: two segments per row, 15% sentinels."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(3, 28, (rows, length)).astype(np.int32)
    segments = np.ones((rows, length), np.int32)
    segments[:, length // 2:] = 2
    segments[:, -3:] = 0
    positions = np.concatenate([np.arange(length // 2), np.arange(length - length // 2)])
    positions = np.tile(positions, (rows, 1)).astype(np.int32) * (segments > 0)
    targets = targets * (segments > 0)
    masked = (rng.random((rows, length)) < 0.15) & (segments > 0)
    inputs = np.where(masked, 127, targets) * (segments > 0)
    decoder_inputs = np.roll(targets, 1, axis=1) * (positions > 0)
    return {"encoder_input_tokens": inputs, "encoder_segment_ids": segments,
            "encoder_positions": positions, "decoder_input_tokens": decoder_inputs,
            "decoder_target_tokens": targets, "decoder_loss_weights": (segments > 0).astype(np.int32),
            "decoder_masked_weights": masked.astype(np.int32),
            "decoder_segment_ids": segments, "decoder_positions": positions}


# Tiny BERT (absolute positions, biases, post-LayerNorm, packing, dropout).
TINY_BERT = BertConfig(vocab_size=30, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                       max_position_embeddings=32, hidden_dropout_prob=0.1, attention_dropout_prob=0.1,
                       dtype="float32")


# Tiny ALBERT (factorised embedding, one shared layer scanned twice, dropout per use).
TINY_ALBERT = AlbertConfig(vocab_size=34, embedding_size=16, hidden_size=32, num_layers=2, num_heads=4,
                           intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.1,
                           attention_dropout_prob=0.1, scan_layers=True, dtype="float32")


def bert_packed_batch(seed=0, rows=8, length=24):
    """A bert_mlm-shaped packed batch: two proteins per row, [CLS] ... [SEP], 15% chosen."""
    rng = np.random.default_rng(seed)
    t5 = packed_batch(seed, rows, length)
    segments, positions = t5["encoder_segment_ids"], t5["encoder_positions"]
    targets = rng.integers(5, 30, (rows, length)).astype(np.int32) * (segments > 0)
    chosen = (rng.random((rows, length)) < 0.15) & (segments > 0)
    hidden = chosen & (rng.random((rows, length)) < 0.9)
    return {"encoder_input_tokens": np.where(hidden, 4, targets), "encoder_target_tokens": targets,
            "encoder_loss_weights": chosen.astype(np.int32), "encoder_masked_weights": hidden.astype(np.int32),
            "encoder_segment_ids": segments, "encoder_positions": positions}


# Tiny ELECTRA: shared embeddings 32 wide, a discriminator as wide, a generator projected to 16.
TINY_ELECTRA = ElectraConfig(vocab_size=30, embedding_size=32, max_position_embeddings=32, hidden_size=32,
                             num_layers=1, num_heads=4, intermediate_size=64, generator_hidden_size=16,
                             generator_num_layers=1, generator_num_heads=2, generator_intermediate_size=32,
                             hidden_dropout_prob=0.1, attention_dropout_prob=0.1, dtype="float32")


# Tiny XLNet (relative attention, segment term, two-stream attention, dropout).
TINY_XLNET = XLNetConfig(vocab_size=32, hidden_size=32, num_layers=1, num_heads=4, head_dim=8,
                         intermediate_size=64, dropout_prob=0.1, attention_dropout_prob=0.1, dtype="float32")


def xlnet_permutation_batch(seed=0, rows=8, length=24):
    """A permutation_lm-shaped batch: one protein per row (`residues <sep> <cls>`, then
    <pad>), of varied lengths, with its factorisation order and targets."""
    rng = np.random.default_rng(seed)
    num_predict = objectives.permutation_lm_num_predict(length)
    examples = [objectives.permutation_lm_example(
        rng.integers(9, 30, int(rng.integers(length // 2, length - 1))), length, num_predict, rng,
        sep_id=SPECIAL_IDS["<sep>"], cls_id=SPECIAL_IDS["<cls>"], pad_id=SPECIAL_IDS["<pad>"]) for _ in range(rows)]
    names = {"inputs": "encoder_input_tokens", "input_mask": "attention_mask", "token_types": "token_types",
             "perm_mask": "perm_mask", "target_mapping": "target_mapping", "targets": "target_tokens",
             "target_weights": "target_weights"}
    return {converted: np.stack([example[name] for example in examples]) for name, converted in names.items()}


def one_step(partitioner, model, batch, num_microbatches=1, params=None):
    """Params before and after one train step, and the step's summarised metrics.

    SGD with learning rate 1: new params = old - grads, so comparing the updates compares
    gradients. `params` (host arrays) replaces the sharded init, saving a compile per mesh.
    """
    trainer = Trainer(model, optax.sgd(1.0), partitioner, num_microbatches, seed=0)
    if params is None:
        state = trainer.init_state()
    else:
        state = trainer.with_halted(jax.device_put(
            {"step": np.zeros((), np.int32), "params": params, "opt_state": trainer.optimizer.init(params)},
            trainer.checkpoint_shardings))
    before = jax.device_get(state["params"])
    with partitioner.context():
        device_batch = partitioner.host_local_batch_to_global(batch)
        state, metrics = trainer.train_step(state, device_batch, trainer.new_metrics(device_batch))
    return before, jax.device_get(state["params"]), summarize(metrics)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["prot_t5", "prot_bert", "prot_albert", "prot_electra", "prot_xlnet"])
def test_train_step_on_meshes_and_rule_sets_equals_one_device(family):
    """T5 and BERT: every rule set on a (4, 2) mesh, and on (8, 1), where the tensor-parallel
    sets equal their data-parallel twins (a `model` axis of 1), the data-parallel and FSDP
    sets. The later families share BERT's layers and run fsdp_tensor_parallel on (4, 2) only:
    it splits every logical axis that any rule set splits (the sets are family-agnostic), and
    each compile costs seconds. ELECTRA's step samples the generator with the step's rng, on
    every mesh alike; XLNet's, two-stream attention under a perm mask."""
    model, batch = {"prot_t5": lambda: (EncoderDecoderModel(TINY), packed_batch()),
                    "prot_bert": lambda: (BertMLMModel(TINY_BERT), bert_packed_batch()),
                    "prot_albert": lambda: (AlbertMLMModel(TINY_ALBERT), bert_packed_batch()),
                    "prot_electra": lambda: (ElectraPretrainModel(TINY_ELECTRA), bert_packed_batch()),
                    "prot_xlnet": lambda: (XLNetPermutationLMModel(TINY_XLNET), xlnet_permutation_batch())}[family]()
    single = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
    before, after, metrics = one_step(single, model, batch)
    grads = jax.tree.map(lambda a, b: a - b, before, after)
    assert metrics["loss"] > 1.0 and optax.global_norm(grads) > 1e-3
    if family in ("prot_t5", "prot_bert"):
        layouts = [((4, 2), name) for name in partitioning.RULE_SETS]
        layouts += [((8, 1), "data_parallel"), ((8, 1), "fsdp")]
    else:
        layouts = [((4, 2), "fsdp_tensor_parallel")]
    for mesh_shape, name in layouts:
        partitioner = partitioning.Partitioner(mesh_shape=mesh_shape, rule_set=name,
                                               extra_rules=[("abspos_buckets", None), ("token_types", None)])
        _, got_after, got_metrics = one_step(partitioner, model, batch, params=before)
        where = f"{family} {mesh_shape} {name}"
        np.testing.assert_allclose(got_metrics["loss"], metrics["loss"], rtol=1e-5, err_msg=where)
        np.testing.assert_allclose(got_metrics["grad_norm"], metrics["grad_norm"], rtol=1e-5,
                                   err_msg=where)
        jax.tree.map(lambda a, b, w=where: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5,
                                                                    err_msg=w),
                     jax.tree.map(lambda a, b: a - b, before, got_after), grads)


def test_microbatches_give_the_full_batch_gradient():
    model = EncoderDecoderModel(dataclasses.replace(TINY, dropout_rate=0.0))
    batch = packed_batch(1)
    partitioner = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
    before, full, m1 = one_step(partitioner, model, batch)
    _, micro, m4 = one_step(partitioner, model, batch, num_microbatches=4, params=before)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
    assert m4["target_tokens"] == m1["target_tokens"] == np.sum(batch["decoder_loss_weights"])
    assert m4["loss_count"] == m1["loss_count"] == m1["target_tokens"]
    # Compare the updates (= gradients, SGD at lr 1), not parameters of order 1.
    jax.tree.map(lambda b, m, f: np.testing.assert_allclose(b - m, b - f, rtol=1e-5, atol=1e-6),
                 before, micro, full)


class Toy(nn.Module):
    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (4,))
        return x @ w


@dataclasses.dataclass(frozen=True)
class ToyModel:
    """The trainer's model interface in a few lines, with metrics of its own naming: the
    trainer must carry whatever a model returns. The loss is finite unless x is."""

    family = "toy"
    config = None
    headline_metrics = ("loss", "half")

    def init_params(self, rng):
        return Toy().init(rng, jnp.zeros((1, 4)))["params"]

    def loss_and_metrics(self, params, batch, rng, train):
        y = Toy().apply({"params": params}, batch["x"])
        rows = jnp.asarray(batch["x"].shape[0], jnp.float32)
        loss_sum = jnp.sum(jnp.square(y - 1.0))
        return loss_sum, {"loss": Average(loss_sum, rows), "half": Average(rows / 2, rows),
                          "rows": Sum(rows)}


def test_non_finite_loss_leaves_the_state_untouched_and_halts_for_good():
    partitioner = partitioning.Partitioner(mesh_shape=(8, 1))
    trainer = Trainer(ToyModel(), optax.sgd(0.01), partitioner)
    state = trainer.init_state()
    good = {"x": np.full((8, 4), 0.5, np.float32)}
    bad = {"x": np.full((8, 4), np.inf, np.float32)}
    metrics = trainer.new_metrics(good)
    with partitioner.context():
        for _ in range(3):
            state, metrics = trainer.train_step(state, partitioner.host_local_batch_to_global(good),
                                                metrics)
        last_good = jax.device_get(trainer.checkpointed(state))
        assert not trainer.halted(state)
        for batch in (bad, good, good):  # halted is sticky: later good batches change nothing
            state, metrics = trainer.train_step(state, partitioner.host_local_batch_to_global(batch),
                                                metrics)
    assert trainer.halted(state)
    assert int(state["step"]) == 3
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.checkpointed(state)),
                 last_good)
    summary = summarize(metrics)
    assert summary["steps"] == 3 and np.isfinite(summary["loss"])  # skipped steps add nothing
    assert summary["half"] == 0.5 and summary["rows"] == 24 and summary["loss_count"] == 24
    assert set(summary) == {"loss", "loss_count", "half", "half_count", "rows", "grad_norm",
                            "grad_norm_count", "steps"}


def test_masked_metrics_follow_the_explicit_masked_feature():
    """Which positions are hidden comes from the batch, never from the token ids."""
    batch = packed_batch(2)
    model = EncoderDecoderModel(dataclasses.replace(TINY, dropout_rate=0.0))
    params = model.init_params(jax.random.key(0))
    evaluate = jax.jit(lambda p, b: model.loss_and_metrics(p, b, jax.random.key(1), train=False))
    _, metrics = evaluate(params, batch)
    assert float(metrics["masked_accuracy"].count) == batch["decoder_masked_weights"].sum() > 0
    shifted = {**batch, "decoder_masked_weights": np.roll(batch["decoder_masked_weights"], 1, axis=1)}
    _, other = evaluate(params, shifted)
    assert float(other["masked_loss"].total) != float(metrics["masked_loss"].total)
    np.testing.assert_array_equal(model.masked_targets(batch)[1], batch["decoder_masked_weights"])


def test_loss_on_masked_positions_only_scores_the_hidden_residues():
    """ProtT5-EvoTuning's loss: the masked positions alone."""
    batch = packed_batch(4)
    config = dataclasses.replace(TINY, dropout_rate=0.0)
    params = EncoderDecoderModel(config).init_params(jax.random.key(0))
    _, everything = EncoderDecoderModel(config, z_loss=0.0).loss_and_metrics(
        params, batch, jax.random.key(1), False)
    loss_sum, masked = EncoderDecoderModel(config, z_loss=0.0, loss_on="masked").loss_and_metrics(
        params, batch, jax.random.key(1), False)
    assert float(masked["loss"].count) == batch["decoder_masked_weights"].sum()
    assert float(everything["loss"].count) == batch["decoder_loss_weights"].sum()
    np.testing.assert_allclose(float(loss_sum), float(masked["masked_loss"].total), rtol=1e-6)
    with pytest.raises(ValueError, match="loss_on"):
        EncoderDecoderModel(config, loss_on="sentinels")


def test_masked_loss_is_the_cross_entropy_of_the_hidden_residues_alone():
    batch = packed_batch(3)
    model = EncoderDecoderModel(dataclasses.replace(TINY, dropout_rate=0.0))
    params = model.init_params(jax.random.key(0))
    _, metrics = model.loss_and_metrics(params, batch, jax.random.key(1), train=False)
    logits = np.asarray(model.logits(params, batch, jax.random.key(1), False), np.float64)
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    chosen = np.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    hidden = batch["decoder_masked_weights"]
    assert hidden.sum() > 10
    np.testing.assert_allclose(float(metrics["masked_loss"].total), -np.sum(chosen * hidden),
                               rtol=1e-5, atol=1e-5)
    assert float(metrics["masked_loss"].count) == hidden.sum()


def test_flops_count_reads_the_same_inside_a_mesh_context():
    partitioner = partitioning.Partitioner(mesh_shape=(4, 2), logical_axis_rules=partitioning.FSDP)
    outside = EncoderDecoderModel(TINY).matmul_params
    with partitioner.context():
        assert EncoderDecoderModel(TINY).matmul_params == outside


def test_bert_flops_count_matches_hand_formula():
    cfg = BertConfig(vocab_size=30, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
    d, f, v, layers = 16, 32, 30, 2
    per_token = layers * (4 * d * d + 2 * d * f) + d * d + d * v  # attention, FFN, MLM transform, output
    batch = {"encoder_input_tokens": np.zeros((3, 10))}
    assert BertMLMModel(cfg).flops_per_batch(batch) == 3 * (6 * per_token * 10 + 12 * layers * d * 100)


def test_flops_count_matches_hand_formula():
    cfg = T5Config(vocab_size=128, d_model=16, num_heads=2, head_dim=4, d_ff=32,
                   num_encoder_layers=1, num_decoder_layers=1, tie_word_embeddings=False,
                   scale_decoder_outputs=True)
    enc, dec, cross_kv = EncoderDecoderModel(cfg).matmul_params
    d, a, f, v = 16, 8, 32, 128
    assert enc == 4 * d * a + 2 * d * f                         # q k v o + wi wo
    assert cross_kv == 2 * d * a
    assert dec == 4 * d * a + 2 * d * a + 2 * d * f + d * v    # self, cross q/o, mlp, logits
    batch = {"encoder_input_tokens": np.zeros((3, 10)), "decoder_target_tokens": np.zeros((3, 6))}
    flops = EncoderDecoderModel(cfg).flops_per_batch(batch)
    want = 3 * (6 * (enc * 10 + dec * 6 + cross_kv * 10) + 12 * a * (100 + 36 + 60))
    assert flops == want


def test_peak_flops_lookup():
    device = lambda kind: type("D", (), {"device_kind": kind})()  # noqa: E731
    assert peak_flops_per_device(device("TPU v4")) == 275e12
    assert peak_flops_per_device(device("TPU v5 lite")) == 197e12
    assert peak_flops_per_device(device("TPU v5p")) == 459e12
    assert peak_flops_per_device(device("NVIDIA H100 80GB HBM3")) == 989e12
    assert peak_flops_per_device(device("cpu")) is None


def test_at_most_max_steps_in_flight_wait_on_the_device():
    """Asynchronous dispatch once let the loop run ~35 steps ahead of a CPU, all of which a
    SIGTERM's checkpoint had to wait for. The trainer now waits for the step two back."""
    partitioner = partitioning.Partitioner(mesh_shape=(8, 1))
    trainer = Trainer(ToyModel(), optax.sgd(0.01), partitioner, max_steps_in_flight=2)
    state = trainer.init_state()
    batch = {"x": np.full((8, 4), 0.5, np.float32)}
    metrics = trainer.new_metrics(batch)
    with partitioner.context():
        for _ in range(20):
            state, metrics = trainer.train_step(state, partitioner.host_local_batch_to_global(batch), metrics)
            assert len(trainer._in_flight) <= 2 and trainer.steps_in_flight() <= 2
    # the markers outlive the donated states they were copied from
    assert [int(done) for done in trainer._in_flight] == [19, 20]
    assert int(state["step"]) == 20 and summarize(metrics)["steps"] == 20
