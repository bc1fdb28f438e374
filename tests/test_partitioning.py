"""Mesh, rule sets, sharded init and sharded gradients against a single device.

Needs 8 CPU devices (tests/conftest.py sets XLA_FLAGS before jax is imported).
"""

import pathlib

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from prottrans_jax import optimizers, partitioning

REPO = pathlib.Path(__file__).resolve().parents[1]
VOCAB, EMBED, MLP, LAYERS, BATCH, LENGTH = 32, 16, 32, 2, 8, 6


class MlpBlock(nn.Module):
    """One residual MLP layer with T5X logical names, scanned over `layers`."""

    @nn.compact
    def __call__(self, x, _):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (EMBED,))
        h = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale
        dense = lambda features, axes, name: nn.Dense(  # noqa: E731
            features, name=name,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.normal(0.1), axes[-1:]))
        h = nn.relu(dense(MLP, ("embed", "mlp"), "wi")(h))
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return x + dense(EMBED, ("mlp", "embed"), "wo")(h), None


class ToyModel(nn.Module):
    """Embedding ('vocab', 'embed') + scanned MLP stack + tied output projection."""

    @nn.compact
    def __call__(self, tokens):
        embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
            (VOCAB, EMBED))
        x = nn.with_logical_constraint(embedding[tokens], ("batch", "length", "embed"))
        stack = nn.scan(MlpBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                        length=LAYERS, metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = stack(name="layers")(x, None)
        logits = x @ embedding.T
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def init_params(rng):
    return ToyModel().init(rng, jnp.zeros((BATCH, LENGTH), jnp.int32))["params"]


def loss_sum_fn(params, batch, rng=None):
    """Token-weighted cross-entropy sum and its denominator."""
    del rng
    logits = ToyModel().apply({"params": params}, batch["inputs"]).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return jnp.sum(losses * batch["weights"]), {"weight_sum": jnp.sum(batch["weights"])}


def mean_loss(params, batch):
    loss_sum, aux = loss_sum_fn(params, batch)
    return loss_sum / aux["weight_sum"]


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    weights = (rng.random((BATCH, LENGTH)) < 0.7).astype(np.float32)
    weights[0] = 0.0  # An all-padding example.
    return {"inputs": rng.integers(0, VOCAB, (BATCH, LENGTH), dtype=np.int32),
            "targets": rng.integers(0, VOCAB, (BATCH, LENGTH), dtype=np.int32),
            "weights": weights}


MESH_SHAPES = [(8, 1), (4, 2), (2, 4)]
RULE_SETS = ["data_parallel", "fsdp", "tensor_parallel", "fsdp_tensor_parallel"]
# Expected mesh axes of each parameter, per rule set.
EXPECTED_SPECS = {
    "data_parallel": {},
    "fsdp": {"embedding": (None, "data"), "layers/wi/kernel": (None, "data", None),
             "layers/wo/kernel": (None, None, "data"), "layers/wo/bias": (None, "data"),
             "layers/scale": (None, "data")},
    "tensor_parallel": {"embedding": ("model", None), "layers/wi/kernel": (None, None, "model"),
                        "layers/wi/bias": (None, "model"), "layers/wo/kernel": (None, "model", None)},
    "fsdp_tensor_parallel": {"embedding": ("model", "data"),
                             "layers/wi/kernel": (None, "data", "model"),
                             "layers/wi/bias": (None, "model"),
                             "layers/wo/kernel": (None, "model", "data"),
                             "layers/wo/bias": (None, "data"), "layers/scale": (None, "data")},
}


def expected_spec(rule_set, name, ndim):
    spec = EXPECTED_SPECS[rule_set].get(name, (None,) * ndim)
    return P(*spec)


@pytest.fixture(scope="module")
def reference():
    """Params, loss and grads on one device."""
    single = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
    state, _ = single.init_train_state(init_params, optax.sgd(0.1), jax.random.key(0))
    batch = make_batch()
    loss, grads = jax.jit(jax.value_and_grad(mean_loss))(state["params"], batch)
    return jax.device_get(state["params"]), batch, float(loss), jax.device_get(grads)


def test_make_mesh_infers_and_validates_shapes():
    assert dict(partitioning.make_mesh().shape) == {"data": 8, "model": 1}
    assert dict(partitioning.make_mesh((-1, 4)).shape) == {"data": 2, "model": 4}
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        partitioning.make_mesh((3, -1))
    with pytest.raises(ValueError, match="needs 16 devices"):
        partitioning.make_mesh((4, 4))
    with pytest.raises(ValueError, match="at most one -1"):
        partitioning.make_mesh((-1, -1))


def test_first_devices_from_gin_give_a_smaller_mesh():
    gin.parse_config(["Partitioner.devices = @first_devices()", "first_devices.count = 2"])
    partitioner = partitioning.Partitioner()
    assert dict(partitioner.mesh.shape) == {"data": 2, "model": 1}
    assert list(partitioner.mesh.devices.flat) == jax.local_devices()[:2]
    for count in (0, 9, True):
        with pytest.raises(ValueError, match=f"first_devices.count={count!r}: this host has 8 devices"):
            partitioning.first_devices(count)


def test_hybrid_mesh_on_one_process():
    # One process is one granule here; the multi-process order is tested with the
    # multi-host launcher. This checks the per-slice shape inference and plumbing.
    mesh = partitioning.make_mesh((-1, 2), dcn_mesh_shape=(1, 1))
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
    with pytest.raises(ValueError, match="does not fit"):
        partitioning.make_mesh((-1, 1), dcn_mesh_shape=(3, 1))


@pytest.mark.parametrize("mesh_shape", MESH_SHAPES)
@pytest.mark.parametrize("rule_set", RULE_SETS)
def test_sharded_init_and_gradients_match_single_device(reference, mesh_shape, rule_set):
    ref_params, batch, ref_loss, ref_grads = reference
    partitioner = partitioning.Partitioner(
        mesh_shape=mesh_shape, logical_axis_rules=partitioning.RULE_SETS[rule_set])
    state, shardings = partitioner.init_train_state(init_params, optax.sgd(0.1),
                                                    jax.random.key(0))

    for path, param in jax.tree_util.tree_flatten_with_path(state["params"])[0]:
        name = partitioning.path_to_name(path)
        want = NamedSharding(partitioner.mesh, expected_spec(rule_set, name, param.ndim))
        assert param.sharding.is_equivalent_to(want, param.ndim), (name, param.sharding.spec)
        shard_shape = want.shard_shape(param.shape)
        assert all(s.data.shape == shard_shape for s in param.addressable_shards), name
    # Initialisation does not depend on the layout.
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]), ref_params)

    data_shardings = partitioner.batch_shardings(batch)
    grad_fn = jax.jit(jax.value_and_grad(mean_loss),
                      in_shardings=(shardings["params"], data_shardings),
                      out_shardings=(partitioner.replicated, shardings["params"]))
    with partitioner.context():
        loss, grads = grad_fn(state["params"], partitioner.host_local_batch_to_global(batch))
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5),
                 jax.device_get(grads), ref_grads)
    assert jax.tree.leaves(grads)[0].sharding == jax.tree.leaves(shardings["params"])[0]


