"""T5 model: parity with Hugging Face (PyTorch), packing, remat/scan, logical axes, gin sizes."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax.convert.t5 import config_from_hf, hf_to_flax
from prottrans_jax.models.attention_bias import relative_position_bucket
from prottrans_jax.models.gin_utils import config_from_gin
from prottrans_jax.models.layers import count_params
from prottrans_jax.models.t5 import T5, T5Config, abstract_variables, shift_right
from tests.conftest import numpy_state_dict

# Short max distance so that sequences of ~20 tokens reach the logarithmic buckets too.
HF_BASE = dict(
    vocab_size=128, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
    relative_attention_num_buckets=16, relative_attention_max_distance=12, dropout_rate=0.0,
    decoder_start_token_id=0,
)
ENC_LEN, DEC_LEN = 20, 14


def random_hf_t5(feed_forward: str, tied: bool, seed: int = 0):
    """A random HF T5ForConditionalGeneration; untied gets an lm_head different from shared."""
    torch.manual_seed(seed)
    hf_config = transformers.T5Config(**HF_BASE, feed_forward_proj=feed_forward, tie_word_embeddings=tied)
    model = transformers.T5ForConditionalGeneration(hf_config).eval()
    if not tied:
        # Scaled like a dense layer (fan-in), which keeps logits O(1): at HF's std-1 init they
        # reach ~10, where float32 rounding alone (~1e-6 relative) exceeds 1e-5 absolute.
        lm_head = torch.randn_like(model.lm_head.weight) * HF_BASE["d_model"] ** -0.5
        model.lm_head.weight = torch.nn.Parameter(lm_head)
    # Non-trivial layer norm scales, so a swapped or missing scale shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def padded_batch(rng: np.random.Generator, length: int, lengths: list[int]) -> np.ndarray:
    tokens = np.zeros((len(lengths), length), np.int32)
    for row, n in enumerate(lengths):
        tokens[row, : n - 1] = rng.integers(3, 128, n - 1)
        tokens[row, n - 1] = 1  # eos
    return tokens


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    inputs = padded_batch(rng, ENC_LEN, [ENC_LEN, 9, 15])
    targets = padded_batch(rng, DEC_LEN, [DEC_LEN, 5, 11])
    return inputs, targets


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 12)])
def test_relative_position_bucket_matches_hf(bidirectional, num_buckets, max_distance):
    relative = np.arange(-400, 401)
    expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.tensor(relative), bidirectional, num_buckets, max_distance
    ).numpy()
    got = np.asarray(relative_position_bucket(jnp.asarray(relative), bidirectional, num_buckets, max_distance))
    np.testing.assert_array_equal(got, expected)


# Every FFN x tying combination unscanned; scanned for two of them (scan only changes the
# parameter layout and the loop, and costs a compile per model on CPU).
@pytest.mark.parametrize(
    "feed_forward,tied,scan",
    [
        ("relu", True, False),
        ("relu", False, False),
        ("gated-gelu", True, False),
        ("gated-gelu", False, False),
        ("relu", False, True),  # ProtT5-XL's combination, scanned as xl.gin
        ("gated-gelu", True, True),
    ],
)
def test_logits_and_encoder_match_hf_t5(feed_forward, tied, scan, batch):
    inputs, targets = batch
    hf_model = random_hf_t5(feed_forward, tied)
    state_dict = numpy_state_dict(hf_model)
    config = config_from_hf(hf_model.config.to_dict(), state_dict, dtype="float32", scan_layers=scan)
    assert config.tie_word_embeddings == tied and config.scales_decoder_outputs == tied
    params = hf_to_flax(state_dict, config)

    decoder_inputs = np.asarray(shift_right(jnp.asarray(targets), config.decoder_start_id))
    with torch.no_grad():
        hf_out = hf_model(
            input_ids=torch.tensor(inputs, dtype=torch.long),
            attention_mask=torch.tensor(inputs != 0, dtype=torch.long),
            labels=torch.tensor(targets, dtype=torch.long),
        )
    model = T5(config)
    logits = model.apply({"params": params}, inputs, decoder_inputs, targets)
    encoded = model.apply({"params": params}, inputs, method=T5.encode)

    enc_valid, dec_valid = inputs != 0, targets != 0
    np.testing.assert_allclose(
        np.asarray(encoded)[enc_valid], hf_out.encoder_last_hidden_state.numpy()[enc_valid], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(logits)[dec_valid], hf_out.logits.numpy()[dec_valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_encoder_only_checkpoint_matches_hf_t5_encoder_model(feed_forward, batch):
    inputs, _ = batch
    torch.manual_seed(1)
    hf_config = transformers.T5Config(**HF_BASE, feed_forward_proj=feed_forward)
    hf_model = transformers.T5EncoderModel(hf_config).eval()
    state_dict = numpy_state_dict(hf_model)
    assert not any(k.startswith("decoder.") for k in state_dict)
    config = config_from_hf(hf_model.config.to_dict(), state_dict, dtype="float32")
    params = hf_to_flax(state_dict, config)
    assert set(params) == {"token_embedder", "encoder"}

    with torch.no_grad():
        expected = hf_model(
            input_ids=torch.tensor(inputs, dtype=torch.long), attention_mask=torch.tensor(inputs != 0, dtype=torch.long)
        ).last_hidden_state.numpy()
    got = np.asarray(T5(config).apply({"params": params}, inputs, method=T5.encode))
    valid = inputs != 0
    np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ our model on its own
# Same dimensions and batch shapes as the HF tests above: JAX's eager op cache is then shared,
# which keeps these un-jitted tests fast on CPU.

TINY = T5Config(
    d_model=32, num_heads=4, head_dim=8, d_ff=48, num_encoder_layers=2, num_decoder_layers=3,
    relative_attention_num_buckets=16, relative_attention_max_distance=12, dropout_rate=0.1,
    dtype="float32",
)


def init(config: T5Config, seed: int = 0):
    tokens = jnp.ones((3, 8), jnp.int32)
    return nn.unbox(T5(config).init(jax.random.key(seed), tokens, tokens)["params"])


def restack(params, config: T5Config):
    """Unscanned params -> the scanned layout (each layer's arrays stacked on a leading axis)."""
    scanned = jax.tree.map(lambda x: x, params)
    for stack, n in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
        layers = [scanned[stack].pop(f"layers_{i}") for i in range(n)]
        scanned[stack]["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return scanned


def test_packed_row_equals_each_sequence_alone():
    """Segment ids keep packed sequences apart: same encoder outputs and logits as unpacked.

    Row 0 packs sequences a and b; rows 1 and 2 hold a and b alone.
    """
    params = init(TINY)
    model = T5(TINY)
    rng = np.random.default_rng(3)
    a_in, b_in = rng.integers(3, 128, 8), rng.integers(3, 128, 11)
    a_tgt, b_tgt = rng.integers(3, 128, 6), rng.integers(3, 128, 7)

    def rows(a, b, length):
        tokens, segments, positions = (np.zeros((3, length), np.int32) for _ in range(3))
        for row, start, seg, seq in ((0, 0, 1, a), (0, len(a), 2, b), (1, 0, 1, a), (2, 0, 1, b)):
            tokens[row, start : start + len(seq)] = seq
            segments[row, start : start + len(seq)] = seg
            positions[row, start : start + len(seq)] = np.arange(len(seq))
        return tokens, segments, positions

    enc, enc_seg, enc_pos = rows(a_in, b_in, ENC_LEN)
    tgt, dec_seg, dec_pos = rows(a_tgt, b_tgt, DEC_LEN)
    dec_in = np.where(dec_pos == 0, 0, np.roll(tgt, 1, axis=1))  # shift right within each segment
    variables = {"params": params}
    encoded = np.asarray(model.apply(variables, enc, enc_seg, enc_pos, method=T5.encode))
    logits = np.asarray(model.apply(variables, enc, dec_in, tgt, enc_seg, dec_seg, enc_pos, dec_pos))

    for alone_row, seg in ((1, 1), (2, 2)):
        n_in, n_tgt = int((enc_seg[0] == seg).sum()), int((dec_seg[0] == seg).sum())
        np.testing.assert_allclose(encoded[0][enc_seg[0] == seg], encoded[alone_row, :n_in], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(logits[0][dec_seg[0] == seg], logits[alone_row, :n_tgt], rtol=1e-5, atol=1e-5)

    # Explicit positions and the default (row index) agree for contiguous segments...
    default_positions = np.asarray(model.apply(variables, enc, enc_seg, method=T5.encode))
    np.testing.assert_allclose(default_positions[enc_seg > 0], encoded[enc_seg > 0], rtol=1e-5, atol=1e-5)
    # ...and without segment ids the packed sequences see each other: the test is not vacuous.
    unsegmented = np.asarray(model.apply(variables, enc, method=T5.encode))
    assert not np.allclose(unsegmented[0][enc_seg[0] == 1], encoded[0][enc_seg[0] == 1], atol=1e-3)


def test_padding_does_not_change_real_positions(batch):
    inputs, _ = batch
    params = init(TINY)
    model = T5(TINY)
    wide = np.pad(inputs, ((0, 0), (0, 6)))
    narrow_out = np.asarray(model.apply({"params": params}, inputs, method=T5.encode))
    wide_out = np.asarray(model.apply({"params": params}, wide, method=T5.encode))
    valid = inputs != 0
    np.testing.assert_allclose(wide_out[:, :ENC_LEN][valid], narrow_out[valid], rtol=1e-5, atol=1e-5)


def _loss_fn(config, batch):
    inputs, targets = batch

    def loss_fn(params):
        logits = T5(config).apply({"params": params}, inputs, shift_right(targets), targets)
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.sum(log_probs * jax.nn.one_hot(targets, config.vocab_size) * (targets > 0)[..., None])

    return loss_fn


def test_scanned_remat_keeps_loss_and_gradients(batch):
    """xl.gin's path (scan + 'minimal' remat) differentiates to the same loss and gradients."""
    config = dataclasses.replace(TINY, scan_layers=True)
    params = restack(init(TINY), TINY)
    plain = jax.value_and_grad(_loss_fn(config, batch))
    remat = jax.value_and_grad(_loss_fn(dataclasses.replace(config, remat_policy="minimal"), batch))
    (loss, grads), (remat_loss, remat_grads) = jax.jit(lambda p: (plain(p), remat(p)))(params)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), remat_grads, grads)
    assert float(jnp.abs(grads["encoder"]["relpos_bias"]["rel_embedding"]).sum()) > 0


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("policy", ["none", "full", "minimal"])
def test_remat_policy_reaches_the_traced_program(policy, scan, batch):
    """Each policy wraps every layer in a checkpoint (traced only: no compile)."""
    config = dataclasses.replace(TINY, scan_layers=scan, remat_policy=policy)
    params = init(TINY) if not scan else restack(init(TINY), TINY)
    jaxpr = str(jax.make_jaxpr(jax.grad(_loss_fn(config, batch)))(params))
    num_checkpoints = jaxpr.count("remat2[")
    if policy == "none":
        assert num_checkpoints == 0
    else:  # one per layer, or one per scanned stack
        assert num_checkpoints == (2 if scan else TINY.num_encoder_layers + TINY.num_decoder_layers)
        expected_policy = "policy=None" if policy == "full" else "policy=DotsSaveable(only_if_no_batch_dims=True)"
        assert jaxpr.count(expected_policy) == num_checkpoints


def test_scanned_and_unscanned_compute_the_same_function(batch):
    inputs, targets = batch
    unscanned = init(TINY)
    a = T5(TINY).apply({"params": unscanned}, inputs, shift_right(targets), targets)
    scanned_config = dataclasses.replace(TINY, scan_layers=True)
    b = T5(scanned_config).apply({"params": restack(unscanned, TINY)}, inputs, shift_right(targets), targets)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dropout_only_when_enabled(batch):
    inputs, _ = batch
    params = init(TINY)
    model = T5(TINY)
    a = model.apply({"params": params}, inputs, method=T5.encode)
    b = model.apply({"params": params}, inputs, method=T5.encode)
    c = model.apply({"params": params}, inputs, enable_dropout=True, method=T5.encode, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32(batch):
    inputs, targets = batch
    params = init(TINY)
    f32 = T5(TINY).apply({"params": params}, inputs, shift_right(targets), targets)
    bf16_config = dataclasses.replace(TINY, dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(abstract_variables(bf16_config))))
    bf16 = T5(bf16_config).apply({"params": params}, inputs, shift_right(targets), targets)
    assert bf16.dtype == jnp.float32  # logits are returned in float32 for the loss
    np.testing.assert_allclose(bf16, f32, atol=0.1 * float(jnp.max(jnp.abs(f32))))


def test_every_parameter_has_t5x_logical_axes():
    specs = nn.get_partition_spec(abstract_variables(dataclasses.replace(TINY, tie_word_embeddings=False)))["params"]
    flat = {"/".join(k.key for k in path): tuple(spec) for path, spec in jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]}
    assert flat["token_embedder/embedding"] == ("vocab", "embed")
    assert flat["encoder/layers_0/attention/query/kernel"] == ("embed", "joined_kv")
    assert flat["decoder/layers_1/encoder_decoder_attention/out/kernel"] == ("joined_kv", "embed")
    assert flat["encoder/layers_1/mlp/wi/kernel"] == ("embed", "mlp")
    assert flat["decoder/layers_0/mlp/wo/kernel"] == ("mlp", "embed")
    assert flat["encoder/encoder_norm/scale"] == ("embed",)
    assert flat["decoder/relpos_bias/rel_embedding"] == ("heads", "relpos_buckets")
    assert flat["decoder/logits_dense/kernel"] == ("embed", "vocab")
    assert all(len(spec) > 0 and None not in spec for spec in flat.values()), flat

    scanned = nn.get_partition_spec(abstract_variables(dataclasses.replace(TINY, scan_layers=True)))["params"]
    assert tuple(scanned["encoder"]["layers"]["attention"]["key"]["kernel"]) == ("layers", "embed", "joined_kv")
    assert tuple(scanned["decoder"]["layers"]["pre_mlp_layer_norm"]["scale"]) == ("layers", "embed")


