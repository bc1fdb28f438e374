"""XLNet model: parity with Hugging Face's XLNetModel / XLNetLMHeadModel (PyTorch, float32):
bidirectional with left padding and segments, the two-stream perm_mask + target_mapping path,
memory across calls, bi_data and clamp_len; gin sizes and the released parameter count."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
import torch

from prottrans_jax.convert import xlnet as xlnet_convert
from prottrans_jax.models.gin_utils import config_from_gin
from prottrans_jax.models.layers import count_params
from prottrans_jax.models.xlnet import XLNet, XLNetConfig, init_params
from tests.conftest import numpy_state_dict, random_hf_xlnet

LENGTH = 10
TOL = dict(rtol=1e-5, atol=1e-5)  # float32, O(1) values


def ours(hf_model, part="full", **overrides):
    state_dict = numpy_state_dict(hf_model)
    config = xlnet_convert.config_from_hf(hf_model.config.to_dict(), state_dict, dtype="float32", **overrides)
    return config, xlnet_convert.hf_to_flax(state_dict, config, part)


def left_padded(lengths, seed=0, vocab_size=30):
    """XLNet framing: `residues <sep> <cls>` at the end, <pad> (5) on the left; token types 0
    for residues and <sep>, 2 for <cls>, 3 for padding (as the transformers 5 tokenizer)."""
    rng = np.random.default_rng(seed)
    tokens = np.full((len(lengths), LENGTH), 5, np.int32)
    types = np.full_like(tokens, 3)
    for row, n in enumerate(lengths):
        tokens[row, LENGTH - n:] = [*rng.integers(9, vocab_size, n - 2), 4, 3]
        types[row, LENGTH - n:] = 0
        types[row, -1] = 2
    return tokens, types, (tokens != 5).astype(np.int32)


def torch_long(x):
    return torch.tensor(np.asarray(x), dtype=torch.long)


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.mark.parametrize("scan, overrides", [(False, {}), (True, {"bi_data": True, "clamp_len": 3})])
def test_bidirectional_hidden_states_and_logits_match_hf(scan, overrides):
    hf_model = random_hf_xlnet("lm", **overrides)
    config, params = ours(hf_model, scan_layers=scan)
    tokens, types, mask = left_padded([LENGTH, 7, 4, 9])
    with torch.no_grad():
        out = hf_model(input_ids=torch_long(tokens), attention_mask=torch.tensor(mask, dtype=torch.float32),
                       token_type_ids=torch_long(types), use_mems=False, output_hidden_states=True)
    model = XLNet(config)
    logits, memory = model.apply({"params": params}, tokens, mask, types)
    hidden, _ = model.apply({"params": params}, tokens, mask, types, method=XLNet.encode)
    assert memory is None and logits.shape == (4, LENGTH, 30)
    # Every position, padding too: XLNet lets a padding query see itself, as we do.
    np.testing.assert_allclose(np.asarray(hidden), out.hidden_states[-1].numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(logits), out.logits.numpy(), **TOL)
    print(f"bidirectional {overrides}: max |diff| hidden {max_diff(hidden, out.hidden_states[-1]):.2e}, "
          f"logits {max_diff(logits, out.logits):.2e}")
    # The segment term matters: without token types the outputs change.
    plain, _ = model.apply({"params": params}, tokens, mask)
    assert max_diff(plain, logits) > 1e-2


def permutation_inputs(batch, num_predict, seed=0):
    """A random factorisation order per row: perm_mask[i, j] = 1 unless j comes before i; the
    last `num_predict` of the order are the targets (one-hot target_mapping rows)."""
    rng = np.random.default_rng(seed)
    perm_mask = np.zeros((batch, LENGTH, LENGTH), np.float32)
    target_mapping = np.zeros((batch, num_predict, LENGTH), np.float32)
    for row in range(batch):
        order = rng.permutation(LENGTH)
        rank = np.empty(LENGTH, int)
        rank[order] = np.arange(LENGTH)
        perm_mask[row] = rank[None, :] >= rank[:, None]
        target_mapping[row, np.arange(num_predict), order[-num_predict:]] = 1.0
    return perm_mask, target_mapping


def test_two_stream_perm_mask_and_target_mapping_match_hf():
    hf_model = random_hf_xlnet("lm", seed=1)
    config, params = ours(hf_model)
    tokens, types, mask = left_padded([LENGTH, LENGTH, 8], seed=1)
    perm_mask, target_mapping = permutation_inputs(3, 3, seed=1)
    with torch.no_grad():
        out = hf_model(input_ids=torch_long(tokens), attention_mask=torch.tensor(mask, dtype=torch.float32),
                       token_type_ids=torch_long(types), perm_mask=torch.tensor(perm_mask),
                       target_mapping=torch.tensor(target_mapping), use_mems=False, output_hidden_states=True)
    model = XLNet(config)
    logits, _ = model.apply({"params": params}, tokens, mask, types, perm_mask, target_mapping)
    query_stream, _ = model.apply({"params": params}, tokens, mask, types, perm_mask, target_mapping,
                                  method=XLNet.encode)
    assert logits.shape == (3, 3, 30)
    # hidden_states with target_mapping: (h_0, g_0, h_1, g_1, ...); the last is the query stream.
    np.testing.assert_allclose(np.asarray(query_stream), out.hidden_states[-1].numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(logits), out.logits.numpy(), **TOL)
    print(f"two-stream: max |diff| query stream {max_diff(query_stream, out.hidden_states[-1]):.2e}, "
          f"logits {max_diff(logits, out.logits):.2e}")
    # A target's prediction does not depend on its own token (the query stream never sees it).
    row, slot = 0, 0
    target = int(np.argmax(target_mapping[row, slot]))
    changed = tokens.copy()
    changed[row, target] = 9 if tokens[row, target] != 9 else 10
    again, _ = model.apply({"params": params}, changed, mask, types, perm_mask, target_mapping)
    np.testing.assert_allclose(np.asarray(again)[row, slot], np.asarray(logits)[row, slot], **TOL)


def test_memory_from_one_call_feeds_the_next_as_in_hf():
    hf_model = random_hf_xlnet("model", seed=2, mem_len=6, reuse_len=7)
    config, params = ours(hf_model, "encoder")
    assert (config.mem_len, config.reuse_len) == (6, 7)
    first, types1, _ = left_padded([LENGTH, LENGTH], seed=2)
    second, types2, _ = left_padded([LENGTH, LENGTH], seed=3)
    model = XLNet(config)
    with torch.no_grad():
        out1 = hf_model(input_ids=torch_long(first), token_type_ids=torch_long(types1), use_mems=True)
        out2 = hf_model(input_ids=torch_long(second), token_type_ids=torch_long(types2), mems=out1.mems,
                        use_mems=True)
    hidden1, memory1 = model.apply({"params": params}, first, None, types1, method=XLNet.encode)
    hidden2, memory2 = model.apply({"params": params}, second, None, types2, None, None, memory1,
                                   method=XLNet.encode)
    assert memory1.shape == (2, 2, 6, 32)
    for ours_memory, theirs in ((memory1, out1.mems), (memory2, out2.mems)):
        expected = np.stack([m.numpy().transpose(1, 0, 2) for m in theirs])
        np.testing.assert_allclose(np.asarray(ours_memory), expected, **TOL)
    np.testing.assert_allclose(np.asarray(hidden1), out1.last_hidden_state.numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(hidden2), out2.last_hidden_state.numpy(), **TOL)
    print(f"memory: max |diff| second-call hidden {max_diff(hidden2, out2.last_hidden_state):.2e}, "
          f"memory {max_diff(memory2, np.stack([m.numpy().transpose(1, 0, 2) for m in out2.mems])):.2e}")
    # The memory is used: without it the second call's outputs differ.
    alone, _ = model.apply({"params": params}, second, None, types2, method=XLNet.encode)
    assert max_diff(alone, hidden2) > 1e-2


def test_memory_carries_no_gradient():
    config = XLNetConfig(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2, head_dim=8,
                         intermediate_size=32, mem_len=4, dtype="float32")
    params = init_params(config, jax.random.key(0))
    tokens = np.arange(12, dtype=np.int32).reshape(2, 6) + 9
    model = XLNet(config)

    def memory_sum(p):
        return model.apply({"params": p}, tokens, method=XLNet.encode)[1].sum()

    grads = jax.grad(memory_sum)(params)
    assert all(float(np.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_gin_sizes_and_the_released_parameter_count():
    tiny = config_from_gin(XLNetConfig, ["gin/models/xlnet/tiny.gin"])
    assert (tiny.hidden_size, tiny.num_layers, tiny.hidden_act) == (64, 2, "relu")
    config = config_from_gin(XLNetConfig, ["gin/models/xlnet/prot_xlnet.gin"])
    assert (config.num_layers, config.hidden_size, config.num_heads, config.head_dim,
            config.intermediate_size, config.attn_type) == (30, 1024, 16, 64, 4096, "bi")
    # families-spec 5.1: 409,374,720 + 1,024 (mask_emb) + 1,025 * V as XLNetLMHeadModel.
    abstract = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
    assert count_params(abstract) == 409_374_720 + 1_024 + 1_025 * config.vocab_size
    with pytest.raises(ValueError, match="XLNetConfig.attn_type='tri'"):
        dataclasses.replace(config, attn_type="tri")
    with pytest.raises(ValueError, match="XLNetConfig.mem_len must be >= 0"):
        dataclasses.replace(config, mem_len=-1)


def test_every_parameter_has_logical_axes_and_a_sharded_run_matches():
    """The partitioner can place every parameter (T5X names, `layers` when scanned), and the
    two-stream forward with memory under FSDP + tensor parallelism on a (2, 4) mesh equals the
    single-device one."""
    import flax.linen as nn

    from prottrans_jax import partitioning

    config = XLNetConfig(vocab_size=30, hidden_size=32, num_layers=2, num_heads=4, head_dim=8,
                         intermediate_size=64, initializer_range=0.3, dropout_prob=0.0,
                         attention_dropout_prob=0.0, mem_len=4, scan_layers=True, dtype="float32")
    boxed = init_params(config, jax.random.key(0))
    specs = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    names = {name for spec in specs for name in spec}
    assert names <= set(partitioning.LOGICAL_AXES) | {None} and "layers" in names
    assert len(specs) == len(jax.tree.leaves(nn.unbox(boxed)))
    params = nn.unbox(boxed)
    tokens = np.random.default_rng(0).integers(9, 30, (2, LENGTH)).astype(np.int32)
    perm_mask, target_mapping = permutation_inputs(2, 3, seed=4)
    memory = np.random.default_rng(1).normal(size=(2, 2, 4, 32)).astype(np.float32)

    def forward(p, t):
        return XLNet(config).apply({"params": p}, t, None, None, perm_mask, target_mapping, memory)

    expected_logits, expected_memory = jax.jit(forward)(params, tokens)
    partitioner = partitioning.Partitioner(mesh_shape=(2, 4), rule_set="fsdp_tensor_parallel",
                                           extra_rules=[("vocab", None)])
    with partitioner.context():
        shardings = partitioner.param_shardings(boxed)
        sharded = jax.device_put(params, shardings)
        assert sharded["stack"]["layers"]["attention"]["q"].sharding.spec == jax.sharding.PartitionSpec(None, "data", "model", None)
        logits, new_memory = jax.jit(forward)(sharded, jax.device_put(tokens, partitioner.data_sharding))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected_logits), **TOL)
    np.testing.assert_allclose(np.asarray(new_memory), np.asarray(expected_memory), **TOL)


# ------------------------------------------------------------------ the permutation-LM model


def sample_proteins(count, max_residues, seed=0):
    """Real sample proteins (UniProtKB), cropped to at most max_residues, as our ids."""
    from prottrans_jax.fasta import read_fasta
    from prottrans_jax.vocab import prot_xlnet_vocabulary
    from tests.conftest import SAMPLE

    vocabulary = prot_xlnet_vocabulary()
    records = list(read_fasta(SAMPLE))[:count]
    lengths = np.random.default_rng(seed).integers(max_residues // 2, max_residues + 1, count)
    return [np.asarray(vocabulary.encode(r.sequence[:n]), np.int32) for r, n in zip(records, lengths)]


def permutation_lm_batch(proteins, length, num_predict, seed=0):
    """The objective's right-padded features for `proteins` (objectives.permutation_lm_example)."""
    from prottrans_jax.data import feature_converters, objectives

    rng = np.random.default_rng(seed)
    rows = [objectives.permutation_lm_example(p, length, num_predict, rng, sep_id=4, cls_id=3, pad_id=5)
            for p in proteins]
    names = feature_converters._PERMUTATION_LM
    return {names[key][0]: np.stack([row[key] for row in rows]) for key in objectives.PERMUTATION_LM_FEATURES}


