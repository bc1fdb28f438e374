"""Hugging Face ALBERT <-> Flax: exact round trips, layouts, the spiece.model tokenizer, the
released config without model_type, errors, export."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax import export_hf, families
from prottrans_jax.convert import albert as albert_convert
from prottrans_jax.convert.hf_dir import load_hf_dir
from prottrans_jax.convert.hf_io import load_hf_state_dict
from prottrans_jax.models.albert import AlbertMLMModel
from prottrans_jax.vocab import prot_albert_vocabulary
from tests.conftest import numpy_state_dict, random_hf_albert

# The keys of Rostlab/prot_albert's config.json (families-spec.md section 3.1), tiny sizes:
# no model_type, TF-ALBERT leftovers.
RELEASED_STYLE = {"attention_probs_dropout_prob": 0, "hidden_act": "gelu", "hidden_dropout_prob": 0,
                  "embedding_size": 16, "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
                  "max_position_embeddings": 128, "num_attention_heads": 4, "num_hidden_layers": 3,
                  "num_hidden_groups": 1, "net_structure_type": 0, "layers_to_keep": [], "gap_size": 0,
                  "num_memory_blocks": 0, "inner_group_num": 1, "down_scale_factor": 1, "type_vocab_size": 2,
                  "vocab_size": 34}


def converted(head="pretraining", seed=0, **overrides):
    hf_model = random_hf_albert(head, seed)
    state_dict = numpy_state_dict(hf_model)
    config = albert_convert.config_from_hf(hf_model.config.to_dict(), state_dict, dtype="float32", **overrides)
    return state_dict, config, albert_convert.hf_to_flax(state_dict, config)


@pytest.mark.parametrize("head, scan", [("pretraining", False), ("pretraining", True), ("mlm", False)])
def test_hf_to_flax_to_hf_is_exact(head, scan):
    state_dict, config, params = converted(head, scan_layers=scan)
    back = albert_convert.flax_to_hf(params, config)
    tied = {"predictions.decoder.weight", "predictions.decoder.bias"}  # from_pretrained ties them
    assert set(back) == set(state_dict) - tied
    for key, value in back.items():
        np.testing.assert_array_equal(value, state_dict[key], err_msg=key)


def test_bare_albert_model_keys_buffers_and_legacy_names_are_read():
    state_dict, config, params = converted("pretraining")
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in state_dict.items()}
    legacy["albert.embeddings.position_ids"] = np.arange(128)[None]
    legacy["albert.embeddings.token_type_ids"] = np.zeros((1, 128), np.int64)
    jax.tree.map(np.testing.assert_array_equal, albert_convert.hf_to_flax(legacy, config), params)
    bare = {k[len("albert."):]: v for k, v in state_dict.items() if k.startswith("albert.")}  # pooler too
    encoder = albert_convert.hf_to_flax(bare, config, "encoder")
    jax.tree.map(np.testing.assert_array_equal, encoder, {k: params[k] for k in ("embeddings", "encoder")})


def test_mismatches_are_one_line_errors_naming_the_key():
    state_dict, config, _ = converted("pretraining")
    layer = "encoder/groups_0/layers_0/mlp/wi/bias"
    with pytest.raises(ValueError, match=f"shape mismatch for parameter {layer}: converted .128,., model expects .48,."):
        albert_convert.hf_to_flax(state_dict, dataclasses.replace(config, intermediate_size=48))
    second_group = r"'albert\.encoder\.albert_layer_groups\.1\.albert_layers\.0\.attention\.query\.weight'"
    with pytest.raises(ValueError, match=f"missing Hugging Face weight {second_group}"):
        albert_convert.hf_to_flax(state_dict, dataclasses.replace(config, num_hidden_groups=2))
    with pytest.raises(ValueError, match=r"'predictions\.extra\.weight' has no place in ALBERT config"):
        albert_convert.hf_to_flax({**state_dict, "predictions.extra.weight": np.ones(2)}, config)
    untied = {**state_dict, "predictions.decoder.weight": state_dict["predictions.decoder.weight"] + 1}
    with pytest.raises(ValueError, match="differs from 'albert.embeddings.word_embeddings.weight'"):
        albert_convert.hf_to_flax(untied, config)
    with pytest.raises(ValueError, match="not an ALBERT config: model_type='bert'"):
        albert_convert.config_from_hf({"model_type": "bert"})
    with pytest.raises(ValueError, match="unsupported ALBERT hidden_act 'swish'"):
        albert_convert.config_from_hf({"hidden_act": "swish"})


def test_the_released_config_without_model_type_is_read_as_albert(tiny_albert_hf_dir, tmp_path):
    config = albert_convert.config_from_hf(RELEASED_STYLE)
    assert (config.vocab_size, config.embedding_size, config.num_layers, config.hidden_act) == (34, 16, 3, "gelu")
    assert families.for_hf_config(RELEASED_STYLE, "config.json").name == "prot_albert"
    with pytest.raises(ValueError, match="model_type None is not a family this project reads"):
        families.for_hf_config({"hidden_size": 64}, "config.json")
    # A directory as released: config.json without model_type, spiece.model, the weights.
    for name in os.listdir(tiny_albert_hf_dir()):
        (tmp_path / name).write_bytes(open(os.path.join(tiny_albert_hf_dir(), name), "rb").read())
    (tmp_path / "config.json").write_text(json.dumps(RELEASED_STYLE, indent=2))
    imported = load_hf_dir(str(tmp_path), dtype="float32")
    assert imported.family.name == "prot_albert" and imported.config.pretraining_heads
    assert imported.vocabulary == prot_albert_vocabulary()
    state_dict = load_hf_state_dict(str(tmp_path))
    assert np.array_equal(imported.params["sop"]["kernel"], state_dict["sop_classifier.classifier.weight"].T)


def test_spiece_model_loads_in_transformers_with_our_ids(tmp_path):
    albert_convert.write_tokenizer(str(tmp_path))
    ours = prot_albert_vocabulary()
    expected = [ours.bos_id, *ours.encode("M K T A"), ours.eos_id]
    assert expected == [2, 21, 12, 15, 6, 3]
    for tokenizer in (transformers.AlbertTokenizer.from_pretrained(str(tmp_path)),
                      transformers.AutoTokenizer.from_pretrained(str(tmp_path))):
        assert tokenizer("M K T A").input_ids == expected
        assert tokenizer("A X C").input_ids == [2, 6, 25, 23, 3]
        assert (tokenizer.pad_token_id, tokenizer.mask_token_id, tokenizer.unk_token_id) == (0, 4, 1)
    pieces = albert_convert.tokenizer_pieces(str(tmp_path))
    assert albert_convert.vocabulary_from_pieces(pieces) == ours
    # Data-driven: another order of the residue pieces gives a vocabulary with that order.
    swapped = list(pieces)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    other = albert_convert.vocabulary_from_pieces(swapped)
    assert other.encode("A L") == [5, 6] and other != ours


def test_a_table_that_is_not_a_protein_albert_one_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        albert_convert.tokenizer_pieces(str(tmp_path))
    (tmp_path / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot read the tokenizer"):
        albert_convert.tokenizer_pieces(str(tmp_path))
    with pytest.raises(ValueError, match=r"has no \[CLS\] piece"):
        albert_convert.vocabulary_from_pieces(["<pad>", "<unk>", "[SEP]", *("\u2581" + a for a in "ACDEFGHIKLMNPQRSTVWY")])
    with pytest.raises(ValueError, match="no '\u2581'-prefixed piece for residue"):
        albert_convert.vocabulary_from_pieces(["<pad>", "<unk>", "[CLS]", "[SEP]", *"ACDEFGHIKLMNPQRSTVWY"])


def write_albert_model_dir(path, params, config, step=5):
    """A ProtAlbert MODEL_DIR as the trainer writes it: model.json and an orbax checkpoint."""
    import jax.numpy as jnp

    from prottrans_jax import model_dir as model_dir_lib
    from prottrans_jax.checkpoints import Checkpointer

    family = families.get("prot_albert")
    model_dir_lib.write_model_json(str(path), model_dir_lib.describe_model(family, config, prot_albert_vocabulary()))
    params = jax.tree.map(jnp.asarray, params)
    with Checkpointer(str(path), save_interval_steps=1, async_save=False) as checkpointer:
        checkpointer.save_now(step, {"step": jnp.asarray(step), "params": params,
                                     "opt_state": {"mu": jax.tree.map(jnp.zeros_like, params)}},
                              {"batches_consumed": step})


def test_export_loads_in_transformers_and_round_trips_exactly(tmp_path):
    state_dict, config, params = converted("pretraining", seed=4, scan_layers=True)
    write_albert_model_dir(tmp_path / "model", params, config)
    out = tmp_path / "hf"
    assert export_hf.main(["--model_dir", str(tmp_path / "model"), "--output", str(out)]) == 0
    assert {"config.json", "model.safetensors", "spiece.model", "tokenizer_config.json"} <= set(os.listdir(out))
    stored = json.loads((out / "config.json").read_text())
    assert stored["architectures"] == ["AlbertForPreTraining"] and stored["model_type"] == "albert"
    exported = load_hf_state_dict(str(out))
    for key, value in exported.items():  # HF -> ours -> HF through the files: bit for bit
        np.testing.assert_array_equal(value, state_dict[key], err_msg=key)

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    batch = tokenizer(["M K T A Y I A K Q R", "G S H M"], padding=True, return_tensors="pt")
    original = random_hf_albert("pretraining", seed=4)
    reloaded = transformers.AlbertForPreTraining.from_pretrained(str(out), attn_implementation="eager").eval()
    masked_lm = transformers.AlbertForMaskedLM.from_pretrained(str(out), attn_implementation="eager").eval()
    with torch.no_grad():
        want = original(**batch)
        theirs = reloaded(**batch)
        theirs_mlm = masked_lm(**batch).logits.numpy()
    tokens = batch.input_ids.numpy().astype(np.int32)
    ours = np.asarray(AlbertMLMModel(config).logits(params, {"encoder_input_tokens": tokens}))
    valid = batch.attention_mask.numpy().astype(bool)
    tolerance = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(theirs.prediction_logits.numpy()[valid], want.prediction_logits.numpy()[valid], **tolerance)
    np.testing.assert_allclose(theirs.sop_logits.numpy(), want.sop_logits.numpy(), **tolerance)
    np.testing.assert_allclose(theirs_mlm[valid], want.prediction_logits.numpy()[valid], **tolerance)
    np.testing.assert_allclose(ours[valid], want.prediction_logits.numpy()[valid], **tolerance)

    encoder_out = tmp_path / "encoder"
    assert export_hf.main(["--model_dir", str(tmp_path / "model"), "--output", str(encoder_out),
                           "--part", "encoder"]) == 0
    albert_model = transformers.AlbertModel.from_pretrained(str(encoder_out), add_pooling_layer=False).eval()
    with torch.no_grad():
        hidden = albert_model(**batch).last_hidden_state.numpy()
        expected = original.albert(**batch).last_hidden_state.numpy()
    np.testing.assert_allclose(hidden[valid], expected[valid], **tolerance)
