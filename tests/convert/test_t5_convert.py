"""Hugging Face T5 <-> Flax conversion: exact round trips, layouts, files, configs, errors."""

import dataclasses
import json
import os
import pickle

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax.convert.hf_io import load_hf_config, load_hf_state_dict, save_hf_model
from prottrans_jax.convert.t5 import config_from_hf, flax_to_hf, hf_config_from, hf_to_flax, load_hf_t5
from prottrans_jax.models.gin_utils import config_from_gin
from prottrans_jax.models.t5 import T5, T5Config, abstract_variables, shift_right
from tests.conftest import assert_trees_equal, numpy_state_dict

# Same dimensions and batch shapes as tests/models/test_t5.py (shared eager op cache).
HF_BASE = dict(
    vocab_size=128, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
    relative_attention_num_buckets=16, relative_attention_max_distance=12, dropout_rate=0.0,
    decoder_start_token_id=0,
)
TINY = T5Config(
    d_model=32, num_heads=4, head_dim=8, d_ff=48, num_encoder_layers=2, num_decoder_layers=3,
    relative_attention_num_buckets=16, relative_attention_max_distance=12, dropout_rate=0.0, dtype="float32",
)
TIED_ALIASES = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}


def random_hf_state_dict(feed_forward: str, tied: bool, encoder_only: bool = False, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    hf_config = transformers.T5Config(**HF_BASE, feed_forward_proj=feed_forward, tie_word_embeddings=tied)
    model_cls = transformers.T5EncoderModel if encoder_only else transformers.T5ForConditionalGeneration
    model = model_cls(hf_config)
    if not tied and not encoder_only:
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    return numpy_state_dict(model)


def random_params(config: T5Config, seed: int = 0) -> dict:
    """The model's own parameter tree (from eval_shape: no compile) filled with random values."""
    abstract = nn.unbox(abstract_variables(config))["params"]
    leaves, treedef = jax.tree.flatten(abstract)
    rng = np.random.default_rng(seed)
    # Scaled like the model's initialisers (fan-in) so that activations stay O(1).
    values = [rng.normal(0.0, 1.0 / np.sqrt(x.shape[-2]) if x.ndim >= 2 else 1.0, x.shape).astype(np.float32) for x in leaves]
    values = [v if v.ndim >= 2 else np.abs(v) + 0.5 for v in values]  # norm scales: positive, not 1
    return jax.tree.unflatten(treedef, values)


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_hf_to_flax_to_hf_is_exact(feed_forward, tied, scan):
    state_dict = random_hf_state_dict(feed_forward, tied)
    config = config_from_hf({**HF_BASE, "feed_forward_proj": feed_forward, "tie_word_embeddings": tied}, state_dict, scan_layers=scan)
    back = flax_to_hf(hf_to_flax(state_dict, config), config)
    expected_keys = set(state_dict) - TIED_ALIASES - ({"lm_head.weight"} if tied else set())
    assert set(back) == expected_keys
    for key in expected_keys:
        np.testing.assert_array_equal(back[key], state_dict[key], err_msg=key)


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_flax_to_hf_to_flax_is_exact(feed_forward, tied, scan):
    config = dataclasses.replace(TINY, feed_forward=feed_forward, tie_word_embeddings=tied, scan_layers=scan)
    params = random_params(config)
    state_dict = flax_to_hf(params, config)
    assert ("lm_head.weight" in state_dict) == (not tied)
    assert_trees_equal(hf_to_flax(state_dict, config), params)


def test_scanned_layout_stacks_the_unscanned_layers():
    state_dict = random_hf_state_dict("relu", False)
    unscanned = hf_to_flax(state_dict, dataclasses.replace(TINY, tie_word_embeddings=False))
    scanned = hf_to_flax(state_dict, dataclasses.replace(TINY, tie_word_embeddings=False, scan_layers=True))
    for stack, n in (("encoder", 2), ("decoder", 3)):
        for i in range(n):
            layer_i = jax.tree.map(lambda x: x[i], scanned[stack]["layers"])
            assert_trees_equal(layer_i, unscanned[stack][f"layers_{i}"])
    np.testing.assert_array_equal(
        unscanned["encoder"]["layers_1"]["attention"]["query"]["kernel"],
        state_dict["encoder.block.1.layer.0.SelfAttention.q.weight"].T,
    )


def test_encoder_only_checkpoint_converts_to_the_encoder_subset():
    state_dict = random_hf_state_dict("gated-gelu", True, encoder_only=True)
    config = dataclasses.replace(TINY, feed_forward="gated-gelu")
    params = hf_to_flax(state_dict, config)
    assert set(params) == {"token_embedder", "encoder"}
    back = flax_to_hf(params, config)
    assert set(back) == set(state_dict) - TIED_ALIASES
    # The encoder of a full checkpoint, on request, is the same subset.
    full = random_hf_state_dict("gated-gelu", True)
    assert set(hf_to_flax(full, config, "encoder")) == {"token_embedder", "encoder"}


# ------------------------------------------------------------------------------ files


def test_exported_directory_loads_in_transformers_with_identical_outputs(tmp_path):
    """Our weights -> HF directory -> transformers gives our logits and hidden states; and back."""
    rng = np.random.default_rng(0)
    inputs = np.zeros((3, 20), np.int32)
    targets = np.zeros((3, 14), np.int32)
    for row, (n_in, n_tgt) in enumerate([(20, 14), (9, 5), (15, 11)]):
        inputs[row, :n_in] = rng.integers(2, 128, n_in)
        targets[row, :n_tgt] = rng.integers(2, 128, n_tgt)
    # ProtT5-XL's combination: separate lm_head, decoder outputs scaled by d_model**-0.5.
    config = dataclasses.replace(TINY, tie_word_embeddings=False, scale_decoder_outputs=True)
    params = random_params(config, seed=1)
    save_hf_model(str(tmp_path), flax_to_hf(params, config), hf_config_from(config))

    model = T5(config)
    ours_logits = np.asarray(model.apply({"params": params}, inputs, shift_right(targets), targets))
    ours_hidden = np.asarray(model.apply({"params": params}, inputs, method=T5.encode))
    mask = torch.tensor(inputs != 0, dtype=torch.long)
    with torch.no_grad():
        full = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
        hf_logits = full(input_ids=torch.tensor(inputs), attention_mask=mask, labels=torch.tensor(targets, dtype=torch.long)).logits
        encoder = transformers.T5EncoderModel.from_pretrained(str(tmp_path)).eval()
        hf_hidden = encoder(input_ids=torch.tensor(inputs), attention_mask=mask).last_hidden_state
    assert full.config.scale_decoder_outputs and not torch.equal(full.lm_head.weight, full.shared.weight)
    dec_valid, enc_valid = targets != 0, inputs != 0
    np.testing.assert_allclose(ours_logits[dec_valid], hf_logits.numpy()[dec_valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours_hidden[enc_valid], hf_hidden.numpy()[enc_valid], rtol=1e-5, atol=1e-5)

    loaded_config, loaded_params = load_hf_t5(str(tmp_path), dtype="float32")
    assert loaded_config == config
    assert_trees_equal(loaded_params, params)


def test_load_hf_state_dict_reads_every_layout(tmp_path):
    tensors = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b.weight": np.ones(4, np.float16)}
    from safetensors.numpy import save_file
    from safetensors.torch import save_file as save_torch_file

    single = tmp_path / "single"
    single.mkdir()
    save_file(tensors, str(single / "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a.weight": tensors["a.weight"]}, str(sharded / "model-00001-of-00002.safetensors"))
    save_file({"b.weight": tensors["b.weight"]}, str(sharded / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, str(legacy / "pytorch_model.bin"))
    for directory in (single, sharded, legacy):
        loaded = load_hf_state_dict(str(directory))
        assert set(loaded) == set(tensors)
        for key, value in tensors.items():
            np.testing.assert_array_equal(loaded[key], value)
            assert loaded[key].dtype == value.dtype
    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    save_torch_file({"c.weight": torch.full((3,), 1.5, dtype=torch.bfloat16)}, str(bf16 / "model.safetensors"))
    np.testing.assert_array_equal(load_hf_state_dict(str(bf16))["c.weight"], np.full(3, 1.5, np.float32))


class _NotATensor:
    def __reduce__(self):  # what a malicious pickle would do: call a function on load
        return (os.getcwd, ())


def test_load_hf_state_dict_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no Hugging Face weights in {tmp_path}"):
        load_hf_state_dict(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_hf_state_dict(str(tmp_path))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    with open(pickled / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": _NotATensor()}, f, protocol=2)
    with pytest.raises(ValueError, match="pytorch_model.bin.*weights_only"):
        load_hf_state_dict(str(pickled))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_config(str(pickled))


# ------------------------------------------------------------------------------ configs


def test_config_round_trips_through_transformers():
    for config in (TINY, dataclasses.replace(TINY, feed_forward="gated-gelu", tie_word_embeddings=False)):
        hf_config = transformers.T5Config(**hf_config_from(config))
        back = config_from_hf(hf_config.to_dict(), dtype="float32")
        assert back == config
        assert hf_config.scale_decoder_outputs == config.scales_decoder_outputs
        assert hf_config.is_gated_act == (config.feed_forward == "gated-gelu")


def test_released_prot_t5_xl_config_gives_xl_gin():
    # config.json of Rostlab/prot_t5_xl_uniref50 (transformers 4 era: no tie_word_embeddings).
    released = {
        "architectures": ["T5WithLMHeadModel"], "d_ff": 16384, "d_kv": 128, "d_model": 1024,
        "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1, "initializer_factor": 1.0,
        "is_encoder_decoder": True, "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512,
        "num_heads": 32, "num_layers": 24, "output_past": True, "pad_token_id": 0,
        "relative_attention_num_buckets": 32, "vocab_size": 128,
    }
    untied_weights = {"shared.weight": np.zeros((2, 2)), "lm_head.weight": np.ones((2, 2))}
    config = config_from_hf(released, untied_weights, scan_layers=True, remat_policy="minimal")
    assert config == config_from_gin(T5Config, ["gin/models/t5/xl.gin"])
    assert config_from_hf(released).tie_word_embeddings  # without weights: T5 1.0 convention


# ------------------------------------------------------------------------------ bad input


def test_conversion_errors_name_the_key():
    state_dict = random_hf_state_dict("relu", True)
    with pytest.raises(ValueError, match="shape mismatch.*mlp/wi/kernel"):
        hf_to_flax(state_dict, dataclasses.replace(TINY, d_ff=64))
    with pytest.raises(ValueError, match="missing Hugging Face weight 'encoder.block.0.layer.1.DenseReluDense.wi_0.weight'"):
        hf_to_flax(state_dict, dataclasses.replace(TINY, feed_forward="gated-gelu"))
    with pytest.raises(ValueError, match="'encoder.block.2.layer.0.layer_norm.weight' has no place"):
        hf_to_flax({**state_dict, "encoder.block.2.layer.0.layer_norm.weight": np.ones(32)}, TINY)
    with pytest.raises(ValueError, match="'lm_head.weight' differs from 'shared.weight'"):
        hf_to_flax({**state_dict, "lm_head.weight": state_dict["lm_head.weight"] + 1}, TINY)
    with pytest.raises(ValueError, match="missing Hugging Face weight 'lm_head.weight'"):
        hf_to_flax({k: v for k, v in state_dict.items() if k != "lm_head.weight"}, dataclasses.replace(TINY, tie_word_embeddings=False))
    with pytest.raises(ValueError, match="gated-silu"):
        config_from_hf({**HF_BASE, "feed_forward_proj": "gated-silu"})
