"""Relative attention through the one entry point (models/relative_scores.py): XLNet's two
streams and ProtTXL's causal memory give the same outputs and gradients with `chunked` tiles
as with `xla`, for lengths and memories that no tile size divides."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prottrans_jax.models.relative_scores import RelativeMask, RelativeScores, rel_shift
from prottrans_jax.models.transfo_xl import TransfoXL, TransfoXLConfig
from prottrans_jax.models.transfo_xl import init_params as txl_init_params
from prottrans_jax.models.xlnet import XLNet, XLNetConfig
from prottrans_jax.models.xlnet import init_params as xlnet_init_params
from prottrans_jax.partitioning import unbox_shapes

TOL = dict(rtol=1e-5, atol=1e-5)  # float32, O(1) values
# Weights of std 0.3: attention far from uniform, so a misplaced score would show.
SIZES = dict(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, head_dim=8, intermediate_size=64,
             dropout_prob=0.0, attention_dropout_prob=0.0, initializer_range=0.3, dtype="float32")
ROWS, LENGTH, MEMORY = 2, 13, 6


def assert_trees_close(a, b):
    """Within float32's reach: rtol 1e-5, and atol 1e-5 of each array's largest value (the tile
    sums run in another order; logits of these weights reach ~10)."""
    def close(x, y):
        x, y = np.asarray(x), np.asarray(y)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(y).max())))
    jax.tree.map(close, a, b)


def xlnet_inputs(seed=0):
    """Padded rows with token types, a random perm mask, 3 targets, and a memory half valid."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(9, 29, (ROWS, LENGTH)).astype(np.int32)
    attention_mask = (np.arange(LENGTH)[None] < np.array([[LENGTH], [LENGTH - 4]])).astype(np.int32)
    token_types = (np.arange(LENGTH)[None] >= 7).astype(np.int32).repeat(ROWS, 0)
    perm_mask = (rng.random((ROWS, LENGTH, LENGTH)) < 0.3).astype(np.float32)
    target_mapping = np.zeros((ROWS, 3, LENGTH), np.float32)
    target_mapping[:, np.arange(3), [1, 5, 9]] = 1.0
    memory = rng.normal(size=(2, ROWS, MEMORY, 32)).astype(np.float32)
    memory_valid = np.arange(MEMORY)[None] >= np.array([[0], [3]])
    return tokens, attention_mask, token_types, perm_mask, target_mapping, memory, memory_valid


@pytest.mark.parametrize("block_size, overrides", [(5, {}), (1, {}), (64, {}), (4, {"bi_data": True}),
                                                    (5, {"attn_type": "uni", "clamp_len": 4})])
def test_xlnet_chunked_equals_xla_in_both_streams_and_the_gradients(block_size, overrides):
    config = XLNetConfig(**SIZES, mem_len=MEMORY, **overrides)
    chunked = dataclasses.replace(config, attention_implementation="chunked", attention_block_size=block_size)
    params = unbox_shapes(xlnet_init_params(config, jax.random.key(0)))
    inputs = xlnet_inputs()

    def run(cfg, p, with_targets):
        tokens, mask, types, perm, mapping, memory, valid = inputs
        return XLNet(cfg).apply({"params": p}, tokens, mask, types, perm, mapping if with_targets else None,
                                memory, True, valid, method=XLNet.encode)

    for with_targets in (False, True):  # the content stream alone, then the query stream
        (want, want_memory), (got, got_memory) = run(config, params, with_targets), run(chunked, params, with_targets)
        assert_trees_close(got, want)
        assert_trees_close(got_memory, want_memory)
    loss = lambda cfg: lambda p: jnp.sum(jnp.tanh(run(cfg, p, True)[0]))  # noqa: E731
    assert_trees_close(jax.grad(loss(chunked))(params), jax.grad(loss(config))(params))


@pytest.mark.parametrize("block_size, same_length", [(5, False), (3, True)])
def test_transfo_xl_chunked_equals_xla_with_its_causal_memory(block_size, same_length):
    config = TransfoXLConfig(**SIZES, mem_len=MEMORY, same_length=same_length)
    chunked = dataclasses.replace(config, attention_implementation="chunked", attention_block_size=block_size)
    params = unbox_shapes(txl_init_params(config, jax.random.key(1)))
    tokens, _, _, _, _, memory, valid = xlnet_inputs(seed=1)
    run = lambda cfg, p: TransfoXL(cfg).apply({"params": p}, tokens, memory, True, valid)  # noqa: E731
    (want, want_memory), (got, got_memory) = run(config, params), run(chunked, params)
    assert_trees_close(got, want)
    assert_trees_close(got_memory, want_memory)
    loss = lambda cfg: lambda p: jnp.sum(jax.nn.log_softmax(run(cfg, p)[0])[..., 3])  # noqa: E731
    assert_trees_close(jax.grad(loss(chunked))(params), jax.grad(loss(config))(params))


def test_a_tile_reads_the_distance_of_each_query_and_key():
    """block(i0, qn, j0, kn) scores query i against key j at distance index qlen - i + j, for
    tiles anywhere in padded rows; dense() is Transformer-XL's rel_shift of all the scores."""
    rng = np.random.default_rng(2)
    qlen, klen, heads, width = 5, 8, 2, 3
    query = jnp.asarray(rng.normal(size=(1, qlen, heads, width)), jnp.float32)
    keys = jnp.asarray(rng.normal(size=(1, qlen + klen, heads, width)), jnp.float32)
    scores = RelativeScores.create(query, keys, klen)
    all_scores = jnp.einsum("bind,bpnd->bnip", query, keys)
    np.testing.assert_allclose(scores.dense(), rel_shift(all_scores, klen), **TOL)
    expected = np.array([[all_scores[0, :, i, qlen - i + j] for j in range(klen)] for i in range(qlen)])
    np.testing.assert_allclose(scores.dense()[0], np.transpose(expected, (2, 0, 1)), **TOL)
    padded = scores.padded(8, 12)
    np.testing.assert_allclose(padded.block(2, 3, 4, 4)[0], scores.dense()[0, :, 2:5, 4:8], **TOL)
    np.testing.assert_allclose(padded.block(3, 2, 6, 2)[0], scores.dense()[0, :, 3:5, 6:8], **TOL)


