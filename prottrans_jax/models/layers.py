"""Transformer building blocks shared by the model families (T5, BERT, and the ones to come).

Every parameter is created through `nn.with_logical_partitioning` with T5X's logical axis
names, so a partitioner maps them to mesh axes with rules alone. Parameters are stored in
`param_dtype` (float32) and cast to the compute `dtype` (bfloat16 by default) where used.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prottrans_jax.errors import UserError

Initializer = Callable[..., jax.Array]

# T5X's initialisers: fan-in scaled dense kernels, unit-variance embeddings.
default_kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
default_embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

REMAT_POLICIES = ("none", "full", "minimal")


ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """relu; gelu, exact (erf: Hugging Face's "gelu", ELECTRA); gelu_tanh, the tanh
    approximation (Hugging Face's "gelu_new", the TF BERT and ALBERT code, T5 1.1)."""
    if name == "relu":
        return nn.relu
    if name == "gelu":
        return lambda x: nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return lambda x: nn.gelu(x, approximate=True)
    raise UserError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def tokens_matmul(inputs: jax.Array, matrix: jax.Array) -> jax.Array:
    """inputs (..., d) @ matrix (d, f), as one 2-D product over the flattened tokens.

    The same values as `jnp.dot`, but the weight gradient is then a plain (d, tokens) @
    (tokens, f) product: from a (batch, length, d) input, XLA:CPU contracts two dimensions
    and transposes the output gradient first: 1.6-1.8x slower (512 or 2,048 tokens x 768 x 3072, one core).
    Merging batch and length is a bitcast; SPMD keeps a sharded batch on the merged axis.
    """
    leading = inputs.shape[:-1]
    y = jnp.dot(inputs.reshape(-1, inputs.shape[-1]), matrix)
    return y.reshape(*leading, matrix.shape[-1])


class Dense(nn.Module):
    """A linear map whose kernel (and bias, if any) carry logical axis names; T5 uses no biases."""

    features: int
    kernel_axes: tuple[str, str]
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = default_kernel_init
    use_bias: bool = False

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            (inputs.shape[-1], self.features),
            self.param_dtype,
        )
        kernel = jnp.asarray(kernel, self.dtype)
        y = tokens_matmul(jnp.asarray(inputs, self.dtype), kernel)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[-1:]),
                              (self.features,), self.param_dtype)
            y = y + jnp.asarray(bias, self.dtype)
        return y


class Embed(nn.Module):
    """Embedding table; `attend` reuses it as the output layer when weights are tied.

    `axes` name its dimensions: ("vocab", "embed") for tokens; a family's own names for
    other tables (BERT's absolute positions and token types).
    """

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    embedding_init: Initializer = default_embedding_init
    axes: tuple[str, str] = ("vocab", "embed")

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, self.axes),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"Embed expects integer token ids, got {tokens.dtype}")
        table = jnp.asarray(self.embedding, self.dtype)
        return jnp.take(table, tokens, axis=0)

    def attend(self, query: jax.Array) -> jax.Array:
        """Logits against every vocabulary entry: query @ embedding.T."""
        table = jnp.asarray(self.embedding, self.dtype)
        return tokens_matmul(jnp.asarray(query, self.dtype), table.T)


