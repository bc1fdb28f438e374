"""ELECTRA conversion: HF -> ours -> HF bit-exact per tower, the two-directory layout of a
whole model, export that transformers loads, and the one-line errors."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers

from prottrans_jax import export_hf
from prottrans_jax.convert import electra as electra_convert
from prottrans_jax.convert.hf_dir import load_hf_dir
from prottrans_jax.convert.hf_io import load_hf_state_dict
from prottrans_jax.models.electra import Electra
from tests.conftest import numpy_state_dict, random_hf_electra, write_family_model_dir

CLOSE = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_hf_to_flax_to_hf_is_exact_for_each_tower(scan):
    models = random_hf_electra(seed=0)
    for tower, model in models.items():
        state_dict = numpy_state_dict(model)
        config = electra_convert.config_from_hf(model.config.to_dict(), state_dict, scan_layers=scan)
        assert electra_convert.hf_part(model.config.to_dict(), state_dict) == tower
        back = electra_convert.flax_to_hf(electra_convert.hf_to_flax(state_dict, config, tower), config, tower)
        assert set(back) == set(state_dict), tower
        for key, value in state_dict.items():
            np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_a_whole_model_is_two_directories_with_one_embedding(tiny_electra_hf_dir, tmp_path):
    whole = load_hf_dir(tiny_electra_hf_dir(0))
    assert whole.family.name == "prot_electra" and whole.part == "full"
    assert set(whole.params) == {"embeddings", "discriminator", "generator"}
    assert whole.config.hidden_size == 32 and whole.config.generator_hidden_size == 16
    generator = load_hf_dir(os.path.join(tiny_electra_hf_dir(0), "generator"), inference=True)
    assert generator.part == "generator" and set(generator.params) == {"embeddings", "generator"}
    # Embeddings that differ between the towers cannot be one shared table.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_electra_hf_dir(0), copy)
    other = random_hf_electra(seed=5)["generator"]
    other.save_pretrained(copy / "generator")
    with pytest.raises(ValueError, match="generator's and discriminator's embeddings/word/embedding differ"):
        load_hf_dir(str(copy))
    # One tower alone is not a whole model (continued pre-training needs both).
    with pytest.raises(ValueError, match="holds only the prot_electra discriminator"):
        load_hf_dir(os.path.join(tiny_electra_hf_dir(0), "discriminator"))
    shutil.rmtree(copy / "generator")
    with pytest.raises(FileNotFoundError, match="has no generator/ directory"):
        load_hf_dir(str(copy))


def test_released_files_may_hold_more_than_their_parameters(tmp_path):
    """The released HF files are larger than their parameters: keys outside ELECTRA's own
    prefixes are ignored; inside them, an unknown key is still an error naming it."""
    model = random_hf_electra(seed=1)["discriminator"]
    state_dict = numpy_state_dict(model)
    config = electra_convert.config_from_hf(model.config.to_dict(), state_dict)
    extra = {**state_dict, "optimizer.step": np.zeros(1), "electra.embeddings.position_ids": np.arange(4)}
    params = electra_convert.hf_to_flax(extra, config, "discriminator")
    np.testing.assert_array_equal(params["embeddings"]["word"]["embedding"],
                                  state_dict["electra.embeddings.word_embeddings.weight"])
    with pytest.raises(ValueError, match="'electra.encoder.layer.9.output.dense.weight' has no place"):
        electra_convert.hf_to_flax({**state_dict, "electra.encoder.layer.9.output.dense.weight": np.zeros(1)},
                                   config, "discriminator")
    del state_dict["discriminator_predictions.dense.bias"]
    with pytest.raises(ValueError, match="missing Hugging Face weight 'discriminator_predictions.dense.bias'"):
        electra_convert.hf_to_flax(state_dict, config, "discriminator")


def test_export_writes_both_towers_that_transformers_loads_and_round_trips(tiny_electra_hf_dir, tmp_path):
    whole = load_hf_dir(tiny_electra_hf_dir(0), dtype="float32")
    write_family_model_dir(tmp_path / "model", whole.params, whole.config, "prot_electra")
    out = tmp_path / "hf"
    assert export_hf.main(["--model_dir", str(tmp_path / "model"), "--output", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["discriminator", "generator"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out / "generator"))
    batch = tokenizer(["M K T A Y I A K Q R", "G S H M"], padding=True, return_tensors="pt")
    valid = batch.attention_mask.numpy().astype(bool)
    original = random_hf_electra(seed=0)
    for tower, cls in (("discriminator", transformers.ElectraForPreTraining),
                       ("generator", transformers.ElectraForMaskedLM)):
        config = json.loads((out / tower / "config.json").read_text())
        assert config["architectures"] == [cls.__name__]
        exported = load_hf_state_dict(str(out / tower))
        expected = numpy_state_dict(original[tower])
        for key, value in exported.items():  # HF -> ours -> HF through the files: bit for bit
            np.testing.assert_array_equal(value, expected[key], err_msg=key)
        reloaded = cls.from_pretrained(str(out / tower), attn_implementation="eager").eval()
        with torch.no_grad():
            theirs, reference = reloaded(**batch).logits.numpy(), original[tower](**batch).logits.numpy()
        np.testing.assert_allclose(theirs[valid], reference[valid], **CLOSE)
        method = Electra.discriminator_logits if tower == "discriminator" else Electra.generator_logits
        ours = Electra(whole.config).apply({"params": whole.params}, batch.input_ids.numpy().astype(np.int32),
                                           method=method)
        np.testing.assert_allclose(np.asarray(ours)[valid], theirs[valid], **CLOSE)
    # One tower on request, as its own directory.
    single = tmp_path / "generator_only"
    assert export_hf.main(["--model_dir", str(tmp_path / "model"), "--output", str(single),
                           "--part", "generator"]) == 0
    assert json.loads((single / "config.json").read_text())["architectures"] == ["ElectraForMaskedLM"]
    # The output already holds a model: refused without --overwrite, replaced with it.
    assert export_hf.main(["--model_dir", str(tmp_path / "model"), "--output", str(out)]) == 1
    assert export_hf.main(["--model_dir", str(tmp_path / "model"), "--output", str(out), "--overwrite",
                           "--part", "discriminator"]) == 0
    assert "config.json" in os.listdir(out) and "generator" not in os.listdir(out)
