"""Hugging Face BERT <-> Flax: exact round trips, layouts, the vocab.txt tokenizer, errors, export."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax import export_hf
from prottrans_jax.convert import bert as bert_convert
from prottrans_jax.convert.hf_io import load_hf_state_dict
from prottrans_jax.models.bert import BertMLMModel
from prottrans_jax.vocab import prot_bert_vocabulary
from tests.conftest import numpy_state_dict, random_hf_bert, write_family_model_dir


def converted(head="pretraining", seed=0, **overrides):
    state_dict = numpy_state_dict(random_hf_bert(head, seed))
    config = bert_convert.config_from_hf(random_hf_bert(head, seed).config.to_dict(), state_dict,
                                         dtype="float32", **overrides)
    return state_dict, config, bert_convert.hf_to_flax(state_dict, config)


@pytest.mark.parametrize("head, scan", [("pretraining", False), ("pretraining", True), ("mlm", False)])
def test_hf_to_flax_to_hf_is_exact(head, scan):
    state_dict, config, params = converted(head, scan_layers=scan)
    back = bert_convert.flax_to_hf(params, config)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}  # from_pretrained ties them
    assert set(back) == set(state_dict) - tied
    for key, value in back.items():
        np.testing.assert_array_equal(value, state_dict[key], err_msg=key)
    if scan:
        assert params["encoder"]["layers"]["attention"]["query"]["kernel"].shape == (2, 32, 32)


def test_legacy_names_and_bare_bert_model_keys_are_read():
    state_dict, config, params = converted("pretraining")
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in state_dict.items()}
    legacy["bert.embeddings.position_ids"] = np.arange(128)[None]
    jax.tree.map(np.testing.assert_array_equal, bert_convert.hf_to_flax(legacy, config), params)
    bare = {k[len("bert."):]: v for k, v in state_dict.items() if k.startswith("bert.") and "pooler" not in k}
    encoder = bert_convert.hf_to_flax(bare, config, "encoder")
    jax.tree.map(np.testing.assert_array_equal, encoder, {k: params[k] for k in ("embeddings", "encoder")})


def test_mismatches_are_one_line_errors_naming_the_key():
    state_dict, config, _ = converted("pretraining")
    with pytest.raises(ValueError, match="shape mismatch for parameter encoder/layers_0/mlp/wi/bias: converted .64,., model expects .48,."):
        bert_convert.hf_to_flax(state_dict, dataclasses.replace(config, intermediate_size=48))
    with pytest.raises(ValueError, match=r"'cls\.extra\.weight' has no place in BERT config"):
        bert_convert.hf_to_flax({**state_dict, "cls.extra.weight": np.ones(2)}, config)
    untied = {**state_dict, "cls.predictions.decoder.weight": state_dict["cls.predictions.decoder.weight"] + 1}
    with pytest.raises(ValueError, match="differs from 'bert.embeddings.word_embeddings.weight'"):
        bert_convert.hf_to_flax(untied, config)
    with pytest.raises(ValueError, match="not a BERT config: model_type='t5'"):
        bert_convert.config_from_hf({"model_type": "t5"})
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        bert_convert.config_from_hf({"position_embedding_type": "relative_key"})


def test_vocab_txt_loads_in_transformers_with_prot_bert_ids(tmp_path):
    bert_convert.write_tokenizer(str(tmp_path))
    tokenizer = transformers.BertTokenizer.from_pretrained(str(tmp_path))
    # The ids transformers' BertTokenizer gives with the released vocab.txt (families-spec 2.2).
    assert tokenizer("A E T C Z A O").input_ids == [2, 6, 9, 15, 23, 28, 6, 29, 3]
    assert tokenizer("m k").input_ids == [2, 1, 1, 3]  # cased, as ProtBert: lower case is [UNK]
    pieces = bert_convert.tokenizer_pieces(str(tmp_path))
    assert bert_convert.vocabulary_from_pieces(pieces) == prot_bert_vocabulary()
    ours = prot_bert_vocabulary()
    assert tokenizer("M K T A").input_ids == [ours.bos_id, *ours.encode("M K T A"), ours.eos_id]


def test_a_vocabulary_that_is_not_a_protein_bert_one_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        bert_convert.tokenizer_pieces(str(tmp_path))
    with pytest.raises(ValueError, match=r"has no \[CLS\] token"):
        bert_convert.vocabulary_from_pieces(["[PAD]", "[UNK]", "[SEP]", *"ACDEFGHIKLMNPQRSTVWY"])
    with pytest.raises(ValueError, match="no token for residue"):
        bert_convert.vocabulary_from_pieces(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "of"])


def test_export_loads_in_transformers_and_round_trips_exactly(tmp_path):
    state_dict, config, params = converted("pretraining", seed=4)
    write_family_model_dir(tmp_path / "model", params, config)
    out = tmp_path / "hf"
    assert export_hf.main(["--model_dir", str(tmp_path / "model"), "--output", str(out)]) == 0
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= set(os.listdir(out))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    exported = load_hf_state_dict(str(out))
    for key, value in exported.items():  # HF -> ours -> HF through the files: bit for bit
        np.testing.assert_array_equal(value, state_dict[key], err_msg=key)

    tokenizer = transformers.BertTokenizer.from_pretrained(str(out))
    batch = tokenizer(["M K T A Y I A K Q R", "G S H M"], padding=True, return_tensors="pt")
    reloaded = transformers.BertForMaskedLM.from_pretrained(str(out), attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = reloaded(**batch).logits.numpy()
        original = random_hf_bert("pretraining", seed=4)(**batch).prediction_logits.numpy()
    tokens = batch.input_ids.numpy().astype(np.int32)
    ours = np.asarray(BertMLMModel(config).logits(params, {"encoder_input_tokens": tokens}))
    valid = batch.attention_mask.numpy().astype(bool)
    np.testing.assert_allclose(theirs[valid], original[valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[valid], theirs[valid], rtol=1e-5, atol=1e-5)
    pretraining = transformers.BertForPreTraining.from_pretrained(str(out)).eval()  # pooler + NSP too
    with torch.no_grad():
        np.testing.assert_allclose(pretraining(**batch).seq_relationship_logits.numpy(),
                                   random_hf_bert("pretraining", seed=4)(**batch).seq_relationship_logits.numpy(),
                                   rtol=1e-5, atol=1e-5)

    encoder_out = tmp_path / "encoder"
    assert export_hf.main(["--model_dir", str(tmp_path / "model"), "--output", str(encoder_out),
                           "--part", "encoder"]) == 0
    bert_model = transformers.BertModel.from_pretrained(str(encoder_out), add_pooling_layer=False).eval()
    with torch.no_grad():
        hidden = bert_model(**batch).last_hidden_state.numpy()
    expected = random_hf_bert("pretraining", seed=4).bert(**batch).last_hidden_state.detach().numpy()
    np.testing.assert_allclose(hidden[valid], expected[valid], rtol=1e-5, atol=1e-5)
    assert export_hf.main(["--model_dir", str(tmp_path / "model"), "--output", str(out),
                           "--part", "generator"]) == 1  # a part BERT does not have