class RmsNorm(nn.Module):
    """T5's layer norm: scale-only RMS normalisation, always computed in float32."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x = jnp.asarray(x, jnp.float32)
        mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        x = x * jax.lax.rsqrt(mean_square + self.epsilon)
        return jnp.asarray(x * jnp.asarray(scale, jnp.float32), self.dtype)


class LayerNorm(nn.Module):
    """Layer normalisation with scale and bias (BERT's), always computed in float32.

    `axes` names its one dimension: ("embed",) at the model width; a family's own name at
    another width (ALBERT's factorised embedding).
    """

    epsilon: float = 1e-12
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    axes: tuple[str] = ("embed",)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, self.axes),
                           features, self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes),
                          features, self.param_dtype)
        x = jnp.asarray(x, jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        x = (x - mean) * jax.lax.rsqrt(variance + self.epsilon)
        return jnp.asarray(x * jnp.asarray(scale, jnp.float32) + jnp.asarray(bias, jnp.float32), self.dtype)


class MlpBlock(nn.Module):
    """Position-wise feed-forward block: ReLU (T5 1.0), gated GELU (T5 1.1), or GELU with
    biases (BERT: `activation` "gelu" or "gelu_tanh", `use_bias`).

    Gated GELU uses the tanh approximation, as T5 1.1 and Hugging Face's `gelu_new` do.
    Dropout (`dropout_rate`) applies to the hidden activations, as in T5.
    """

    intermediate_dim: int
    activation: str = "relu"  # "relu" | "gated-gelu" | "gelu" | "gelu_tanh"
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    use_bias: bool = False
    kernel_init: Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        dense = lambda features, axes, name: Dense(  # noqa: E731
            features, axes, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=self.kernel_init, use_bias=self.use_bias, name=name
        )
        if self.activation == "gated-gelu":
            gate = nn.gelu(dense(self.intermediate_dim, ("embed", "mlp"), "wi_0")(x), approximate=True)
            hidden = gate * dense(self.intermediate_dim, ("embed", "mlp"), "wi_1")(x)
        elif self.activation in ACTIVATIONS:
            hidden = activation(self.activation)(dense(self.intermediate_dim, ("embed", "mlp"), "wi")(x))
        else:
            raise UserError(f"unknown feed-forward activation {self.activation!r}")
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
        return dense(x.shape[-1], ("mlp", "embed"), "wo")(hidden)


def remat_layer(layer_cls: type[nn.Module], policy: str, scanned: bool) -> type[nn.Module]:
    """Wraps a layer class in `nn.remat` by policy name (T5X's names).

    "none": keep every activation; "full": recompute the whole layer in the backward pass;
    "minimal": save only the matmul outputs that have no batch dimension (T5X's "minimal").
    """
    if policy == "none":
        return layer_cls
    if policy == "full":
        checkpoint_policy = None
    elif policy == "minimal":
        checkpoint_policy = jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    else:
        raise UserError(f"unknown remat_policy {policy!r}; expected one of {REMAT_POLICIES}")
    # Under scan, CSE across iterations is impossible anyway, and prevent_cse costs speed.
    return nn.remat(layer_cls, policy=checkpoint_policy, prevent_cse=not scanned)


def _scan_body(layer: nn.Module, carry: jax.Array, *args):
    return layer(carry, *args), None


def apply_layer_stack(
    make_layer: Callable[[str], nn.Module],
    num_layers: int,
    scan_layers: bool,
    x: jax.Array,
    *broadcast_args,
) -> jax.Array:
    """Runs `num_layers` identical layers over x; call from inside a compact method.

    `make_layer(name)` builds one layer, whose `__call__(x, *broadcast_args)` returns the new x.
    Unscanned, layers are `layers_0 .. layers_{n-1}`; scanned, one `layers` module whose
    parameters are stacked along a leading axis named `layers` (compiles one layer body, which
    keeps compile time flat at 24+ layers).
    """
    if not scan_layers:
        for i in range(num_layers):
            x = make_layer(f"layers_{i}")(x, *broadcast_args)
        return x
    scanned = nn.scan(
        _scan_body,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(broadcast_args),
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = scanned(make_layer("layers"), x, *broadcast_args)
    return x


def count_params(params) -> int:
    """Number of scalars in a (boxed or plain, concrete or abstract) param tree."""
    leaves = jax.tree.leaves(nn.unbox(params))
    return int(sum(_size(leaf.shape) for leaf in leaves))


def _size(shape: Sequence[int]) -> int:
    n = 1
    for dim in shape:
        n *= int(dim)
    return n
