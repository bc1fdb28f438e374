"""Transformer-XL model: parity with Hugging Face's XLNet in "uni" mode (transformers 5 has no
Transformer-XL class), with and without memory; recurrence and causality by self-consistency;
the sqrt(d) embedding option; gin sizes and the paper's parameter counts."""

import dataclasses
import functools
import math

import jax
import numpy as np
import pytest
import torch

from prottrans_jax.convert import xlnet as xlnet_convert
from prottrans_jax.models.gin_utils import config_from_gin
from prottrans_jax.models.layers import count_params
from prottrans_jax.models.transfo_xl import TransfoXL, TransfoXLConfig, init_params
from tests.conftest import numpy_state_dict, random_hf_xlnet

SEG = 6
TOL = dict(rtol=1e-5, atol=1e-5)  # float32, O(1) values
UNI = dict(attn_type="uni", bi_data=False, ff_activation="relu", layer_norm_eps=1e-5)


def txl_config(**overrides):
    base = dict(vocab_size=30, hidden_size=32, num_layers=2, num_heads=4, head_dim=8, intermediate_size=64,
                dropout_prob=0.0, attention_dropout_prob=0.0, layer_norm_eps=1e-5, scale_embedding=False,
                mem_len=0, dtype="float32")
    return TransfoXLConfig(**{**base, **overrides})


def tokens_of(batch, length, seed):
    return np.random.default_rng(seed).integers(0, 30, (batch, length)).astype(np.int32)


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_equals_xlnet_uni_without_memory():
    hf_model = random_hf_xlnet("lm", **UNI)
    config = txl_config(scan_layers=True)
    params = xlnet_convert.transfo_xl_from_hf(numpy_state_dict(hf_model), config)
    tokens = tokens_of(3, SEG, 0)
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long), use_mems=False, output_hidden_states=True)
    logits, memory = TransfoXL(config).apply({"params": params}, tokens)
    hidden, _ = TransfoXL(config).apply({"params": params}, tokens, method=TransfoXL.encode)
    assert memory is None
    np.testing.assert_allclose(np.asarray(hidden), out.hidden_states[-1].numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(logits), out.logits.numpy(), **TOL)
    print(f"TXL vs XLNet uni: max |diff| hidden {max_diff(hidden, out.hidden_states[-1]):.2e}, "
          f"logits {max_diff(logits, out.logits):.2e}")


def test_equals_xlnet_uni_with_memory_across_three_segments():
    hf_model = random_hf_xlnet("model", seed=1, mem_len=8, **UNI)
    config = txl_config(mem_len=8)
    params = xlnet_convert.transfo_xl_from_hf(numpy_state_dict(hf_model), config)
    assert not params["lm_head"]["bias"].any()  # an XLNetModel checkpoint: no output bias
    model = TransfoXL(config)
    hf_mems, memory = None, None
    for step in range(3):  # memory 0, then 6, then 8 (the last mem_len of 12)
        tokens = tokens_of(2, SEG, 10 + step)
        with torch.no_grad():
            out = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long), mems=hf_mems, use_mems=True)
        hidden, memory = model.apply({"params": params}, tokens, memory, method=TransfoXL.encode)
        hf_mems = out.mems
        np.testing.assert_allclose(np.asarray(hidden), out.last_hidden_state.numpy(), **TOL)
        expected = np.stack([m.numpy().transpose(1, 0, 2) for m in hf_mems])
        np.testing.assert_allclose(np.asarray(memory), expected, **TOL)
    assert memory.shape == (2, 2, 8, 32)
    print(f"TXL vs XLNet uni, memory: max |diff| third-segment hidden {max_diff(hidden, out.last_hidden_state):.2e}")


def test_sqrt_d_embedding_scale_is_xlnet_with_a_scaled_table():
    hf_model = random_hf_xlnet("model", seed=2, **UNI)
    config = txl_config(scale_embedding=True)
    params = xlnet_convert.transfo_xl_from_hf(numpy_state_dict(hf_model), config)
    with torch.no_grad():  # a new tensor: numpy_state_dict's arrays share the old one's memory
        hf_model.word_embedding.weight.data = hf_model.word_embedding.weight * math.sqrt(32)
    tokens = tokens_of(2, SEG, 3)
    with torch.no_grad():
        expected = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long), use_mems=False).last_hidden_state
    hidden, _ = TransfoXL(config).apply({"params": params}, tokens, method=TransfoXL.encode)
    np.testing.assert_allclose(np.asarray(hidden), expected.numpy(), **TOL)
    unscaled, _ = TransfoXL(dataclasses.replace(config, scale_embedding=False)).apply(
        {"params": params}, tokens, method=TransfoXL.encode)
    assert max_diff(unscaled, hidden) > 1e-2


