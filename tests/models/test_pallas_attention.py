"""The Pallas kernel with T5's bias computed inside it equals `xla` (dense): on CPU in Pallas'
interpret mode (the kernel's own semantics, no GPU needed), compiled by Triton on a GPU."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from prottrans_jax.errors import UserError
from prottrans_jax.models import dot_product_attention as attention_module
from prottrans_jax.models.attention_bias import AttentionBias
from prottrans_jax.models.dot_product_attention import dot_product_attention
from prottrans_jax.models.pallas_attention import distance_bias, pallas_attention, pallas_forward
from tests.models.conftest import (ATTENTION_CASES, BUCKETS, HEADS, MAX_DISTANCE, TOL, assert_fused_equals_xla,
                                  attention_case, attention_inputs, valid_rows, value_and_grads)

TRITON_CALL = "__gpu$xla.gpu.triton"  # the custom call a Pallas kernel lowers to on CUDA
INTERPRET = functools.partial(pallas_attention, interpret=True, query_block=16, key_block=16, backward_block_size=16)


def _attention(name, implementation):
    def f(q, k, v, table):
        _, _, bias = attention_case(name, table)
        if implementation == "pallas":
            return INTERPRET(q, k, v, bias)
        return dot_product_attention(q, k, v, bias, implementation=implementation)
    return f


def _attended_rows(name, batch, q_length):
    """Rows whose query may attend somewhere: with `causal` the kernel skips the key blocks past
    the diagonal, so a fully masked (padding) query averages fewer values than xla's (discarded)."""
    if name == "decoder":
        return np.asarray(valid_rows([37, 25], q_length))
    return np.ones((batch, q_length), bool)


@pytest.mark.parametrize("name", ATTENTION_CASES)
def test_pallas_equals_xla_in_outputs_and_gradients(name):
    """37 (and 21) positions in tiles of 16, head_dim 8 padded to Triton's 16."""
    q_length, k_length, _ = attention_case(name, jnp.zeros((HEADS, BUCKETS)))
    q, k, v, table, cotangent = attention_inputs(2, q_length, k_length)
    expected, expected_grads = jax.jit(lambda *a: value_and_grads(_attention(name, "xla"), *a))(
        q, k, v, table, cotangent)
    got, got_grads = jax.jit(lambda *a: value_and_grads(_attention(name, "pallas"), *a))(q, k, v, table, cotangent)
    assert np.isfinite(np.asarray(got)).all()
    rows = _attended_rows(name, 2, q_length)
    np.testing.assert_allclose(np.asarray(got)[rows], np.asarray(expected)[rows], **TOL)
    for what, g, e in zip(("q", "k", "v", "table"), got_grads, expected_grads):
        np.testing.assert_allclose(g, e, **TOL, err_msg=f"d/d{what}")
    if name != "cross":
        assert float(jnp.abs(expected_grads[3]).max()) > 1e-3


@pytest.mark.parametrize("bidirectional", [True, False])
def test_distances_past_max_distance_take_the_last_bucket(bidirectional):
    """Rows of 300 with max_distance 128: most pairs lie past it, where T5's bucket is constant,
    so the kernel's clipped (heads, 257) distance table gives the whole bias."""
    q, k, v, table, _ = attention_inputs(1, 300, 300, seed=3)
    pos = jnp.arange(300)[None, :]
    bias = AttentionBias.create(300, 300, relative_table=table * 4.0, query_positions=pos, key_positions=pos,
                                num_buckets=BUCKETS, max_distance=MAX_DISTANCE, bidirectional=bidirectional,
                                causal=not bidirectional)
    expected = dot_product_attention(q, k, v, bias)
    got = pallas_forward(q, k, v, bias, interpret=True, query_block=64, key_block=64)
    np.testing.assert_allclose(got, expected, **TOL)
    assert distance_bias(bias).shape == (HEADS, 512)


def test_head_dims_and_dtypes():
    """head_dim 24 (padded to 32) and bfloat16 inputs (float32 logits and accumulators)."""
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 50, 2, 24)), jnp.float32) for _ in range(3))
    table = jnp.asarray(rng.normal(size=(2, BUCKETS)), jnp.float32)
    pos = jnp.arange(50)[None, :]
    bias = AttentionBias.create(50, 50, relative_table=table, query_positions=pos, key_positions=pos,
                                query_valid=valid_rows([50, 41], 50), key_valid=valid_rows([50, 41], 50))
    expected = dot_product_attention(q, k, v, bias)
    np.testing.assert_allclose(pallas_forward(q, k, v, bias, interpret=True, query_block=16, key_block=32),
                               expected, **TOL)
    half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    got = pallas_forward(*half, bias, dtype=jnp.bfloat16, interpret=True)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=3e-2, atol=3e-2)


