"""The attention implementations agree: `chunked` (tiles, online softmax, the T5 bias per tile)
equals `xla` (dense) in outputs and gradients, float32 on CPU; `cudnn` equals `xla` on a GPU."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prottrans_jax.errors import UserError
from prottrans_jax.models import dot_product_attention as dot_product_attention_module
from prottrans_jax.models.attention_bias import MASKED_LOGIT, AttentionBias, relative_position_bucket
from prottrans_jax.models.dot_product_attention import dot_product_attention, softmax
from tests.models.conftest import (ATTENTION_CASES, BUCKETS, HEAD_DIM, HEADS, MAX_DISTANCE, TOL,
                                  assert_fused_equals_xla, attention_case, attention_inputs, valid_rows,
                                  value_and_grads)


def _attention(implementation, name, block_size=16):
    """f(q, k, v, table) -> output, for one case and implementation."""
    def f(q, k, v, table):
        _, _, bias = attention_case(name, table)
        return dot_product_attention(q, k, v, bias, implementation=implementation, block_size=block_size)
    return f


@pytest.mark.parametrize("name", ATTENTION_CASES)
def test_chunked_equals_xla_in_outputs_and_gradients(name):
    """37 (and 21) positions in blocks of 16: lengths that do not divide the block."""
    q_length, k_length, _ = attention_case(name, jnp.zeros((HEADS, BUCKETS)))
    q, k, v, table, cotangent = attention_inputs(2, q_length, k_length)
    expected, expected_grads = jax.jit(lambda *a: value_and_grads(_attention("xla", name), *a))(
        q, k, v, table, cotangent)
    got, got_grads = jax.jit(lambda *a: value_and_grads(_attention("chunked", name), *a))(
        q, k, v, table, cotangent)
    np.testing.assert_allclose(got, expected, **TOL)
    for what, g, e in zip(("q", "k", "v", "table"), got_grads, expected_grads):
        np.testing.assert_allclose(g, e, **TOL, err_msg=f"d/d{what}")
    if name != "cross":
        assert float(jnp.abs(expected_grads[3]).max()) > 1e-3  # the table's gradient is not trivially 0


@pytest.mark.parametrize("name", ATTENTION_CASES)
def test_xla_by_rows_on_cpu_equals_the_whole_batch_at_once(name, monkeypatch):
    """With the size threshold at 0, `xla` on this CPU runs a forward row by row, equal to the
    whole batch's computation, for every bias pattern; differentiated, it runs the whole batch
    (rows made gradients slower), in reverse and in forward mode, with the same gradients."""
    monkeypatch.setattr(dot_product_attention_module, "CPU_BY_ROWS_MIN_BYTES", 0)
    q_length, k_length, _ = attention_case(name, jnp.zeros((HEADS, BUCKETS)))
    q, k, v, table, cotangent = attention_inputs(2, q_length, k_length, seed=3)

    def whole_batch(q, k, v, table):
        _, _, bias = attention_case(name, table)
        return dot_product_attention_module._dense(q, k, v, bias, 0.0, None, jnp.float32)

    by_rows = jax.jit(_attention("xla", name))
    assert "while" in by_rows.lower(q, k, v, table).as_text()  # the rows' loop ran
    expected, expected_grads = jax.jit(lambda *a: value_and_grads(whole_batch, *a))(q, k, v, table, cotangent)
    np.testing.assert_allclose(by_rows(q, k, v, table), expected, **TOL)

    differentiated = jax.jit(lambda *a: value_and_grads(by_rows, *a))
    assert "while" not in differentiated.lower(q, k, v, table, cotangent).as_text()
    got, got_grads = differentiated(q, k, v, table, cotangent)
    np.testing.assert_allclose(got, expected, **TOL)
    for what, g, e in zip(("q", "k", "v", "table"), got_grads, expected_grads):
        np.testing.assert_allclose(g, e, **TOL, err_msg=f"d/d{what}")
    tangents = (cotangent, v, k, 2.0 * table)  # forward mode: any directions of the inputs' shapes
    want = jax.jvp(whole_batch, (q, k, v, table), tangents)
    for g, e in zip(jax.jit(lambda *a: jax.jvp(by_rows, a, tangents))(q, k, v, table), want):
        np.testing.assert_allclose(g, e, **TOL)


def test_xla_by_rows_is_for_cpus_and_large_batches_only(monkeypatch):
    """Lowered for a GPU, the same call has no rows' loop; on a CPU, batches whose scores are
    under the threshold (the tests' tiny models) and single rows have none either."""
    q, k, v, table, _ = attention_inputs(2, 37, 37)
    attend = jax.jit(_attention("xla", "encoder"))
    assert "while" not in attend.lower(q, k, v, table).as_text()  # 2 x 4 x 37 x 37 x 4 bytes < 16 MiB
    monkeypatch.setattr(dot_product_attention_module, "CPU_BY_ROWS_MIN_BYTES", 0)
    attend = jax.jit(_attention("xla", "encoder"))
    exported = {platform: jax.export.export(attend, platforms=[platform])(q, k, v, table).mlir_module()
                for platform in ("cpu", "cuda")}
    assert "stablehlo.while" in exported["cpu"] and "stablehlo.while" not in exported["cuda"]
    single = [x[:1] for x in (q, k, v)]
    bias = AttentionBias.create(37, 37, key_valid=valid_rows([30], 37))
    assert "while" not in jax.jit(lambda q, k, v: dot_product_attention(q, k, v, bias)).lower(*single).as_text()


@pytest.mark.parametrize("block_size", [1, 37, 64])
def test_chunked_block_sizes(block_size):
    """One-position tiles, one tile exactly the length, and a block longer than the rows."""
    q, k, v, table, _ = attention_inputs(2, 37, 37, seed=1)
    expected = _attention("xla", "encoder")(q, k, v, table)
    got = jax.jit(_attention("chunked", "encoder", block_size))(q, k, v, table)
    np.testing.assert_allclose(got, expected, **TOL)


def test_fully_masked_rows_are_finite_and_match_xla():
    """A query row that may attend nowhere gives xla's uniform average, not NaN."""
    q, k, v, _, _ = attention_inputs(1, 20, 20, seed=2)
    bias = AttentionBias.create(20, 20, query_valid=valid_rows([12], 20), key_valid=valid_rows([0], 20))
    expected = dot_product_attention(q, k, v, bias, implementation="xla")
    got = dot_product_attention(q, k, v, bias, implementation="chunked", block_size=8)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(got, expected, **TOL)
    np.testing.assert_allclose(got[0, 0], jnp.mean(v[0], axis=0), **TOL)


@pytest.mark.parametrize("custom_jvp", [False, True])
def test_softmax_equals_jax_softmax_in_values_and_gradients(custom_jvp):
    """xla's softmax has jax's custom gradient whatever `jax_softmax_custom_jvp` says; rows
    partly and fully masked (MASKED_LOGIT) included."""
    logits = 3.0 * jax.random.normal(jax.random.key(0), (2, 3, 5, 7))
    logits = logits.at[0, :, 1, 4:].set(MASKED_LOGIT).at[1, 2, 3, :].set(MASKED_LOGIT)
    cotangent = jax.random.normal(jax.random.key(1), logits.shape)

    def value_and_grad(fn):
        weights, pullback = jax.vjp(fn, logits)
        return weights, pullback(cotangent)[0]

    with jax.softmax_custom_jvp(custom_jvp):
        expected, expected_grad = jax.jit(lambda: value_and_grad(lambda x: jax.nn.softmax(x, axis=-1)))()
    got, got_grad = jax.jit(lambda: value_and_grad(softmax))()
    np.testing.assert_allclose(got, expected, **TOL)
    np.testing.assert_allclose(got_grad, expected_grad, **TOL)
    np.testing.assert_allclose(got[1, 2, 3], np.full(7, 1 / 7), **TOL)  # fully masked: uniform, finite
    assert float(jnp.abs(got_grad[0, :, 1, 4:]).max()) == 0.0 and float(jnp.abs(got_grad).max()) > 1e-2


def test_chunked_dropout_is_dropout_on_the_normalised_weights():
    """The numerator is dropped, the normaliser is not: with one-hot values the output is each
    normalised weight, 0 where dropped and softmax / (1 - rate) elsewhere."""
    rng = np.random.default_rng(3)
    length, rate = 37, 0.3
    q, k = (jnp.asarray(rng.normal(size=(2, length, HEADS, 40)), jnp.float32) for _ in range(2))
    v = jnp.broadcast_to(jnp.eye(length, 40)[None, :, None, :], (2, length, HEADS, 40))  # value j = e_j
    _, _, bias = attention_case("encoder", jnp.asarray(rng.normal(size=(HEADS, BUCKETS)), jnp.float32))
    got = np.asarray(dot_product_attention(q, k, v, bias, implementation="chunked", block_size=16,
                                           dropout_rate=rate, dropout_rng=jax.random.key(5),
                                           deterministic=False))[..., :length]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias.dense()
    weights = np.asarray(jax.nn.softmax(logits, axis=-1)).transpose(0, 2, 1, 3)  # (b, q, h, k) as got
    kept = got != 0
    np.testing.assert_allclose(np.where(kept, got * (1 - rate), weights), weights, **TOL)
    dropped = 1 - kept[weights > 1e-6].mean()
    assert 0.25 < dropped < 0.35, dropped


def test_dense_bias_is_the_position_bias_plus_the_mask():
    """`dense()` is table[bucket(j - i)] + MASKED_LOGIT where masked, and `block` a tile of it."""
    table = jnp.asarray(np.random.default_rng(4).normal(size=(HEADS, BUCKETS)), jnp.float32)
    _, _, bias = attention_case("decoder", table)
    dense = bias.dense()
    buckets = relative_position_bucket(jnp.arange(37)[None, :] - jnp.arange(37)[:, None], False, BUCKETS,
                                       MAX_DISTANCE)
    position = np.asarray(table)[:, np.asarray(buckets)]
    np.testing.assert_allclose(dense[0, :, 5, :6], position[:, 5, :6], rtol=1e-6, atol=1e-6)
    assert (np.asarray(dense[0, :, 5, 6:]) < -1e9).all()  # causal
    assert (np.asarray(dense[1, :, 30, :]) < -1e9).all()  # padding (row 1 has 25 positions)
    np.testing.assert_array_equal(bias.block(16, 8, 8, 16), dense[:, :, 16:24, 8:24])


def test_chunked_gradient_memory_is_linear_in_length():
    """XLA's compiled memory of the chunked backward at 4,096 positions is far below one
    dense (heads, L, L) float32 score tensor (64 MiB here); no run needed."""
    length = 4096
    spec = jax.ShapeDtypeStruct((1, length, 1, HEAD_DIM), jnp.float32)
    table = jax.ShapeDtypeStruct((1, BUCKETS), jnp.float32)

    def loss(q, k, v, table):
        pos = jnp.arange(length)[None, :]
        bias = AttentionBias.create(length, length, relative_table=table, query_positions=pos, key_positions=pos,
                                    num_buckets=BUCKETS, max_distance=MAX_DISTANCE)
        return jnp.sum(dot_product_attention(q, k, v, bias, implementation="chunked", block_size=256))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(spec, spec, spec, table).compile()
    memory = compiled.memory_analysis()
    peak = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    assert peak < 16 * 2**20, peak


def test_unknown_implementation_and_cudnn_without_gpu_are_one_line_errors():
    q, k, v, table, _ = attention_inputs(1, 8, 8)
    bias = AttentionBias.create(8, 8)
    with pytest.raises(UserError, match="expected one of"):
        dot_product_attention(q, k, v, bias, implementation="flash")
    if jax.default_backend() != "gpu":
        with pytest.raises(UserError, match="needs a CUDA GPU"):
            dot_product_attention(q, k, v, bias, implementation="cudnn", dtype=jnp.bfloat16)


def test_bias_shape_mistakes_are_value_errors():
    with pytest.raises(ValueError, match="key_valid shape"):
        AttentionBias.create(8, 8, key_valid=jnp.ones((1, 9), bool))
    with pytest.raises(ValueError, match="causal"):
        AttentionBias.create(8, 9, causal=True)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cudnn attention needs a CUDA GPU (backend: "
                    f"{jax.default_backend()})")
@pytest.mark.parametrize("name,length", [("encoder", 128), ("decoder", 128), ("encoder", 37)])
def test_cudnn_equals_xla_with_the_bias_gradient(name, length):
    """Output and the gradient w.r.t. the relative-bias table equal xla's, in bfloat16."""
    assert_fused_equals_xla("cudnn", name, length)


# ------------------------------------------------------------------------------ whole models


def _tokens(batch_lengths, length, vocab, seed=0):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(batch_lengths), length), np.int32)
    for row, n in enumerate(batch_lengths):
        tokens[row, :n] = rng.integers(2, vocab, n)
    return jnp.asarray(tokens)