@pytest.fixture(scope="module")
def random_txl():
    config = txl_config(num_layers=3, initializer_range=0.3)
    return config, init_params(config, jax.random.key(0))


def test_segments_with_memory_equal_one_causal_pass(random_txl):
    config, params = random_txl
    tokens = tokens_of(2, 3 * SEG, 4)
    whole, _ = TransfoXL(config).apply({"params": params}, tokens)
    recurrent = TransfoXL(dataclasses.replace(config, mem_len=2 * SEG))  # memory covers the context
    memory, parts = None, []
    for start in range(0, 3 * SEG, SEG):
        logits, memory = recurrent.apply({"params": params}, tokens[:, start:start + SEG], memory)
        parts.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(parts, axis=1), np.asarray(whole), **TOL)
    print(f"TXL recurrence vs one pass: max |diff| {max_diff(np.concatenate(parts, axis=1), whole):.2e}")
    # A shorter memory forgets: the last segment's outputs change.
    short = TransfoXL(dataclasses.replace(config, mem_len=2))
    memory = None
    for start in range(0, 3 * SEG, SEG):
        logits, memory = short.apply({"params": params}, tokens[:, start:start + SEG], memory)
    assert max_diff(logits, parts[-1]) > 1e-3


def test_an_output_does_not_depend_on_later_tokens(random_txl):
    config, params = random_txl
    tokens = tokens_of(1, 2 * SEG, 5)
    logits, _ = TransfoXL(config).apply({"params": params}, tokens)
    for t in (0, 4, 2 * SEG - 2):
        changed = tokens.copy()
        changed[0, t + 1:] = (changed[0, t + 1:] + 7) % 30
        again, _ = TransfoXL(config).apply({"params": params}, changed)
        np.testing.assert_allclose(np.asarray(again)[0, :t + 1], np.asarray(logits)[0, :t + 1], **TOL)
        assert max_diff(np.asarray(again)[0, t + 1:], np.asarray(logits)[0, t + 1:]) > 1e-3


def test_one_layer_with_a_short_memory_is_sliding_window_attention():
    """families-spec 6.5 (c): with mem_len < history, a 1-layer model's query at position p of
    a segment sees exactly the mem_len tokens before the segment and the segment up to p."""
    config = txl_config(num_layers=1, initializer_range=0.3, mem_len=4)
    params = init_params(config, jax.random.key(1))
    tokens = tokens_of(1, 3 * SEG, 6)
    model = TransfoXL(config)
    memory = None
    for start in range(0, 3 * SEG, SEG):
        logits, memory = model.apply({"params": params}, tokens[:, start:start + SEG], memory)
    start = 2 * SEG
    window = tokens[:, start - 4:]  # memory (4 tokens) + the last segment, in one pass
    expected, _ = TransfoXL(dataclasses.replace(config, mem_len=0)).apply({"params": params}, window)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected)[:, 4:], **TOL)


def test_gin_sizes_and_the_paper_parameter_counts():
    tiny = config_from_gin(TransfoXLConfig, ["gin/models/transfo_xl/tiny.gin"])
    assert (tiny.hidden_size, tiny.num_layers, tiny.mem_len, tiny.scale_embedding) == (64, 2, 32, True)
    # UNVERIFIED sizes (families-spec 6.2); these counts are what make them plausible.
    for name, layers, heads, count in (("prot_txl_bfd", 32, 14, 562_479_136), ("prot_txl", 30, 16, 409_315_360)):
        config = config_from_gin(TransfoXLConfig, [f"gin/models/transfo_xl/{name}.gin"])
        assert (config.num_layers, config.num_heads, config.layer_norm_eps) == (layers, heads, 1e-5)
        abstract = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
        assert count_params(abstract) == count
    with pytest.raises(ValueError, match="TransfoXLConfig.hidden_act='gelu_exact'"):
        txl_config(hidden_act="gelu_exact")