def left_padded_batch(batch):
    """The same examples padded on the left, as XLNet's tokenizer pads (padding type 3)."""
    out = {key: np.zeros_like(value) for key, value in batch.items()}
    for row, n in enumerate(batch["attention_mask"].sum(axis=1)):
        shift = batch["attention_mask"].shape[1] - n
        for key in ("encoder_input_tokens", "attention_mask", "token_types"):
            out[key][row] = np.roll(batch[key][row], shift)
        out["perm_mask"][row] = np.roll(batch["perm_mask"][row], (shift, shift), axis=(0, 1))
        out["target_mapping"][row] = np.roll(batch["target_mapping"][row], shift, axis=1)
        for key in ("target_tokens", "target_weights"):
            out[key][row] = batch[key][row]
    return out


def test_permutation_lm_loss_equals_hf_on_left_padded_real_proteins():
    """XLNetPermutationLMModel's loss on the objective's right-padded batch of real proteins is
    XLNetLMHeadModel's loss (labels at target_mapping) on the same examples padded on the left,
    as XLNet's tokenizer pads: the padding side does not change the computation."""
    from prottrans_jax.models.xlnet import XLNetPermutationLMModel

    hf_model = random_hf_xlnet("lm", seed=3)
    config, params = ours(hf_model)
    batch = permutation_lm_batch(sample_proteins(4, 20), length=24, num_predict=5)
    assert batch["attention_mask"].sum(axis=1).min() < 24  # some padding
    model = XLNetPermutationLMModel(config)
    loss_sum, metrics, carry = model.loss_and_metrics(params, batch, jax.random.key(0), train=False)
    assert carry is None  # no carry in, none out
    ours_logits = model.logits(params, batch)
    left = left_padded_batch(batch)
    labels = np.where(left["target_weights"] > 0, left["target_tokens"], -100)
    with torch.no_grad():
        out = hf_model(input_ids=torch_long(left["encoder_input_tokens"]),
                       attention_mask=torch.tensor(left["attention_mask"], dtype=torch.float32),
                       token_type_ids=torch_long(left["token_types"]),
                       perm_mask=torch.tensor(left["perm_mask"], dtype=torch.float32),
                       target_mapping=torch.tensor(left["target_mapping"], dtype=torch.float32),
                       labels=torch_long(labels), use_mems=False)
    weights = batch["target_weights"] > 0
    np.testing.assert_allclose(np.asarray(ours_logits)[weights], out.logits.numpy()[weights], **TOL)
    count = float(metrics["loss"].count)
    assert count == weights.sum() and float(metrics["target_tokens"].total) == count
    np.testing.assert_allclose(float(loss_sum) / count, float(out.loss), rtol=1e-5, atol=1e-6)
    assert float(metrics["masked_accuracy"].count) == count and float(metrics["sequences"].total) == 4
    targets, hidden = model.masked_targets(batch)
    assert np.array_equal(targets[hidden > 0], batch["target_tokens"][weights])
    assert model.flops_per_batch(batch) > 0