def test_t5_chunked_equals_xla():
    from prottrans_jax.models.t5 import T5, T5Config

    config = T5Config(vocab_size=64, d_model=32, num_heads=4, head_dim=8, d_ff=48, num_encoder_layers=1,
                      num_decoder_layers=1, dropout_rate=0.0, dtype="float32")
    encoder_tokens, targets = _tokens([37, 30], 37, 64), _tokens([21, 15], 21, 64, seed=1)
    decoder_tokens = jnp.roll(targets, 1, axis=1).at[:, 0].set(0)
    model = T5(config)
    variables = model.init(jax.random.key(0), encoder_tokens, decoder_tokens)
    expected = model.apply(variables, encoder_tokens, decoder_tokens, targets)
    chunked = T5(dataclasses.replace(config, attention_implementation="chunked", attention_block_size=16))
    got = chunked.apply(variables, encoder_tokens, decoder_tokens, targets)
    np.testing.assert_allclose(got, expected, **TOL)


def test_bert_chunked_equals_xla():
    from prottrans_jax.models.bert import Bert, BertConfig

    config = BertConfig(hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_dropout_prob=0.0,
                        dtype="float32")
    tokens = _tokens([37, 30], 37, 30)
    model = Bert(config)
    variables = model.init(jax.random.key(0), tokens)
    expected = model.apply(variables, tokens, method=Bert.encode)
    chunked = Bert(dataclasses.replace(config, attention_implementation="chunked", attention_block_size=16))
    got = chunked.apply(variables, tokens, method=Bert.encode)
    valid = np.asarray(tokens) > 0
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(expected)[valid], **TOL)


def test_attention_fields_are_checked():
    from prottrans_jax.models.bert import BertConfig
    from prottrans_jax.models.t5 import T5Config
    from prottrans_jax.models.xlnet import XLNetConfig

    with pytest.raises(UserError, match="attention_implementation='flash'; expected one of"):
        T5Config(attention_implementation="flash")
    with pytest.raises(UserError, match="attention_block_size must be positive"):
        BertConfig(attention_block_size=0)
    with pytest.raises(UserError, match="XLNetConfig.attention_implementation='flash'; expected one of"):
        XLNetConfig(attention_implementation="flash")
    assert XLNetConfig(attention_implementation="chunked").attention_implementation == "chunked"
    assert "attention_implementation" in T5Config.RUNTIME_FIELDS
    from prottrans_jax.models.gin_utils import config_from_gin

    bound = config_from_gin(T5Config, ["gin/models/t5/tiny.gin"], ["T5Config.attention_implementation = 'chunked'",
                                                                   "T5Config.attention_block_size = 128"])
    assert (bound.attention_implementation, bound.attention_block_size) == ("chunked", 128)
