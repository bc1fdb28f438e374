"""ProtTXL's pre-training model and encoder: the carried memory (an empty one is no memory;
segments with carried memory equal one causal pass), the FLOPs formula, and long proteins
embedded in segments with memory in bounded device memory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prottrans_jax import families
from prottrans_jax.models.base import init_carry_fn
from prottrans_jax.models.transfo_xl import (TransfoXL, TransfoXLCausalLMModel, TransfoXLConfig,
                                             TransfoXLEncoder)
from prottrans_jax.partitioning import unbox_shapes
from prottrans_jax.vocab import prot_txl_vocabulary

TOL = dict(rtol=1e-5, atol=1e-5)  # float32, O(1) values
SEG = 8


def config(**overrides):
    base = dict(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, head_dim=8, intermediate_size=64,
                dropout_prob=0.0, attention_dropout_prob=0.0, initializer_range=0.3, mem_len=3 * SEG,
                dtype="float32")
    return TransfoXLConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def model_and_params():
    model = TransfoXLCausalLMModel(config())
    return model, model.init_params(jax.random.key(0))


def stream(rows, length, seed=0):
    return np.random.default_rng(seed).integers(2, 28, (rows, length)).astype(np.int32)


def segment_batch(tokens, start):
    inputs, targets = tokens[:, start:start + SEG], tokens[:, start + 1:start + SEG + 1]
    return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
            "decoder_loss_weights": np.ones_like(inputs), "decoder_masked_weights": (targets != 2).astype(np.int32)}


def test_an_empty_fixed_size_memory_is_no_memory(model_and_params):
    model, params = model_and_params
    tokens = stream(2, SEG)
    alone, _ = TransfoXL(model.config).apply({"params": params}, tokens)
    empty = jnp.zeros((2, 2, 3 * SEG, 32))
    with_empty, _ = TransfoXL(model.config).apply({"params": params}, tokens, empty, True,
                                                  jnp.zeros((2, 3 * SEG), bool))
    np.testing.assert_allclose(np.asarray(with_empty), np.asarray(alone), **TOL)
    unmasked, _ = TransfoXL(model.config).apply({"params": params}, tokens, empty)  # zeros attended
    assert np.max(np.abs(np.asarray(unmasked) - np.asarray(alone))) > 1e-3


def test_loss_over_segments_with_the_carry_equals_one_causal_pass(model_and_params):
    """Three segments, the memory carried from an empty start (mem_len covers the context):
    the summed loss equals one pass over the 3 * SEG tokens, and the carry holds no gradient."""
    model, params = model_and_params
    tokens = stream(2, 3 * SEG + 1, seed=1)
    carry = unbox_shapes(model.init_carry(2))
    assert carry["memory"].shape == (2, 2, 3 * SEG, 32) and not carry["valid"].any()
    total = 0.0
    for start in range(0, 3 * SEG, SEG):
        loss_sum, metrics, carry = model.loss_and_metrics(params, segment_batch(tokens, start), None, False, carry)
        total += float(loss_sum)
    assert carry["valid"].all()
    whole = TransfoXLCausalLMModel(dataclasses.replace(model.config, mem_len=0))
    assert init_carry_fn(whole) is None  # mem_len 0: no carry, the plain 2-tuple seam
    batch = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
             "decoder_loss_weights": np.ones((2, 3 * SEG), np.int32),
             "decoder_masked_weights": np.ones((2, 3 * SEG), np.int32)}
    one_pass, _ = whole.loss_and_metrics(params, batch, None, False)[:2]
    np.testing.assert_allclose(total, float(one_pass), rtol=1e-5, atol=1e-4)

    def loss_of_memory(memory):
        return model.loss_and_metrics(params, segment_batch(tokens, 0), None, False,
                                      {**carry, "memory": memory})[2]["memory"].sum()
    assert not np.asarray(jax.grad(loss_of_memory)(carry["memory"])).any()  # stop_gradient


def test_flops_count_matches_hand_formula():
    cfg = config(vocab_size=30, hidden_size=16, num_heads=2, head_dim=4, intermediate_size=32, mem_len=5)
    d, a, f, v, layers, length, keys = 16, 8, 32, 30, 2, 10, 15
    per_row = layers * (2 * length * d * a + 4 * keys * d * a + 2 * length * a * d + 4 * length * d * f
                        + 2 * length * keys * a * 2 + 2 * length * (keys + 1) * a) + 2 * length * d * v
    flops = TransfoXLCausalLMModel(cfg).flops_per_batch({"decoder_input_tokens": np.zeros((3, length))})
    assert flops == 3 * (3 * per_row + layers * 2 * (keys + 1) * d * a)


def test_a_long_protein_embedded_in_segments_with_memory_equals_one_causal_pass(model_and_params):
    """150 tokens read 16 at a time, with a memory that covers the context: one causal pass."""
    model, params = model_and_params
    cfg = dataclasses.replace(model.config, mem_len=160)
    tokens = stream(2, 150, seed=2)
    valid = np.ones_like(tokens, bool)
    segmented = TransfoXLEncoder(cfg, segment_length=16).hidden_states(params, tokens, valid)
    one_pass, _ = TransfoXL(dataclasses.replace(cfg, mem_len=0)).apply({"params": params}, tokens,
                                                                        method=TransfoXL.encode)
    assert segmented.shape == (2, 150, 32)
    np.testing.assert_allclose(np.asarray(segmented), np.asarray(one_pass), **TOL)
    # A memory shorter than the context forgets (what the model was trained with): the last
    # positions differ, the first segment's do not.
    short = np.asarray(TransfoXLEncoder(dataclasses.replace(cfg, mem_len=16)).hidden_states(params, tokens, valid))
    np.testing.assert_allclose(short[:, :16], np.asarray(one_pass)[:, :16], **TOL)
    assert np.max(np.abs(short[:, -16:] - np.asarray(one_pass)[:, -16:])) > 1e-3


def test_a_35000_residue_protein_embeds_in_bounded_memory(model_and_params):
    """The compiled program's scratch memory for 35,000 tokens: segments of 512 with a 512
    memory need about one segment's activations, not the 35,000^2 attention of one pass."""
    model, params = model_and_params
    cfg = dataclasses.replace(model.config, mem_len=512)
    encoder = TransfoXLEncoder(cfg)
    tokens = jax.ShapeDtypeStruct((1, 35_000), jnp.int32)

    def scratch_bytes(encoder, tokens):
        compiled = jax.jit(encoder.hidden_states).lower(params, tokens, tokens).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    long, short = scratch_bytes(encoder, tokens), scratch_bytes(encoder, jax.ShapeDtypeStruct((1, 1024), jnp.int32))
    output = 35_000 * 32 * 4
    one_pass_scores = 4 * 35_000 ** 2 * 4  # heads x L^2 float32, one layer
    print(f"35,000 residues: scratch {long / 2**20:.1f} MiB (1,024 residues: {short / 2**20:.1f} MiB; "
          f"one pass would need {one_pass_scores / 2**30:.1f} GiB of scores per layer)")
    assert long < 4 * output + 2 * short  # linear in the length: the output, plus one segment's work


def test_the_family_has_no_hugging_face_form():
    family = families.get("prot_txl")
    with pytest.raises(ValueError, match="prot_txl family has no Hugging Face form"):
        family.converter  # noqa: B018
    vocabulary = prot_txl_vocabulary()
    assert family.vocabulary_from_pieces(list(vocabulary.pieces), "model.json") == vocabulary
    assert vocabulary.vocab_size == 32 and vocabulary.piece(vocabulary.eos_id) == "<eos>"
    assert TransfoXLEncoder(config()).framing(vocabulary) == ((vocabulary.eos_id,), ())
    with pytest.raises(ValueError, match="not prot_txl's table"):
        family.vocabulary_from_pieces(list(vocabulary.pieces)[::-1], "model.json")