def reference_visibility(qlen, mlen, causal, same_length, sees_itself, key_visible, hidden):
    """XLNet's masks written out pair by pair (create_mask, the padding and perm masks)."""
    batch = key_visible.shape[0]
    visible = np.ones((batch, qlen, mlen + qlen), bool)
    for b, i, j in np.ndindex(visible.shape):
        if causal and (j > mlen + i or (same_length and j < i)):
            visible[b, i, j] = False
        if not key_visible[b, j] or hidden[b, i, j]:
            visible[b, i, j] = False
        if sees_itself and j == mlen + i:
            visible[b, i, j] = True
    return visible


@pytest.mark.parametrize("causal, same_length, sees_itself", [(False, False, True), (False, False, False),
                                                              (True, False, False), (True, True, True)])
def test_a_mask_tile_is_the_slice_of_the_whole_mask(causal, same_length, sees_itself):
    """`RelativeMask.visible` of any tile, in rows padded as `chunked` pads them, is that
    slice of XLNet's masks built pair by pair, for memory, padding, perm mask and causality."""
    rng = np.random.default_rng(4)
    qlen, mlen, batch = 5, 3, 2
    key_visible = rng.random((batch, mlen + qlen)) < 0.8
    hidden = rng.random((batch, qlen, mlen + qlen)) < 0.3
    mask = RelativeMask(memory_length=mlen, causal=causal, same_length=same_length, sees_itself=sees_itself,
                        key_visible=jnp.asarray(key_visible), hidden=jnp.asarray(hidden))
    want = reference_visibility(qlen, mlen, causal, same_length, sees_itself, key_visible, hidden)
    np.testing.assert_array_equal(mask.visible(0, qlen, 0, mlen + qlen), want)
    padded = mask.padded(3, 4)
    for q0, qn, k0, kn in [(0, 2, 0, 3), (2, 3, 3, 5), (4, 1, 6, 2), (1, 4, 2, 4)]:
        np.testing.assert_array_equal(padded.visible(q0, qn, k0, kn), want[:, q0:q0 + qn, k0:k0 + kn])
    assert RelativeMask(memory_length=mlen).visible(0, qlen, 0, mlen + qlen) is None  # nothing masked


def test_chunked_xlnet_holds_nothing_of_size_length_squared():
    """XLNet's content stream, compiled only: dense attention's temporaries hold heads x L x
    (L and 2L) scores (~259 MiB measured at 2,048 residues), chunked's a few tiles and
    per-residue arrays (~22 MiB; 31 MiB at 4,096), since the mask is described per key. Its
    L x L padding mask, built before, made 2,048 -> 4,096 residues cost 2.4x."""
    config = XLNetConfig(**{**SIZES, "hidden_size": 64, "head_dim": 16, "intermediate_size": 256})
    params = jax.eval_shape(lambda: unbox_shapes(xlnet_init_params(config, jax.random.key(0))))

    def temporaries(implementation, length):
        cfg = dataclasses.replace(config, attention_implementation=implementation, attention_block_size=512)
        encode = jax.jit(lambda p, t, m: XLNet(cfg).apply({"params": p}, t, m, method=XLNet.encode)[0])
        tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
        return encode.lower(params, tokens, tokens).compile().memory_analysis().temp_size_in_bytes

    dense, chunked, chunked_twice = temporaries("xla", 2048), temporaries("chunked", 2048), temporaries("chunked", 4096)
    assert chunked < dense / 5, (dense, chunked)
    assert chunked_twice < 1.6 * chunked, (chunked, chunked_twice)  # linear growth; L x L would be ~4x


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cudnn attention needs a CUDA GPU (backend: "
                    f"{jax.default_backend()})")
def test_xlnet_cudnn_equals_xla_with_the_position_bias_gradient():
    """bfloat16: both streams' outputs and the gradient w.r.t. r_r_bias, which reaches the
    scores only through cuDNN's bias input (once silently zero in JAX for some shapes)."""
    config = XLNetConfig(**{**SIZES, "dtype": "bfloat16", "head_dim": 64, "hidden_size": 256}, mem_len=MEMORY)
    params = unbox_shapes(xlnet_init_params(config, jax.random.key(0)))
    tokens, mask, types, perm, mapping, memory, valid = xlnet_inputs()
    memory = np.random.default_rng(3).normal(size=(2, ROWS, MEMORY, 256)).astype(np.float32)  # 256 wide

    def run(implementation):
        cfg = dataclasses.replace(config, attention_implementation=implementation)
        encode = lambda p: XLNet(cfg).apply({"params": p}, tokens, mask, types, perm, mapping, memory, True,  # noqa: E731
                                            valid, method=XLNet.encode)[0].astype(jnp.float32)
        return encode(params), jax.grad(lambda p: jnp.sum(jnp.tanh(encode(p))))(params)

    (want, want_grads), (got, got_grads) = run("xla"), run("cudnn")
    np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2)
    layer = lambda grads: np.asarray(grads["stack"]["layers_0"]["attention"]["r_r_bias"], np.float32)  # noqa: E731
    assert np.abs(layer(want_grads)).max() > 1e-3
    np.testing.assert_allclose(layer(got_grads), layer(want_grads), rtol=5e-2, atol=5e-2)
