"""export_hf: ProtT5 tokenizer files, MODEL_DIR reading, and the HF -> ours -> HF round trip."""

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax import export_hf
from prottrans_jax import model_dir as model_dir_lib
from prottrans_jax.convert import t5 as t5_convert
from prottrans_jax.convert.hf_io import load_hf_state_dict
from prottrans_jax.convert.t5 import config_from_hf
from prottrans_jax.models.t5 import T5
from prottrans_jax.vocab import prot_t5_vocabulary
from tests.conftest import HF_TINY, numpy_state_dict, random_hf_model, write_model_dir

@pytest.fixture(scope="module")
def hf_model():
    return random_hf_model()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, hf_model):
    path = tmp_path_factory.mktemp("model_dir")
    state_dict = numpy_state_dict(hf_model)
    write_model_dir(path, state_dict)
    return str(path), state_dict


# ------------------------------------------------------------------------------ tokenizer


def test_written_tokenizer_loads_in_transformers_with_prott5_ids(tmp_path):
    t5_convert.write_tokenizer(str(tmp_path))
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(tmp_path))
    vocabulary = prot_t5_vocabulary()
    by_id = {i: piece for piece, i in tokenizer.get_vocab().items()}
    assert [by_id[i] for i in range(128)] == list(vocabulary.pieces)
    assert tokenizer("M K T A").input_ids == vocabulary.encode("M K T A") + [vocabulary.eos_id]
    assert tokenizer("M K T A").input_ids == [19, 14, 11, 3, 1]
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == 127
    assert t5_convert.tokenizer_pieces(str(tmp_path)) == list(vocabulary.pieces)
    assert t5_convert.vocabulary_from_pieces(t5_convert.tokenizer_pieces(str(tmp_path))) == vocabulary


def test_tokenizer_json_is_read_when_there_is_no_spiece_model(tmp_path):
    t5_convert.write_tokenizer(str(tmp_path / "sp"))
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(tmp_path / "sp"))
    tokenizer.save_pretrained(str(tmp_path / "fast"))
    if os.path.exists(tmp_path / "fast" / "spiece.model"):
        os.remove(tmp_path / "fast" / "spiece.model")
    assert os.path.exists(tmp_path / "fast" / "tokenizer.json")
    assert t5_convert.tokenizer_pieces(str(tmp_path / "fast")) == list(prot_t5_vocabulary().pieces)


def test_a_tokenizer_with_another_table_is_refused(tmp_path):
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    t5_convert.write_tokenizer(str(tmp_path))
    model = sp_pb2.ModelProto()
    with open(tmp_path / "spiece.model", "rb") as f:
        model.ParseFromString(f.read())
    model.pieces[3].piece, model.pieces[4].piece = model.pieces[4].piece, model.pieces[3].piece
    with open(tmp_path / "spiece.model", "wb") as f:
        f.write(model.SerializeToString())
    with pytest.raises(ValueError, match=r"at id 3: '▁L' there, '▁A'"):
        t5_convert.vocabulary_from_pieces(t5_convert.tokenizer_pieces(str(tmp_path)))
    os.remove(tmp_path / "spiece.model")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        t5_convert.tokenizer_pieces(str(tmp_path))


# ------------------------------------------------------------------------------ MODEL_DIR


def test_old_model_dir_is_read_from_its_gin_without_running_its_imports(model_dir, capsys):
    path, state_dict = model_dir
    stored = model_dir_lib.read_model(path)
    assert "Zen of Python" not in capsys.readouterr().out  # `import this` was not executed
    assert stored.family.name == "prot_t5" and stored.vocabulary == prot_t5_vocabulary()
    assert stored.config == config_from_hf(HF_TINY, state_dict, dtype="float32")
    params, step = model_dir_lib.restore_params(path, stored, ("token_embedder", "encoder"))
    assert step == 7 and set(params) == {"token_embedder", "encoder"}
    np.testing.assert_array_equal(np.asarray(params["token_embedder"]["embedding"]), state_dict["shared.weight"])


def test_model_json_says_what_a_model_dir_holds(model_dir, tmp_path):
    path, state_dict = model_dir
    stored = model_dir_lib.read_model(path)
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(path, copy)
    os.remove(copy / "operative_config.gin")
    model_dir_lib.write_model_json(str(copy), model_dir_lib.describe_model(
        stored.family, stored.config, stored.vocabulary))
    again = model_dir_lib.read_model(str(copy), dtype="bfloat16")
    assert again.family.name == "prot_t5" and again.vocabulary == stored.vocabulary
    assert again.config == dataclasses.replace(stored.config, dtype="bfloat16")
    data = json.loads((copy / "model.json").read_text())
    data["config"]["d_modle"] = 3
    (copy / "model.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"model.json: T5Config has no field 'd_modle'"):
        model_dir_lib.read_model(str(copy))


# ------------------------------------------------------------------------------ export


def test_export_round_trip_is_exact_and_transformers_matches_our_encoder(model_dir, tmp_path, hf_model):
    path, state_dict = model_dir
    out = str(tmp_path / "hf")
    assert export_hf.main(["--model_dir", path, "--output", out]) == 0
    assert {"config.json", "model.safetensors", "spiece.model", "tokenizer_config.json",
            "special_tokens_map.json"} <= set(os.listdir(out))
    exported = load_hf_state_dict(out)
    aliases = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    assert set(exported) == set(state_dict) - aliases
    for key, value in exported.items():  # HF -> ours -> HF: bit for bit
        np.testing.assert_array_equal(value, state_dict[key], err_msg=key)

    tokenizer = transformers.T5Tokenizer.from_pretrained(out)
    batch = tokenizer(["M K T A Y I A K Q R", "G S H M"], padding=True, return_tensors="pt")
    encoder = transformers.T5EncoderModel.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = encoder(**batch).last_hidden_state.numpy()
    stored = model_dir_lib.read_model(path)
    params, _ = model_dir_lib.restore_params(path, stored, ("token_embedder", "encoder"))
    ours = np.asarray(T5(stored.config).apply({"params": params}, jnp.asarray(batch.input_ids.numpy()),
                                              method=T5.encode))
    valid = batch.attention_mask.numpy().astype(bool)
    np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # and the full model equals the one it came from
        ids = batch.input_ids
        a = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()(input_ids=ids, labels=ids).logits
        b = hf_model(input_ids=ids, labels=ids).logits
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=1e-5)


