"""ELECTRA model: parity with Hugging Face (PyTorch, float32), shared embeddings, packing, the
replaced-token-detection objective, gin sizes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from prottrans_jax.convert import electra as electra_convert
from prottrans_jax.models.electra import Electra, ElectraConfig, ElectraPretrainModel
from prottrans_jax.models.gin_utils import config_from_gin
from prottrans_jax.models.layers import count_params
from prottrans_jax.partitioning import unbox_shapes
from tests.conftest import framed_tokens, numpy_state_dict, random_hf_electra

LENGTH = 20
CLOSE = dict(rtol=1e-5, atol=1e-5)


def state_dicts(models) -> dict:
    return {tower: (model.config.to_dict(), numpy_state_dict(model))
            for tower, model in models.items()}


def torch_outputs(model, tokens):
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                     attention_mask=torch.tensor(tokens != 0, dtype=torch.long), output_hidden_states=True)


@pytest.mark.parametrize("scan", [False, True])
def test_both_towers_match_hf_logits_and_hidden_states(scan):
    models = random_hf_electra(seed=0)
    config, params = electra_convert.merge_parts(state_dicts(models), dtype="float32", scan_layers=scan)
    assert config.generator_hidden_size == 16 and config.hidden_size == 32 and config.embedding_size == 32
    assert "projection" in params["generator"] and "projection" not in params["discriminator"]
    tokens = framed_tokens(LENGTH, [LENGTH, 13, 6])
    valid = tokens != 0
    model = Electra(config)
    for tower, logits_method in (("discriminator", Electra.discriminator_logits),
                                 ("generator", Electra.generator_logits)):
        expected = torch_outputs(models[tower], tokens)
        hidden = model.apply({"params": params}, tokens, tower, method=Electra.encode)
        np.testing.assert_allclose(np.asarray(hidden)[valid], expected.hidden_states[-1].numpy()[valid], **CLOSE,
                                   err_msg=tower)
        logits = model.apply({"params": params}, tokens, method=logits_method)
        np.testing.assert_allclose(np.asarray(logits)[valid], expected.logits.numpy()[valid], **CLOSE, err_msg=tower)


def test_the_towers_share_one_embedding_table_and_nothing_else():
    config = config_from_gin(ElectraConfig, ["gin/models/electra/tiny.gin"])
    params = unbox_shapes(ElectraPretrainModel(config).abstract_params())
    assert set(params) == {"embeddings", "discriminator", "generator"}
    assert set(params["embeddings"]) == {"word", "position", "token_type", "layer_norm"}
    assert params["embeddings"]["word"]["embedding"].shape == (30, 64)
    assert params["generator"]["projection"]["kernel"].shape == (64, 32)  # embedding width -> generator
    assert "output_bias" in params["generator"]["head"] and "word" not in params["generator"]["head"]


def test_packed_proteins_equal_proteins_alone():
    models = random_hf_electra(seed=1)
    config, params = electra_convert.merge_parts(state_dicts(models), dtype="float32")
    a, b = framed_tokens(LENGTH, [9], seed=2)[0, :9], framed_tokens(LENGTH, [7], seed=3)[0, :7]
    packed = np.zeros((1, LENGTH), np.int32)
    packed[0, :16] = np.concatenate([a, b])
    segments = np.zeros_like(packed)
    segments[0, :9], segments[0, 9:16] = 1, 2
    positions = np.zeros_like(packed)
    positions[0, :9], positions[0, 9:16] = np.arange(9), np.arange(7)
    model = Electra(config)
    together = model.apply({"params": params}, packed, segments, positions, method=Electra.discriminator_logits)
    for tokens, where in ((a, slice(0, 9)), (b, slice(9, 16))):
        alone = model.apply({"params": params}, tokens[None], method=Electra.discriminator_logits)
        np.testing.assert_allclose(np.asarray(together)[0, where], np.asarray(alone)[0], **CLOSE)


def test_gin_sizes_and_the_reconstructed_parameter_counts():
    tiny = config_from_gin(ElectraConfig, ["gin/models/electra/tiny.gin"])
    assert tiny.hidden_size == 64 and tiny.generator_hidden_size == 32
    config = config_from_gin(ElectraConfig, ["gin/models/electra/prot_electra.gin"])
    params = unbox_shapes(ElectraPretrainModel(config).abstract_params())
    embeddings = count_params(params["embeddings"])
    # families-spec.md 4.1: the released files' sizes give exactly these two counts.
    assert embeddings + count_params(params["discriminator"]) == 419_932_161
    assert embeddings + count_params(params["generator"]) == 65_215_262


# ------------------------------------------------------------------ the objective


def electra_batch(seed=0, rows=4, length=24):
    """An electra_mlm-shaped batch: 15% of the residues chosen, 85% of those [MASK]."""
    rng = np.random.default_rng(seed)
    targets = np.zeros((rows, length), np.int32)
    lengths = rng.integers(length // 2, length, rows)
    for row, n in enumerate(lengths):
        targets[row, :n] = [2, *rng.integers(5, 30, n - 2), 3]
    residues = targets >= 5
    chosen = residues & (rng.random((rows, length)) < 0.3)
    masked = chosen & (rng.random((rows, length)) < 0.85)
    return {"encoder_input_tokens": np.where(masked, 4, targets), "encoder_target_tokens": targets,
            "encoder_loss_weights": chosen.astype(np.int32), "encoder_masked_weights": masked.astype(np.int32)}


def tiny_model(**overrides):
    config = dataclasses.replace(config_from_gin(ElectraConfig, ["gin/models/electra/tiny.gin"]),
                                 hidden_dropout_prob=0.0, attention_dropout_prob=0.0)
    return ElectraPretrainModel(config, **overrides)


def test_the_loss_is_generator_mlm_plus_fifty_times_replaced_token_detection():
    model, batch = tiny_model(), electra_batch()
    params = model.init_params(jax.random.key(0))
    rng = jax.random.key(7)
    loss_sum, metrics = model.loss_and_metrics(params, batch, rng, train=True)
    chosen, tokens = metrics["loss"].count, metrics["discriminator_loss"].count
    assert float(chosen) == batch["encoder_loss_weights"].sum()
    assert float(tokens) == (batch["encoder_target_tokens"] > 0).sum()  # specials counted, padding not
    mean = float(loss_sum / chosen)
    expected = (float(metrics["generator_loss"].total / chosen)
                + 50.0 * float(metrics["discriminator_loss"].total / tokens))
    np.testing.assert_allclose(mean, expected, rtol=1e-6)
    # The same rng gives the same samples; another rng other samples.
    again = model.loss_and_metrics(params, batch, rng, train=True)[1]
    other = model.loss_and_metrics(params, batch, jax.random.key(8), train=True)[1]
    assert float(again["discriminator_loss"].total) == float(metrics["discriminator_loss"].total)
    assert float(other["discriminator_loss"].total) != float(metrics["discriminator_loss"].total)
    # Only chosen positions can be replaced; an untrained generator replaces most of them.
    assert 0 < float(metrics["replaced_recall"].count) <= float(chosen)


def test_replaced_tokens_are_the_samples_that_differ_from_the_original():
    """Recomputed by hand: the generator's Gumbel-max samples with the step's rng at the chosen
    positions, labels where they differ, the discriminator's precision and recall on them."""
    model, batch = tiny_model(), electra_batch(seed=3)
    params = model.init_params(jax.random.key(1))
    rng = jax.random.key(5)
    _, metrics = model.loss_and_metrics(params, batch, rng, train=False)
    generator_rng, sample_rng, _ = jax.random.split(rng, 3)
    del generator_rng
    module = model.module
    logits = module.apply({"params": params}, batch["encoder_input_tokens"],
                          (batch["encoder_target_tokens"] > 0).astype(np.int32), method=Electra.generator_logits)
    sampled = np.asarray(jax.random.categorical(sample_rng, logits))
    chosen = batch["encoder_loss_weights"] > 0
    corrupted = np.where(chosen, sampled, batch["encoder_target_tokens"])
    replaced = corrupted != batch["encoder_target_tokens"]
    flagged = np.asarray(module.apply({"params": params}, corrupted,
                                      (batch["encoder_target_tokens"] > 0).astype(np.int32),
                                      method=Electra.discriminator_logits)) > 0
    valid = batch["encoder_target_tokens"] > 0
    flagged &= valid
    assert float(metrics["replaced_fraction"].total) == replaced.sum()
    assert float(metrics["replaced_recall"].total) == (flagged & replaced).sum()
    assert float(metrics["replaced_precision"].count) == flagged.sum()
    assert float(metrics["discriminator_accuracy"].total) == ((flagged == replaced) & valid).sum()