def test_block_sizes_must_be_powers_of_two():
    q, k, v, _, _ = attention_inputs(1, 8, 8)
    with pytest.raises(ValueError, match="powers of 2"):
        pallas_forward(q, k, v, AttentionBias.create(8, 8), interpret=True, query_block=48)


def test_pallas_is_refused_where_it_cannot_run():
    q, k, v, _, _ = attention_inputs(1, 8, 8)
    if jax.default_backend() != "gpu":
        with pytest.raises(UserError, match="attention_implementation='pallas' needs a CUDA GPU"):
            dot_product_attention(q, k, v, AttentionBias.create(8, 8), implementation="pallas")
    from prottrans_jax.models.transfo_xl import TransfoXLConfig
    from prottrans_jax.models.xlnet import XLNetConfig

    for config in (XLNetConfig, TransfoXLConfig):  # relative scores: the kernel has no term for them
        with pytest.raises(UserError, match=r"attention_implementation='pallas'; expected one of \('xla', "
                                            r"'chunked', 'cudnn'\)"):
            config(attention_implementation="pallas")


def test_t5_with_pallas_equals_xla(monkeypatch):
    """The model path (config field -> MultiHeadAttention -> entry point), the kernel interpreted."""
    from prottrans_jax.models.t5 import T5, T5Config

    monkeypatch.setattr(attention_module, "check_available", lambda implementation, dtype: None)
    monkeypatch.setattr(attention_module, "pallas_attention", INTERPRET)
    config = T5Config(vocab_size=64, d_model=32, num_heads=4, head_dim=8, d_ff=48, num_encoder_layers=1,
                      num_decoder_layers=1, dropout_rate=0.0, dtype="float32")
    rng = np.random.default_rng(5)
    encoder_tokens = jnp.asarray(rng.integers(2, 64, (2, 37)) * (np.arange(37) < np.array([[37], [30]])), jnp.int32)
    targets = jnp.asarray(rng.integers(2, 64, (2, 21)), jnp.int32)
    decoder_tokens = jnp.roll(targets, 1, axis=1).at[:, 0].set(0)
    model = T5(config)
    variables = model.init(jax.random.key(0), encoder_tokens, decoder_tokens)
    expected = model.apply(variables, encoder_tokens, decoder_tokens, targets)
    fused = T5(dataclasses.replace(config, attention_implementation="pallas"))
    np.testing.assert_allclose(fused.apply(variables, encoder_tokens, decoder_tokens, targets), expected, **TOL)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="the Triton kernel needs a CUDA GPU (backend: "
                    f"{jax.default_backend()})")
@pytest.mark.parametrize("name,length", [("encoder", 1000), ("decoder", 256), ("encoder", 37)])
def test_pallas_compiled_on_gpu_equals_xla(name, length):
    """The kernel compiled by Triton, default tiles (1,000 rows: 16 query blocks, the last one
    part padding): output and the table's gradient equal xla's, in bfloat16."""
    assert_fused_equals_xla("pallas", name, length)


@pytest.mark.parametrize("name", ["encoder", "packed_decoder", "cross"])
def test_kernel_lowers_to_triton_for_cuda(name, monkeypatch):
    """Pallas' Triton lowering runs without a GPU (`jax.export` for platform cuda): the kernel,
    its in-kernel bias gather and its causal loop bound are ops Triton takes, in bfloat16 with
    chunked's backward beside it. What this cannot check is Triton's compilation to PTX (the
    GPU test below). The abstract H100 is the target Triton compiles for: JAX 0.11 asks the
    device for its compute capability, and a CPU host has none."""
    q_length, k_length, _ = attention_case(name, jnp.zeros((HEADS, BUCKETS)))

    def loss(q, k, v, table):
        _, _, bias = attention_case(name, table)
        out = dot_product_attention(q, k, v, bias, implementation="pallas", dtype=jnp.bfloat16, block_size=16)
        return out.astype(jnp.float32).sum()

    def spec(length):
        return jax.ShapeDtypeStruct((2, length, HEADS, 64), jnp.bfloat16)

    monkeypatch.setattr(attention_module, "check_available", lambda implementation, dtype: None)
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
    h100 = jax.sharding.AbstractMesh((1,), ("data",), abstract_device=jax.sharding.AbstractDevice(
        device_kind="NVIDIA H100", num_cores=None, platform="cuda"))
    with jax.sharding.use_abstract_mesh(h100):
        exported = export.export(step, platforms=["cuda"],
                                 disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON_CALL)])(
            spec(q_length), spec(k_length), spec(k_length), jax.ShapeDtypeStruct((HEADS, BUCKETS), jnp.float32))
    module = exported.mlir_module()
    assert module.count(f"@{TRITON_CALL}(") == 1, "one fused forward; the backward is chunked's XLA"
    assert 'name = "t5_bias_attention"' in module
    assert exported.platforms == ("cuda",)