def test_encoder_only_export_is_a_t5_encoder_model(model_dir, tmp_path):
    path, state_dict = model_dir
    out = str(tmp_path / "enc")
    assert export_hf.main(["--model_dir", path, "--output", out, "--encoder_only"]) == 0
    exported = load_hf_state_dict(out)
    assert not any(k.startswith("decoder.") or k == "lm_head.weight" for k in exported)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["architectures"] == ["T5EncoderModel"]
    transformers.T5EncoderModel.from_pretrained(out)  # loads without missing keys
    assert export_hf.main(["--model_dir", path, "--output", out, "--encoder_only"]) == 1  # no silent overwrite
    assert export_hf.main(["--model_dir", path, "--output", out, "--part", "encoder", "--overwrite"]) == 0
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []  # no staging left


def test_a_crash_during_export_leaves_the_previous_export_whole(model_dir, tmp_path, monkeypatch):
    path, _ = model_dir
    out = tmp_path / "hf"
    assert export_hf.main(["--model_dir", path, "--output", str(out)]) == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(t5_convert, "write_tokenizer", crash)
    assert export_hf.main(["--model_dir", path, "--output", str(out), "--overwrite"]) == 1
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # the staging directory is gone


def test_export_errors_are_one_line(tmp_path, capsys):
    assert export_hf.main(["--model_dir", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model directory") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.gin").write_text("import prottrans_jax.models.t5\nT5Config.d_model = 32\n")
    assert export_hf.main(["--model_dir", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint in") and err.count("\n") == 1


# ------------------------------------------------------------------------------ ProtXLNet


def test_an_xlnet_model_dir_exports_as_xlnet_lm_head_model_and_encoder(tmp_path):
    """A prot_xlnet MODEL_DIR -> XLNetLMHeadModel (and XLNetModel with --part encoder) with an
    XLNetTokenizer: the weights come back bit for bit, and transformers' logits on its own
    left-padded tokenisation, perm_mask and target_mapping included, are our model's."""
    from prottrans_jax.convert import xlnet as xlnet_convert
    from prottrans_jax.models.xlnet import XLNet
    from tests.conftest import random_hf_xlnet, write_family_model_dir

    hf_model = random_hf_xlnet("lm", 7)
    state_dict = numpy_state_dict(hf_model)
    config = xlnet_convert.config_from_hf(hf_model.config.to_dict(), state_dict, dtype="float32")
    params = xlnet_convert.hf_to_flax(state_dict, config)
    write_family_model_dir(tmp_path / "model", params, config, "prot_xlnet")
    out = str(tmp_path / "hf")
    assert export_hf.main(["--model_dir", str(tmp_path / "model"), "--output", out]) == 0
    assert {"config.json", "model.safetensors", "spiece.model", "tokenizer_config.json"} <= set(os.listdir(out))
    exported = load_hf_state_dict(out)
    assert set(exported) == set(state_dict)
    for key, value in exported.items():
        np.testing.assert_array_equal(value, state_dict[key], err_msg=key)

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["M K T A Y I A K Q R", "G S H M"], padding=True, return_tensors="pt")
    assert batch.input_ids[1, :6].tolist() == [5] * 6 and batch.input_ids[:, -2:].tolist() == [[4, 3]] * 2
    length = batch.input_ids.shape[1]
    perm_mask = torch.zeros((2, length, length))
    perm_mask[:, :, -4] = 1.0  # nobody sees the residue before <sep>: it is the target
    target_mapping = torch.zeros((2, 1, length))
    target_mapping[:, 0, -4] = 1.0
    reloaded = transformers.XLNetLMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        plain = reloaded(**batch, use_mems=False).logits.numpy()
        permuted = reloaded(**batch, perm_mask=perm_mask, target_mapping=target_mapping, use_mems=False).logits.numpy()
    model = XLNet(config)
    tokens, mask = jnp.asarray(batch.input_ids.numpy()), jnp.asarray(batch.attention_mask.numpy())
    ours, _ = model.apply({"params": params}, tokens, mask)
    ours_permuted, _ = model.apply({"params": params}, tokens, mask, None, jnp.asarray(perm_mask.numpy()),
                                   jnp.asarray(target_mapping.numpy()))
    valid = batch.attention_mask.numpy().astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[valid], plain[valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours_permuted), permuted, rtol=1e-5, atol=1e-5)

    encoder_out = str(tmp_path / "encoder")
    assert export_hf.main(["--model_dir", str(tmp_path / "model"), "--output", encoder_out, "--part", "encoder"]) == 0
    encoder = transformers.XLNetModel.from_pretrained(encoder_out).eval()
    with torch.no_grad():
        hidden = encoder(**batch, use_mems=False).last_hidden_state.numpy()
    ours_hidden, _ = model.apply({"params": params}, tokens, mask, method=XLNet.encode)
    np.testing.assert_allclose(np.asarray(ours_hidden)[valid], hidden[valid], rtol=1e-5, atol=1e-5)