@pytest.mark.parametrize("optimizer_name", ["adafactor", "adam", "lamb"])
def test_optimizer_state_shardings_are_valid_and_update_matches(reference, optimizer_name):
    ref_params, batch, _, ref_grads = reference
    optimizer = {
        # Small factoring threshold so that the toy matrices get row/column statistics.
        "adafactor": optimizers.adafactor(0.01, min_dim_size_to_factor=8),
        "adam": optax.adam(0.01),
        "lamb": optimizers.lamb(0.01),
    }[optimizer_name]
    partitioner = partitioning.Partitioner(
        mesh_shape=(4, 2), logical_axis_rules=partitioning.FSDP_TENSOR_PARALLEL)
    state, shardings = partitioner.init_train_state(init_params, optimizer, jax.random.key(0))

    named = {partitioning.path_to_name(path): leaf for path, leaf
             in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]}
    for name, leaf in named.items():
        assert leaf.sharding.spec is not None  # Placed, on this mesh.
        assert leaf.sharding.mesh == partitioner.mesh
        if leaf.ndim == 0:
            assert leaf.sharding.is_fully_replicated, name
    if optimizer_name == "adafactor":
        # wi kernel (layers, embed=16, mlp=32) -> spec (None, data, model); the factored
        # statistics drop the averaged dimension's mesh axis.
        v_row = next(v for k, v in named.items() if k.endswith("v_row/layers/wi/kernel"))
        v_col = next(v for k, v in named.items() if k.endswith("v_col/layers/wi/kernel"))
        assert v_row.shape == (LAYERS, EMBED) and v_row.sharding.spec == P(None, "data")
        assert v_col.shape == (LAYERS, MLP) and v_col.sharding.spec == P(None, "model")
    else:
        mu = next(v for k, v in named.items() if k.endswith("mu/layers/wi/kernel"))
        assert mu.sharding.spec == P(None, "data", "model")

    def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    sharded_update = jax.jit(update, out_shardings=(shardings["params"], shardings["opt_state"]))
    new_params, _ = sharded_update(state["params"], state["opt_state"],
                                   jax.device_put(ref_grads, shardings["params"]))
    want, _ = jax.jit(update)(ref_params, optimizer.init(ref_params), ref_grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 jax.device_get(new_params), jax.device_get(want))


