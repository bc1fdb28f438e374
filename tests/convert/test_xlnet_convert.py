"""Hugging Face XLNet <-> Flax: exact round trips, layouts, configs, errors; the Transformer-XL
table; an exported state_dict and config load into transformers 5 and compute the same."""

import dataclasses

import numpy as np
import pytest
import torch
import transformers

from prottrans_jax.convert import xlnet as xlnet_convert
from prottrans_jax.models.xlnet import XLNet
from tests.conftest import numpy_state_dict, random_hf_xlnet


def converted(head="lm", seed=0, part="full", **overrides):
    hf_model = random_hf_xlnet(head, seed)
    state_dict = {k: v.copy() for k, v in numpy_state_dict(hf_model).items()}
    config = xlnet_convert.config_from_hf(hf_model.config.to_dict(), state_dict, dtype="float32", **overrides)
    return state_dict, config, xlnet_convert.hf_to_flax(state_dict, config, part)


@pytest.mark.parametrize("head, part, scan", [("lm", "full", False), ("lm", "full", True), ("model", "encoder", False)])
def test_hf_to_flax_to_hf_is_exact(head, part, scan):
    state_dict, config, params = converted(head, part=part, scan_layers=scan)
    back = xlnet_convert.flax_to_hf(params, config, part)
    assert set(back) == set(state_dict)
    for key, value in back.items():
        np.testing.assert_array_equal(value, state_dict[key], err_msg=key)
    layers = params["stack"]["layers"] if scan else params["stack"]["layers_0"]
    o = layers["attention"]["o"]
    assert o.shape == ((2, 4, 8, 32) if scan else (4, 8, 32))  # (heads, head_dim, d): XLNet's o transposed
    assert params["mask_emb"].shape == (32,)


def test_encoder_part_of_an_lm_checkpoint_and_config_fields():
    state_dict, config, params = converted("lm", part="encoder")
    assert set(params) == {"word_embedding", "mask_emb", "stack"}
    assert (config.vocab_size, config.hidden_size, config.num_layers, config.num_heads, config.head_dim,
            config.intermediate_size, config.hidden_act, config.mem_len, config.pad_id) == (30, 32, 2, 4, 8, 64,
                                                                                           "relu", 0, 5)
    hf_config = xlnet_convert.hf_config_from(config)
    again = xlnet_convert.config_from_hf(hf_config, dtype="float32")
    assert again == config
    assert hf_config["architectures"] == ["XLNetLMHeadModel"] and hf_config["mem_len"] is None


