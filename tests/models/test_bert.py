"""BERT model: parity with Hugging Face (PyTorch, float32), packing, gin sizes, real weights."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax.convert import bert as bert_convert
from prottrans_jax.convert.hf_io import load_hf_config, load_hf_state_dict
from prottrans_jax.models.bert import Bert, BertConfig, BertMLMModel
from prottrans_jax.models.gin_utils import config_from_gin
from prottrans_jax.models.layers import count_params
from tests.conftest import framed_tokens, numpy_state_dict, random_hf_bert

LENGTH = 20


def ours(hf_model, **overrides):
    state_dict = numpy_state_dict(hf_model)
    config = bert_convert.config_from_hf(hf_model.config.to_dict(), state_dict, dtype="float32", **overrides)
    return config, bert_convert.hf_to_flax(state_dict, config)


@pytest.mark.parametrize("hidden_act, scan", [("gelu", False), ("gelu_new", True)])
def test_pretraining_logits_and_hidden_states_match_hf(hidden_act, scan):
    hf_model = random_hf_bert("pretraining", hidden_act=hidden_act)
    config, params = ours(hf_model, scan_layers=scan)
    assert config.pretraining_heads and config.hidden_act == ("gelu" if hidden_act == "gelu" else "gelu_tanh")
    tokens = framed_tokens(LENGTH, [LENGTH, 12, 7])
    token_types = np.zeros_like(tokens)
    token_types[0, 10:] = 1  # a sentence pair in the first row
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                       attention_mask=torch.tensor(tokens != 0, dtype=torch.long),
                       token_type_ids=torch.tensor(token_types, dtype=torch.long),
                       output_hidden_states=True)
    model = Bert(config)
    mlm, nsp = model.apply({"params": params}, tokens, token_types)
    hidden = model.apply({"params": params}, tokens, token_types, method=Bert.encode)
    valid = tokens != 0
    np.testing.assert_allclose(np.asarray(hidden)[valid], out.hidden_states[-1].numpy()[valid],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mlm)[valid], out.prediction_logits.numpy()[valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(nsp), out.seq_relationship_logits.numpy(), rtol=1e-5, atol=1e-5)


def test_masked_lm_checkpoint_matches_hf_masked_lm_and_bert_model():
    hf_model = random_hf_bert("mlm", seed=1)
    config, params = ours(hf_model)
    assert not config.pretraining_heads and "pooler" not in params
    tokens = framed_tokens(LENGTH, [LENGTH, 9], seed=1)
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                       attention_mask=torch.tensor(tokens != 0, dtype=torch.long), output_hidden_states=True)
    logits = BertMLMModel(config).logits(params, {"encoder_input_tokens": tokens})
    valid = tokens != 0
    np.testing.assert_allclose(np.asarray(logits)[valid], out.logits.numpy()[valid], rtol=1e-5, atol=1e-5)
    # BertModel: the encoder alone, its checkpoint without the `bert.` prefix.
    bare = random_hf_bert("model", seed=2)
    encoder_params = bert_convert.hf_to_flax(numpy_state_dict(bare), config, "encoder")
    assert set(encoder_params) == {"embeddings", "encoder"}
    with torch.no_grad():
        expected = bare(input_ids=torch.tensor(tokens, dtype=torch.long),
                        attention_mask=torch.tensor(tokens != 0, dtype=torch.long)).last_hidden_state.numpy()
    hidden = Bert(config).apply({"params": encoder_params}, tokens, method=Bert.encode)
    np.testing.assert_allclose(np.asarray(hidden)[valid], expected[valid], rtol=1e-5, atol=1e-5)


def test_packed_proteins_equal_proteins_alone():
    config, params = ours(random_hf_bert("mlm", seed=3))
    a, b = framed_tokens(LENGTH, [9], seed=4)[0, :9], framed_tokens(LENGTH, [7], seed=5)[0, :7]
    packed = np.zeros((1, LENGTH), np.int32)
    packed[0, :9], packed[0, 9:16] = a, b
    segments = np.zeros_like(packed)
    segments[0, :9], segments[0, 9:16] = 1, 2
    positions = np.zeros_like(packed)
    positions[0, :9], positions[0, 9:16] = np.arange(9), np.arange(7)
    together = np.asarray(Bert(config).apply({"params": params}, packed, None, segments, positions,
                                             method=Bert.encode))
    for tokens, where in ((a, slice(0, 9)), (b, slice(9, 16))):
        alone = np.asarray(Bert(config).apply({"params": params}, tokens[None], method=Bert.encode))
        np.testing.assert_allclose(together[0, where], alone[0], rtol=1e-5, atol=1e-5)


def test_gin_sizes_and_the_released_parameter_count():
    tiny = config_from_gin(BertConfig, ["gin/models/bert/tiny.gin"])
    assert (tiny.hidden_size, tiny.num_layers, tiny.vocab_size) == (64, 2, 30)
    for name in ("prot_bert", "prot_bert_bfd"):
        config = config_from_gin(BertConfig, [f"gin/models/bert/{name}.gin"])
        assert (config.num_layers, config.hidden_size, config.num_heads, config.intermediate_size,
                config.vocab_size, config.max_position_embeddings) == (30, 1024, 16, 4096, 30, 40000)
        # Rostlab/prot_bert: 420,984,864 parameters as BertForPreTraining (its file size), and
        # 419,933,214 without the pooler and NSP head (BertForMaskedLM): eval_shape, no memory.
        assert count_params(BertMLMModel(config).abstract_params()) == 420_984_864
        assert count_params(BertMLMModel(dataclasses.replace(config, pretraining_heads=False))
                            .abstract_params()) == 419_933_214


# Two real antibody chains (trastuzumab's variable domains, heavy and light; public sequences).
ANTIBODIES = ["EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS",
              "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFGQGTKVEIK"]


def test_real_antiberty_weights_give_transformers_logits(antiberty_dir, tmp_path):
    """A real trained BertForMaskedLM (AntiBERTy, 26M parameters) through our converter:
    catches transposes and ties that random weights could hide."""
    weights_dir, vocab_txt = antiberty_dir
    hf_model = transformers.BertForMaskedLM.from_pretrained(str(weights_dir), attn_implementation="eager").eval()
    hf_model.save_pretrained(tmp_path)  # BertForMaskedLM's own layout (AntiBERTy's extra heads dropped)
    tmp_path.joinpath("vocab.txt").write_bytes(vocab_txt.read_bytes())
    vocabulary = bert_convert.vocabulary_from_pieces(bert_convert.tokenizer_pieces(str(tmp_path)))
    assert vocabulary.vocab_size == 25 and vocabulary.encode("A C X") == [5, 6, vocabulary.unk_id]
    state_dict = load_hf_state_dict(str(tmp_path))
    config = bert_convert.config_from_hf(load_hf_config(str(tmp_path)), state_dict, dtype="float32")
    assert (config.num_layers, config.hidden_size, config.vocab_size) == (8, 512, 25)
    params = bert_convert.hf_to_flax(state_dict, config)
    # (transformers 5's BertTokenizer(vocab_file=...) reads only the special tokens: load the directory.)
    tokenizer = transformers.BertTokenizer.from_pretrained(str(tmp_path), do_lower_case=False)
    batch = tokenizer([" ".join(s) for s in ANTIBODIES], padding=True, return_tensors="pt")
    tokens = batch.input_ids.numpy().astype(np.int32)
    assert [list(row[1:len(s) + 1]) for row, s in zip(tokens, ANTIBODIES)] == \
        [vocabulary.encode(s) for s in ANTIBODIES]  # our vocabulary, their tokenizer: same ids
    with torch.no_grad():
        expected = hf_model(**batch).logits.numpy()
    logits = np.asarray(BertMLMModel(config).logits(params, {"encoder_input_tokens": tokens}))
    valid = batch.attention_mask.numpy().astype(bool)
    np.testing.assert_allclose(logits[valid], expected[valid], rtol=1e-5, atol=1e-5)
    # A trained model: it predicts the residues it sees far above chance.
    assert np.mean(logits[valid].argmax(-1) == tokens[valid]) > 0.5
    back = bert_convert.flax_to_hf(params, config)
    for key, value in back.items():  # HF -> ours -> HF, bit for bit
        np.testing.assert_array_equal(value, state_dict[key], err_msg=key)


def test_bfloat16_compute_with_scan_and_remat_tracks_float32():
    """The sizes' runtime settings (prot_bert.gin: scan + remat, bf16 compute) keep float32
    parameters and the float32 loss and gradients within bfloat16's precision."""
    import jax.numpy as jnp

    config, params = ours(random_hf_bert("mlm", seed=6))
    batch = {"encoder_input_tokens": framed_tokens(LENGTH, [LENGTH, 11], seed=6)}
    weights = (batch["encoder_input_tokens"] > 4).astype(np.int32)
    batch.update(encoder_target_tokens=batch["encoder_input_tokens"], encoder_loss_weights=weights,
                 encoder_masked_weights=weights)

    def loss_and_grads(cfg, p):
        model = BertMLMModel(cfg)
        return jax.jit(jax.value_and_grad(
            lambda q: model.loss_and_metrics(q, batch, jax.random.key(0), False)[0]))(p)

    loss, grads = loss_and_grads(config, params)
    fast = dataclasses.replace(config, dtype="bfloat16", scan_layers=True, remat_policy="full")
    stacked = bert_convert.hf_to_flax(numpy_state_dict(random_hf_bert("mlm", seed=6)), fast)
    assert stacked["encoder"]["layers"]["mlp"]["wi"]["kernel"].dtype == np.float32
    fast_loss, fast_grads = loss_and_grads(fast, jax.tree.map(jnp.asarray, stacked))
    np.testing.assert_allclose(float(fast_loss), float(loss), rtol=2e-2)
    np.testing.assert_allclose(np.asarray(fast_grads["mlm"]["output_bias"]), np.asarray(grads["mlm"]["output_bias"]),
                               rtol=5e-2, atol=5e-2 * np.abs(np.asarray(grads["mlm"]["output_bias"])).max())