# ------------------------------------------------------------------------------ gin sizes


def analytic_param_count(c: T5Config) -> int:
    """Parameters of T5 derived by hand from the config."""
    inner = c.num_heads * c.head_dim
    attention = 4 * c.d_model * inner
    mlp = (2 if c.feed_forward == "relu" else 3) * c.d_model * c.d_ff
    encoder_layer = attention + mlp + 2 * c.d_model
    decoder_layer = 2 * attention + mlp + 3 * c.d_model
    per_stack = c.relative_attention_num_buckets * c.num_heads + c.d_model  # relpos table, final norm
    embedding = c.vocab_size * c.d_model
    lm_head = 0 if c.tie_word_embeddings else c.d_model * c.vocab_size
    return (
        embedding + lm_head + 2 * per_stack
        + c.num_encoder_layers * encoder_layer + c.num_decoder_layers * decoder_layer
    )


@pytest.mark.parametrize(
    "size,approx",
    [("tiny", None), ("small", None), ("base", None), ("xl", 2.82e9), ("xxl", 11.27e9)],
)
def test_gin_sizes_build_abstractly_with_the_analytic_parameter_count(size, approx):
    config = config_from_gin(T5Config, [f"gin/models/t5/{size}.gin"])
    variables = abstract_variables(config)  # jax.eval_shape: nothing is allocated
    leaves = jax.tree.leaves(nn.unbox(variables))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    count = count_params(variables)
    assert count == analytic_param_count(config)
    if approx is not None:
        assert abs(count - approx) / approx < 0.005, count


def test_xl_gin_is_prot_t5_xl():
    c = config_from_gin(T5Config, ["gin/models/t5/xl.gin"])
    assert (c.num_encoder_layers, c.num_decoder_layers, c.d_model, c.num_heads, c.head_dim, c.d_ff) == (24, 24, 1024, 32, 128, 16384)
    assert (c.feed_forward, c.vocab_size, c.tie_word_embeddings) == ("relu", 128, False)
    xxl = config_from_gin(T5Config, ["gin/models/t5/xxl.gin"])
    assert (xxl.num_heads, xxl.d_ff) == (128, 65536)


def test_gin_rejects_unknown_binding_and_bad_values():
    with pytest.raises(ValueError, match="T5Config.*no_such_field"):
        config_from_gin(T5Config, ["gin/models/t5/tiny.gin"], ["T5Config.no_such_field = 3"])
    with pytest.raises(ValueError, match="feed_forward"):
        config_from_gin(T5Config, ["gin/models/t5/tiny.gin"], ["T5Config.feed_forward = 'swish'"])
    with pytest.raises(IOError, match="no_such.gin"):
        config_from_gin(T5Config, ["gin/models/t5/no_such.gin"])