def test_the_discriminator_loss_reaches_the_generator_only_through_the_shared_embeddings():
    batch = electra_batch(seed=4)

    def grads(model):
        params = jax.tree.map(jnp.asarray, unbox_shapes(model.init_params(jax.random.key(2))))
        return jax.grad(lambda p: model.loss_and_metrics(p, batch, jax.random.key(3), True)[0])(params)

    def norms(tree):
        return float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))

    discriminator_only = grads(tiny_model(generator_weight=0.0))
    assert norms(discriminator_only["generator"]) == 0.0  # the samples are stop-gradient
    assert norms(discriminator_only["discriminator"]) > 0 and norms(discriminator_only["embeddings"]) > 0
    generator_only = grads(tiny_model(discriminator_weight=0.0))
    assert norms(generator_only["discriminator"]) == 0.0
    assert norms(generator_only["generator"]) > 0


def test_flops_count_both_towers():
    model = tiny_model()
    cfg = model.config
    rows, length = 4, 24
    batch = {"encoder_input_tokens": np.zeros((rows, length), np.int32)}
    d, f, e, g, gf, v = 64, 256, 64, 32, 128, 30
    discriminator = 2 * (4 * d * d + 2 * d * f) + d * d + d
    generator = 2 * (4 * g * g + 2 * g * gf) + e * g + g * e + e * v
    attention = 12 * 2 * (d + g) * length ** 2
    assert cfg.num_layers == cfg.generator_num_layers == 2
    assert model.flops_per_batch(batch) == rows * (6 * (discriminator + generator) * length + attention)
