"""models/layers.py's `tokens_matmul`: the product every Dense layer and tied output layer runs,
flattened to one 2-D matrix product for XLA:CPU's sake; the same values, gradients and
shardings as the plain product."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prottrans_jax.models.layers import tokens_matmul


@pytest.mark.parametrize("leading", [(5,), (2, 7), (2, 3, 4)])
def test_values_and_gradients_equal_the_plain_product(leading):
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.standard_normal((*leading, 16)), jnp.float32)
    matrix = jnp.asarray(rng.standard_normal((16, 24)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((*leading, 24)), jnp.float32)

    ours, ours_vjp = jax.vjp(tokens_matmul, inputs, matrix)
    plain, plain_vjp = jax.vjp(jnp.dot, inputs, matrix)

    assert ours.shape == (*leading, 24)
    np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-5)
    for got, want in zip(ours_vjp(cotangent), plain_vjp(cotangent)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_a_batch_split_across_devices_stays_split():
    """Merging (batch, length) into one axis must not make SPMD gather the batch: the output
    keeps the input's batch sharding and the kernel's column sharding."""
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    inputs = jax.device_put(jnp.ones((8, 6, 16)), NamedSharding(mesh, PartitionSpec("data", None, None)))
    matrix = jax.device_put(jnp.ones((16, 4)), NamedSharding(mesh, PartitionSpec(None, "model")))

    output = jax.jit(tokens_matmul)(inputs, matrix)

    assert output.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("data", None, "model")), 3)
    np.testing.assert_allclose(output, np.full((8, 6, 4), 16.0), rtol=1e-6)