def test_exported_weights_and_config_load_in_transformers(tmp_path):
    state_dict, config, params = converted("lm", seed=3, mem_len=4, reuse_len=2)
    hf_config = transformers.XLNetConfig(**xlnet_convert.hf_config_from(config))
    reloaded = transformers.XLNetLMHeadModel(hf_config).eval()
    missing = reloaded.load_state_dict({k: torch.tensor(v) for k, v in
                                        xlnet_convert.flax_to_hf(params, config).items()}, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    tokens = np.random.default_rng(0).integers(9, 30, (2, 7)).astype(np.int32)
    with torch.no_grad():
        out = reloaded(input_ids=torch.tensor(tokens, dtype=torch.long), use_mems=True)
    logits, memory = XLNet(config).apply({"params": params}, tokens)
    np.testing.assert_allclose(np.asarray(logits), out.logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(memory), np.stack([m.numpy().transpose(1, 0, 2) for m in out.mems]),
                               rtol=1e-5, atol=1e-5)


def test_transfo_xl_reads_the_xlnet_table_without_the_two_stream_and_segment_parts():
    from prottrans_jax.models.transfo_xl import TransfoXLConfig

    state_dict, config, params = converted("lm", seed=4)
    txl = TransfoXLConfig(vocab_size=30, hidden_size=32, num_layers=2, num_heads=4, head_dim=8,
                          intermediate_size=64, dtype="float32")
    txl_params = xlnet_convert.transfo_xl_from_hf(state_dict, txl)
    assert "mask_emb" not in txl_params and "seg_embed" not in txl_params["stack"]["layers_0"]["attention"]
    np.testing.assert_array_equal(txl_params["stack"]["layers_1"]["attention"]["o"],
                                  params["stack"]["layers_1"]["attention"]["o"])
    np.testing.assert_array_equal(txl_params["lm_head"]["bias"], state_dict["lm_loss.bias"])


def test_mismatches_are_one_line_errors_naming_the_key():
    state_dict, config, _ = converted("lm")
    with pytest.raises(ValueError, match="shape mismatch for parameter stack/layers_0/mlp/wi/bias: converted "
                                         r"\(64,\), model expects \(48,\)"):
        xlnet_convert.hf_to_flax(state_dict, dataclasses.replace(config, intermediate_size=48))
    with pytest.raises(ValueError, match=r"'transformer\.extra' has no place in XLNet config"):
        xlnet_convert.hf_to_flax({**state_dict, "transformer.extra": np.ones(2)}, config)
    untied = {**state_dict, "lm_loss.weight": state_dict["lm_loss.weight"] + 1}
    with pytest.raises(ValueError, match="'lm_loss.weight' differs from 'transformer.word_embedding.weight'"):
        xlnet_convert.hf_to_flax(untied, config)
    without = {k: v for k, v in state_dict.items() if k != "transformer.layer.1.rel_attn.r"}
    with pytest.raises(ValueError, match=r"missing Hugging Face weight 'transformer\.layer\.1\.rel_attn\.r'"):
        xlnet_convert.hf_to_flax(without, config)
    with pytest.raises(ValueError, match="not an XLNet config: model_type='bert'"):
        xlnet_convert.config_from_hf({"model_type": "bert"})
    with pytest.raises(ValueError, match="untie_r=False"):
        xlnet_convert.config_from_hf({"untie_r": False})
    with pytest.raises(ValueError, match="XLNet part 'generator'"):
        xlnet_convert.flax_to_hf({}, config, "generator")


# ------------------------------------------------------------------------------ tokenizer


def test_the_written_spiece_model_loads_in_transformers_with_our_ids(tmp_path):
    """XLNetTokenizer on our spiece.model: the vocabulary's ids, `<sep> <cls>` appended, padding
    on the left with <pad> 5; X has no piece (<unk> 0); the table reads back as the built-in one."""
    from prottrans_jax.vocab import prot_xlnet_vocabulary

    vocabulary = prot_xlnet_vocabulary()
    xlnet_convert.write_tokenizer(str(tmp_path))
    for tokenizer in (transformers.XLNetTokenizer.from_pretrained(str(tmp_path)),
                      transformers.AutoTokenizer.from_pretrained(str(tmp_path))):
        assert tokenizer("M K T A").input_ids == [*vocabulary.encode("MKTA"), 4, 3]
        assert tokenizer("A X C").input_ids == [*vocabulary.encode("A"), 0, *vocabulary.encode("C"), 4, 3]
        assert tokenizer(["M K", "A C D E"], padding=True).input_ids[0][:2] == [5, 5]
        assert (tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
                tokenizer.pad_token_id, tokenizer.mask_token_id) == (0, 3, 4, 5, 6)
    pieces = xlnet_convert.tokenizer_pieces(str(tmp_path))
    assert xlnet_convert.vocabulary_from_pieces(pieces) == vocabulary


def test_a_table_that_is_not_xlnets_or_not_per_residue_is_refused(tmp_path):
    from prottrans_jax.vocab import prot_xlnet_vocabulary

    pieces = list(prot_xlnet_vocabulary().pieces)
    with pytest.raises(ValueError, match="has no <sep> piece: not an XLNet vocabulary"):
        xlnet_convert.vocabulary_from_pieces([p if p != "<sep>" else "<s2>" for p in pieces])
    with pytest.raises(ValueError, match="no '▁'-prefixed piece for residue\\(s\\) W"):
        xlnet_convert.vocabulary_from_pieces(pieces[:-1])
    swapped = pieces[:9] + [pieces[10], pieces[9]] + pieces[11:]  # another residue order: its own ids
    vocabulary = xlnet_convert.vocabulary_from_pieces(swapped, "x")
    assert vocabulary.encode("LA") == [10, 9] and vocabulary.encode("X") == [0]
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        xlnet_convert.tokenizer_pieces(str(tmp_path))