def test_batch_is_split_along_data():
    partitioner = partitioning.Partitioner(mesh_shape=(2, 4),
                                           logical_axis_rules=partitioning.TENSOR_PARALLEL)
    batch = make_batch()
    global_batch = partitioner.host_local_batch_to_global(batch)
    inputs = global_batch["inputs"]
    assert inputs.shape == (BATCH, LENGTH)
    assert inputs.sharding.spec == P("data")
    assert {s.data.shape for s in inputs.addressable_shards} == {(BATCH // 2, LENGTH)}
    np.testing.assert_array_equal(np.asarray(inputs), batch["inputs"])


def test_abstract_and_initial_state_are_the_same_inside_the_mesh_context():
    partitioner = partitioning.Partitioner(mesh_shape=(4, 2),
                                           logical_axis_rules=partitioning.FSDP_TENSOR_PARALLEL)
    outside, outside_shardings = partitioner.abstract_train_state(
        init_params, optax.adam(0.1), jax.random.key(0))
    with partitioner.context():
        inside, inside_shardings = partitioner.abstract_train_state(
            init_params, optax.adam(0.1), jax.random.key(0))
        state, _ = partitioner.init_train_state(init_params, optax.adam(0.1), jax.random.key(0))
    assert inside == outside and inside_shardings == outside_shardings
    assert jax.tree.map(lambda x: x.sharding, state) == inside_shardings
    assert inside["params"]["embedding"].sharding.spec == P("model", "data")


def test_sharding_table_and_per_device_memory():
    partitioner = partitioning.Partitioner(mesh_shape=(8, 1), logical_axis_rules=partitioning.FSDP)
    with partitioner.context():
        boxed = jax.eval_shape(init_params, jax.random.key(0))
    shardings = partitioner.param_shardings(boxed)
    abstract = nn.meta.unbox(boxed)
    table = partitioning.sharding_table(boxed, shardings)
    lines = table.splitlines()
    wi = next(line for line in lines if line.startswith("layers/wi/kernel"))
    assert "(2, 16, 32)" in wi and "('layers', 'embed', 'mlp')" in wi
    assert "(None, 'data', None)" in wi and "float32" in wi
    assert len(lines) == 2 + len(jax.tree.leaves(abstract)) + 1  # header, rule, rows, total

    total_bytes = sum(x.size * 4 for x in jax.tree.leaves(abstract))
    fsdp_bytes = partitioning.per_device_memory(abstract, shardings)
    dp_bytes = partitioning.per_device_memory(
        abstract, jax.tree.map(lambda _: partitioner.replicated, shardings))
    assert dp_bytes == total_bytes
    # Only wi/bias (layers, mlp) has no embed dimension and stays whole on every device.
    unsplit = LAYERS * MLP * 4
    assert fsdp_bytes == unsplit + (total_bytes - unsplit) // 8


@pytest.mark.parametrize("rule_set", RULE_SETS)
def test_gin_files_bind_the_rule_sets(rule_set):
    gin.clear_config()
    try:
        gin.parse_config_file(str(REPO / "gin" / "partitioning" / f"{rule_set}.gin"))
        partitioner = partitioning.Partitioner()
    finally:
        gin.clear_config()
    assert partitioner.logical_axis_rules == partitioning.RULE_SETS[rule_set]
    assert partitioner.mesh.devices.size == 8


def test_input_shard_per_process():
    partitioner = partitioning.Partitioner(mesh_shape=(4, 2))
    assert partitioner.input_shard() == (0, 1)
    # Four hosts, two devices each, on a (4, 2) mesh: one data row per host.
    one_row_each = np.array([[0, 0], [1, 1], [2, 2], [3, 3]])
    assert partitioning.data_shard_of_process(one_row_each, 0, 2) == (2, 4)
    # `model` spans hosts: hosts 0 and 1 hold the same rows and read the same shard.
    shared_rows = np.array([[0, 1], [0, 1], [2, 3], [2, 3]])
    assert partitioning.data_shard_of_process(shared_rows, 0, 1) == (0, 2)
    assert partitioning.data_shard_of_process(shared_rows, 0, 3) == (1, 2)
    with pytest.raises(ValueError, match="non-contiguous"):
        partitioning.data_shard_of_process(np.array([[0], [1], [0], [1]]), 0, 0)


def test_a_models_extra_rules_replace_or_extend_the_rule_set():
    merged = partitioning.rules("fsdp", [("embed", None), ("positions", None)])
    assert dict(merged)["embed"] is None and merged[-1] == ("positions", None)
    assert [name for name, _ in merged[:-1]] == list(partitioning.LOGICAL_AXES)
    gin.clear_config()
    try:
        gin.parse_config_file(str(REPO / "gin" / "partitioning" / "fsdp.gin"))
        gin.parse_config("partitioning.Partitioner.extra_rules = [('positions', 'model')]")
        partitioner = partitioning.Partitioner()
    finally:
        gin.clear_config()
    assert dict(partitioner.logical_axis_rules)["positions"] == "model"
    assert dict(partitioner.logical_axis_rules)["embed"] == "data"
    with pytest.raises(ValueError, match="unknown rule_set 'zero3'"):
        partitioning.rules("zero3")