def test_the_encoder_embeds_the_content_stream_as_hf_xlnet_model():
    """XLNetEncoder over our right-padded `residues <sep> <cls>`: XLNetModel's last hidden state
    on each protein alone, called as ProtTrans' notebook calls it (input ids only)."""
    from prottrans_jax.models.xlnet import XLNetEncoder
    from prottrans_jax.vocab import prot_xlnet_vocabulary

    hf_model = random_hf_xlnet("model", seed=4)
    config, params = ours(hf_model, part="encoder")
    encoder = XLNetEncoder(config)
    before, after = encoder.framing(prot_xlnet_vocabulary())
    assert before == () and after == (4, 3)
    proteins = sample_proteins(3, 12, seed=1)
    tokens = np.full((3, 16), 5, np.int32)
    valid = np.zeros((3, 16), bool)
    for row, p in enumerate(proteins):
        tokens[row, :len(p) + 2] = [*p, *after]
        valid[row, :len(p) + 2] = True
    hidden = np.asarray(encoder.hidden_states({k: params[k] for k in encoder.param_keys}, tokens, valid))
    assert hidden.shape == (3, 16, 32)
    for row, p in enumerate(proteins):
        ids = np.array([[*p, *after]])
        with torch.no_grad():
            expected = hf_model(input_ids=torch_long(ids), use_mems=False).last_hidden_state[0].numpy()
        np.testing.assert_allclose(hidden[row, :len(p) + 2], expected, **TOL)
