"""ALBERT model: parity with Hugging Face (PyTorch, float32), shared layer groups, packing,
gin sizes, the FLOPs formula."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from prottrans_jax import families
from prottrans_jax.convert import albert as albert_convert
from prottrans_jax.models.albert import Albert, AlbertConfig, AlbertMLMModel
from prottrans_jax.models.gin_utils import config_from_gin
from prottrans_jax.models.layers import count_params
from tests.conftest import framed_tokens, numpy_state_dict, random_hf_albert

LENGTH = 20
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def ours(hf_model, **overrides):
    state_dict = numpy_state_dict(hf_model)
    config = albert_convert.config_from_hf(hf_model.config.to_dict(), state_dict, dtype="float32", **overrides)
    return config, albert_convert.hf_to_flax(state_dict, config)


def hf_outputs(hf_model, tokens, token_types=None):
    with torch.no_grad():
        return hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                        attention_mask=torch.tensor(tokens != 0, dtype=torch.long),
                        token_type_ids=None if token_types is None else torch.tensor(token_types, dtype=torch.long),
                        output_hidden_states=True)


@pytest.mark.parametrize("hidden_act, scan", [("gelu", False), ("gelu", True), ("gelu_new", True)])
def test_pretraining_logits_and_hidden_states_match_hf(hidden_act, scan):
    hf_model = random_hf_albert("pretraining", hidden_act=hidden_act)
    config, params = ours(hf_model, scan_layers=scan)
    assert config.pretraining_heads and config.hidden_act == ("gelu" if hidden_act == "gelu" else "gelu_tanh")
    tokens = framed_tokens(LENGTH, [LENGTH, 12, 7])
    token_types = np.zeros_like(tokens)
    token_types[0, 10:] = 1  # a sentence pair in the first row
    out = hf_outputs(hf_model, tokens, token_types)
    model = Albert(config)
    mlm, sop = model.apply({"params": params}, tokens, token_types)
    hidden = model.apply({"params": params}, tokens, token_types, method=Albert.encode)
    valid = tokens != 0
    np.testing.assert_allclose(np.asarray(hidden)[valid], out.hidden_states[-1].numpy()[valid], **TOLERANCE)
    np.testing.assert_allclose(np.asarray(mlm)[valid], out.prediction_logits.numpy()[valid], **TOLERANCE)
    np.testing.assert_allclose(np.asarray(sop), out.sop_logits.numpy(), **TOLERANCE)


def test_masked_lm_checkpoint_matches_hf_masked_lm_and_albert_model():
    hf_model = random_hf_albert("mlm", seed=1)
    config, params = ours(hf_model)
    assert not config.pretraining_heads and "pooler" not in params and "sop" not in params
    tokens = framed_tokens(LENGTH, [LENGTH, 9], seed=1)
    out = hf_outputs(hf_model, tokens)
    logits = AlbertMLMModel(config).logits(params, {"encoder_input_tokens": tokens})
    valid = tokens != 0
    np.testing.assert_allclose(np.asarray(logits)[valid], out.logits.numpy()[valid], **TOLERANCE)
    # AlbertModel: the encoder alone, its checkpoint without the `albert.` prefix (the pooler ignored).
    bare = random_hf_albert("model", seed=2)
    encoder_params = albert_convert.hf_to_flax(numpy_state_dict(bare), config, "encoder")
    assert set(encoder_params) == {"embeddings", "encoder"}
    expected = hf_outputs(bare, tokens).last_hidden_state.numpy()
    family = families.get("prot_albert")
    hidden = family.encoder(config).hidden_states(encoder_params, tokens, valid)
    np.testing.assert_allclose(np.asarray(hidden)[valid], expected[valid], **TOLERANCE)


@pytest.mark.parametrize("layers, groups, inner, scan", [(6, 3, 1, False), (5, 2, 2, True)])
def test_layer_groups_follow_hf_group_index(layers, groups, inner, scan):
    """Layer i runs group int(i / (layers / groups)): 6 over 3 groups is (2, 2, 2) uses; 5 over
    2 groups of 2 inner layers is (3, 2), uneven, as Hugging Face computes it."""
    hf_model = random_hf_albert("pretraining", seed=3, num_hidden_layers=layers, num_hidden_groups=groups,
                                inner_group_num=inner)
    config, params = ours(hf_model, scan_layers=scan)
    assert config.group_uses == {6: (2, 2, 2), 5: (3, 2)}[layers]
    assert sorted(params["encoder"]) == ["embedding_hidden_mapping_in", *[f"groups_{g}" for g in range(groups)]]
    assert sorted(params["encoder"]["groups_0"]) == [f"layers_{j}" for j in range(inner)]
    tokens = framed_tokens(LENGTH, [LENGTH, 11], seed=3)
    out = hf_outputs(hf_model, tokens)
    mlm, sop = Albert(config).apply({"params": params}, tokens)
    valid = tokens != 0
    np.testing.assert_allclose(np.asarray(mlm)[valid], out.prediction_logits.numpy()[valid], **TOLERANCE)
    np.testing.assert_allclose(np.asarray(sop), out.sop_logits.numpy(), **TOLERANCE)


def test_shared_parameters_are_stored_once_whatever_the_depth():
    config = AlbertConfig(embedding_size=16, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                          max_position_embeddings=64, dtype="float32")
    count = count_params(AlbertMLMModel(config).abstract_params())
    for layers, scan in ((12, False), (12, True), (48, True)):
        deeper = AlbertMLMModel(dataclasses.replace(config, num_layers=layers, scan_layers=scan))
        assert count_params(deeper.abstract_params()) == count
    # A group parameter is one (d, d) matrix, not stacked per layer.
    shapes = jax.tree.map(np.shape, AlbertMLMModel(dataclasses.replace(config, scan_layers=True)).abstract_params())
    assert jax.tree.leaves(shapes["encoder"]["groups_0"]["layers_0"]["attention"]["query"]["kernel"]) == [32, 32]


def test_packed_proteins_equal_proteins_alone():
    config, params = ours(random_hf_albert("mlm", seed=4), scan_layers=True)
    a, b = framed_tokens(LENGTH, [9], seed=4)[0, :9], framed_tokens(LENGTH, [7], seed=5)[0, :7]
    packed = np.zeros((1, LENGTH), np.int32)
    packed[0, :9], packed[0, 9:16] = a, b
    segments = np.zeros_like(packed)
    segments[0, :9], segments[0, 9:16] = 1, 2
    positions = np.zeros_like(packed)
    positions[0, :9], positions[0, 9:16] = np.arange(9), np.arange(7)
    together = np.asarray(Albert(config).apply({"params": params}, packed, None, segments, positions,
                                               method=Albert.encode))
    for tokens, where in ((a, slice(0, 9)), (b, slice(9, 16))):
        alone = np.asarray(Albert(config).apply({"params": params}, tokens[None], method=Albert.encode))
        np.testing.assert_allclose(together[0, where], alone[0], **TOLERANCE)


def test_scan_and_remat_give_the_loss_and_gradients_of_the_plain_loop():
    config, params = ours(random_hf_albert("mlm", seed=5))
    batch = {"encoder_input_tokens": framed_tokens(LENGTH, [LENGTH, 11], seed=5)}
    weights = (batch["encoder_input_tokens"] > 4).astype(np.int32)
    batch.update(encoder_target_tokens=batch["encoder_input_tokens"], encoder_loss_weights=weights,
                 encoder_masked_weights=weights)

    def loss_and_grads(cfg):
        model = AlbertMLMModel(cfg)
        return jax.jit(jax.value_and_grad(
            lambda q: model.loss_and_metrics(q, batch, jax.random.key(0), False)[0]))(
            jax.tree.map(jnp.asarray, params))

    loss, grads = loss_and_grads(config)
    for policy in ("full", "minimal"):
        fast_loss, fast_grads = loss_and_grads(dataclasses.replace(config, scan_layers=True, remat_policy=policy))
        np.testing.assert_allclose(float(fast_loss), float(loss), rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), fast_grads, grads)


def test_gin_sizes_and_the_released_parameter_count():
    tiny = config_from_gin(AlbertConfig, ["gin/models/albert/tiny.gin"])
    assert (tiny.embedding_size, tiny.hidden_size, tiny.num_layers, tiny.vocab_size) == (32, 64, 4, 34)
    base = config_from_gin(AlbertConfig, ["gin/models/albert/base.gin"])
    assert (base.embedding_size, base.hidden_size, base.num_layers, base.num_heads) == (128, 768, 12, 12)
    config = config_from_gin(AlbertConfig, ["gin/models/albert/prot_albert.gin"])
    assert (config.num_layers, config.num_hidden_groups, config.inner_group_num, config.hidden_size,
            config.embedding_size, config.num_heads, config.intermediate_size, config.hidden_act,
            config.hidden_dropout_prob, config.attention_dropout_prob, config.max_position_embeddings,
            config.vocab_size) == (12, 1, 1, 4096, 128, 64, 16384, "gelu", 0.0, 0.0, 40000, 34)
    # Rostlab/prot_albert: 224,347,300 parameters as AlbertForPreTraining (its file size), and
    # 207,557,794 without the pooler and SOP head (AlbertForMaskedLM): eval_shape, no memory.
    assert count_params(AlbertMLMModel(config).abstract_params()) == 224_347_300
    assert count_params(AlbertMLMModel(dataclasses.replace(config, pretraining_heads=False))
                        .abstract_params()) == 207_557_794


def test_flops_count_the_shared_layer_per_use():
    cfg = AlbertConfig(vocab_size=34, embedding_size=8, hidden_size=16, num_layers=6, num_hidden_groups=2,
                       inner_group_num=2, num_heads=2, intermediate_size=32)
    e, d, f, v, uses = 8, 16, 32, 34, 6 * 2  # 6 layers, each a group of 2 inner layers
    per_token = uses * (4 * d * d + 2 * d * f) + e * d + d * e + e * v  # layers, E->H, MLM transform, output
    batch = {"encoder_input_tokens": np.zeros((3, 10))}
    assert AlbertMLMModel(cfg).flops_per_batch(batch) == 3 * (6 * per_token * 10 + 12 * uses * d * 100)


def test_bad_configs_are_one_line_errors():
    with pytest.raises(ValueError, match="num_hidden_groups 4 exceeds num_layers 3"):
        AlbertConfig(num_layers=3, num_hidden_groups=4)
    with pytest.raises(ValueError, match="hidden_act='swish'"):
        AlbertConfig(hidden_act="swish")
    with pytest.raises(ValueError, match="embedding_size must be positive"):
        AlbertConfig(embedding_size=0)


def test_an_old_model_dir_binding_albert_config_is_read_as_albert_not_bert(tmp_path):
    """A MODEL_DIR from before model.json is told by its gin bindings: `AlbertConfig.` holds
    `BertConfig.` as a substring, which must not make it a ProtBert directory."""
    from prottrans_jax import model_dir as model_dir_lib

    (tmp_path / "operative_config.gin").write_text("import prottrans_jax.models.albert\n"
                                                   "AlbertConfig.hidden_size = 64\nAlbertConfig.num_heads = 4\n"
                                                   "AlbertConfig.embedding_size = 16\n")
    stored = model_dir_lib.read_model(str(tmp_path))
    assert stored.family.name == "prot_albert"
    assert (stored.config.hidden_size, stored.config.embedding_size) == (64, 16)
