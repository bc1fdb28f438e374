"""Device mesh, logical-axis rules and shardings for parameters, optimizer state and batches.

Models name every parameter dimension with T5X's logical axes (`batch`, `length`, `embed`,
`heads`, `kv`, `joined_kv`, `mlp`, `vocab`, `relpos_buckets`, `layers`) through
`nn.with_logical_partitioning`. A rule set maps those names to the mesh axes `data` and
`model`; choosing a rule set (`Partitioner.rule_set`, set by a gin file under
gin/partitioning/) chooses the parallelism. The rules are built by one function, `rules`, as
T5X's `standard_logical_axis_rules`; a family with logical axes of its own adds them with
`Partitioner.extra_rules` in its model gin file (MaxText's merge: a name given there replaces
the standard rule of that name, a new name is appended):

    DATA_PARALLEL          parameters replicated, batch split along `data`.
    FSDP                   also `embed` -> `data`: every matrix with an embed dimension is
                           split across the data-parallel devices (ZeRO-3 style).
    TENSOR_PARALLEL        heads / joined_kv / mlp / vocab -> `model` (Megatron style).
    FSDP_TENSOR_PARALLEL   both.

A rule `(logical, mesh_axis)` is applied with Flax's priority semantics: rules are tried in
order and a mesh axis is used at most once per array, so an activation (batch, length, embed)
under FSDP keeps `batch` on `data` and leaves `embed` unsplit.

The train state handled here is a plain dict {"step", "params", "opt_state"}: the layout that
checkpoints.py saves and restores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prottrans_jax.errors import UserError

LogicalRules = tuple[tuple[str, Any], ...]

# Every logical axis name of the shared layers, in rule order (a rule set documents each).
LOGICAL_AXES = ("batch", "embed", "heads", "joined_kv", "mlp", "vocab", "length", "kv",
                "relpos_buckets", "layers")
_FSDP = {"embed": "data"}
_TENSOR = {"heads": "model", "joined_kv": "model", "mlp": "model", "vocab": "model"}
_SPLITS: dict[str, dict[str, str]] = {
    "data_parallel": {},
    "fsdp": _FSDP,
    "tensor_parallel": _TENSOR,
    "fsdp_tensor_parallel": {**_FSDP, **_TENSOR},
}


def rules(rule_set: str, extra: Sequence[tuple[str, Any]] = ()) -> LogicalRules:
    """The logical-axis rules of a named parallelism, merged with a model's extra rules.

    Every rule set puts `batch` on `data`; the others are unsplit unless the set splits them.
    """
    if rule_set not in _SPLITS:
        raise UserError(f"unknown rule_set {rule_set!r}; choose one of {sorted(_SPLITS)}")
    split = {"batch": "data", **_SPLITS[rule_set]}
    base = [(name, split.get(name)) for name in LOGICAL_AXES]
    overrides = {str(name): axis for name, axis in extra}
    merged = [(name, overrides.pop(name, axis)) for name, axis in base]
    merged += [(name, axis) for name, axis in extra if name in overrides]
    return tuple(merged)


RULE_SETS: dict[str, LogicalRules] = {name: rules(name) for name in _SPLITS}
DATA_PARALLEL = RULE_SETS["data_parallel"]
FSDP = RULE_SETS["fsdp"]
TENSOR_PARALLEL = RULE_SETS["tensor_parallel"]
FSDP_TENSOR_PARALLEL = RULE_SETS["fsdp_tensor_parallel"]


def _resolve_shape(shape: Sequence[int], num_devices: int, what: str) -> tuple[int, ...]:
    """Replaces a single -1 in `shape` so that the product equals `num_devices`."""
    shape = tuple(int(d) for d in shape)
    if shape.count(-1) > 1 or any(d == 0 or d < -1 for d in shape):
        raise UserError(f"{what} {shape}: use positive sizes and at most one -1")
    known = math.prod(d for d in shape if d != -1)
    if -1 not in shape and known != num_devices:
        raise UserError(f"{what} {shape} needs {known} devices, but {num_devices} are available")
    if num_devices % known:
        raise UserError(f"{what} {shape} does not divide the {num_devices} devices")
    return tuple(num_devices // known if d == -1 else d for d in shape)


@gin.configurable
def first_devices(count: int = gin.REQUIRED) -> list[jax.Device]:
    """This host's first `count` devices, for a single-host run on part of a machine (one GPU
    of eight, a one-device CPU test): `Partitioner.devices = @first_devices()` with
    `first_devices.count = 1`. A multi-host job uses every device of every host."""
    if jax.process_count() > 1:
        raise UserError("first_devices is for single-host runs: a multi-host job's mesh "
                         "spans every device of every host")
    available = jax.local_devices()
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= len(available):
        raise UserError(f"first_devices.count={count!r}: this host has {len(available)} devices")
    return available[:count]


def make_mesh(
    mesh_shape: Sequence[int] = (-1, 1),
    axis_names: Sequence[str] = ("data", "model"),
    devices: Sequence[jax.Device] | None = None,
    dcn_mesh_shape: Sequence[int] | None = None,
    allow_split_physical_axes: bool = False,
) -> Mesh:
    """Builds a device mesh whose device order follows the TPU interconnect topology.

    `mesh_shape` may hold one -1, inferred from the device count. With `dcn_mesh_shape`
    (multi-slice / multi-host over the data-centre network) `mesh_shape` is the shape inside
    one slice (TPU) or one process (elsewhere) and the final mesh is their element-wise
    product, e.g. mesh_shape (-1, 4) and dcn_mesh_shape (2, 1) on two v4-32 slices give a
    (8, 4) mesh whose `data` axis spans both.
    """
    devices = list(jax.devices() if devices is None else devices)
    if len(mesh_shape) != len(axis_names):
        raise UserError(f"mesh_shape {tuple(mesh_shape)} and axis_names {tuple(axis_names)} "
                         "must have the same length")
    if dcn_mesh_shape is None:
        shape = _resolve_shape(mesh_shape, len(devices), "mesh_shape")
        device_array = mesh_utils.create_device_mesh(
            shape, devices, allow_split_physical_axes=allow_split_physical_axes)
    else:
        num_slices = math.prod(dcn_mesh_shape)
        if len(dcn_mesh_shape) != len(axis_names) or len(devices) % num_slices:
            raise UserError(f"dcn_mesh_shape {tuple(dcn_mesh_shape)} does not fit "
                             f"{len(devices)} devices and axes {tuple(axis_names)}")
        shape = _resolve_shape(mesh_shape, len(devices) // num_slices, "mesh_shape (per slice)")
        # TPU devices carry their slice; elsewhere (GPU hosts, CPU processes) a process is
        # the unit connected by the slower network.
        device_array = mesh_utils.create_hybrid_device_mesh(
            shape, dcn_mesh_shape, devices,
            process_is_granule=not hasattr(devices[0], "slice_index"),
            allow_split_physical_axes=allow_split_physical_axes)
    return Mesh(device_array, tuple(axis_names))


def _key_name(key: Any) -> str:
    """A readable name for one jax key-path entry (dict key, attribute or index)."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def path_to_name(path: Sequence[Any]) -> str:
    """'params/encoder/layers/mlp/wi/kernel' for a jax key path."""
    return "/".join(_key_name(k) for k in path)


def _padded_spec(sharding: NamedSharding, ndim: int) -> list[Any]:
    spec = list(sharding.spec)
    return spec + [None] * (ndim - len(spec))


def _reduced_sharding(param_shape, param_sharding: NamedSharding, leaf_shape) -> NamedSharding:
    """The sharding of a statistic that is `param_shape` with one dimension removed.

    Adafactor's factored second moments (optax: v_row, v_col) are the parameter with its
    largest or second-largest dimension averaged out. The removed dimension's mesh axis is
    dropped and the others kept. When several dimensions could have been removed (a square
    matrix) every choice is a valid layout; the one that keeps the most sharding wins.
    """
    spec = _padded_spec(param_sharding, len(param_shape))
    candidates = []
    for removed in range(len(param_shape)):
        if tuple(np.delete(param_shape, removed)) == tuple(leaf_shape):
            reduced = spec[:removed] + spec[removed + 1:]
            candidates.append(reduced)
    if not candidates:
        return NamedSharding(param_sharding.mesh, PartitionSpec())
    best = max(candidates, key=lambda s: sum(axis is not None for axis in s))
    return NamedSharding(param_sharding.mesh, PartitionSpec(*best))


def derive_opt_state_shardings(abstract_opt_state: Any, abstract_params: Any,
                               param_shardings: Any) -> Any:
    """Shardings for an optax state, derived from the parameters' shardings.

    Works for any optax chain (Adam, LAMB, Adafactor, masks, inject_hyperparams): a state leaf
    whose key path ends with a parameter's key path (optax keeps per-parameter statistics in
    trees shaped like the parameters) takes that parameter's sharding if it has its shape, the
    reduced sharding if it has one dimension fewer (factored statistics), and is replicated
    otherwise (step counts, scalars, (1,)-shaped placeholders).
    """
    mesh = _first_mesh(param_shardings)
    replicated = NamedSharding(mesh, PartitionSpec())
    params_by_path = {}
    for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                                      jax.tree.leaves(param_shardings)):
        params_by_path[tuple(_key_name(k) for k in path)] = (tuple(leaf.shape), sharding)

    def leaf_sharding(path, leaf):
        names = tuple(_key_name(k) for k in path)
        shape = tuple(getattr(leaf, "shape", ()))
        for start in range(len(names)):  # Longest suffix first.
            match = params_by_path.get(names[start:])
            if match is None:
                continue
            param_shape, param_sharding = match
            if shape == param_shape:
                return param_sharding
            if len(shape) == len(param_shape) - 1 and len(shape) > 0:
                return _reduced_sharding(param_shape, param_sharding, shape)
            return replicated
        return replicated

    return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_opt_state)


def _first_mesh(shardings: Any) -> Mesh:
    leaves = jax.tree.leaves(shardings)
    if not leaves:
        raise ValueError("no shardings given")
    return leaves[0].mesh


def unbox_shapes(boxed: Any) -> Any:
    """Strips the logical-axis boxes from a tree of shapes (e.g. from `jax.eval_shape`).

    `nn.meta.unbox` would apply a sharding constraint to each leaf, which fails on shapes
    when a mesh is in scope; this works inside and outside `Partitioner.context()`.
    """
    return jax.tree.map(
        lambda leaf: leaf.unbox(apply_constraint=False) if isinstance(leaf, nn.Partitioned) else leaf,
        boxed, is_leaf=lambda leaf: isinstance(leaf, nn.Partitioned))


@gin.configurable
@dataclasses.dataclass
class Partitioner:
    """A mesh plus the logical-axis rules that place every array on it.

    gin binds `mesh_shape` and `rule_set` (see gin/partitioning/*.gin), a model's gin file its
    `extra_rules`; `logical_axis_rules`, when given, replaces both (tests, hand-made layouts).
    `devices` defaults to all devices of all hosts (`@first_devices()` takes fewer).
    """

    mesh_shape: Sequence[int] = (-1, 1)
    rule_set: str = "data_parallel"
    extra_rules: Sequence[tuple[str, Any]] = ()
    logical_axis_rules: LogicalRules | None = None
    axis_names: Sequence[str] = ("data", "model")
    dcn_mesh_shape: Sequence[int] | None = None
    devices: Sequence[jax.Device] | None = None
    mesh: Mesh = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        if self.logical_axis_rules is None:
            self.logical_axis_rules = rules(self.rule_set, self.extra_rules)
        self.logical_axis_rules = tuple((str(name), axis) for name, axis in self.logical_axis_rules)
        self.mesh = make_mesh(self.mesh_shape, self.axis_names, self.devices, self.dcn_mesh_shape)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Mesh and rules in scope: `nn.with_logical_constraint` in models then takes effect."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.logical_axis_rules):
            yield

    def sharding(self, logical_axes: Sequence[str | None]) -> NamedSharding:
        """The NamedSharding of an array whose dimensions have these logical names."""
        spec = nn.logical_to_mesh_axes(tuple(logical_axes), self.logical_axis_rules)
        return NamedSharding(self.mesh, spec)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def data_sharding(self) -> NamedSharding:
        """Batches: leading dimension split along the mesh axis that `batch` maps to."""
        return self.sharding(("batch",))

    def param_shardings(self, abstract_variables: Any) -> Any:
        """NamedShardings for a boxed (`nn.LogicallyPartitioned`) variable tree.

        The result has the structure of the unboxed tree; leaves without logical names are
        replicated.
        """
        logical_specs = nn.get_partition_spec(abstract_variables)
        return nn.logical_to_mesh_sharding(logical_specs, self.mesh, self.logical_axis_rules)

    def abstract_train_state(self, init_params_fn: Callable[..., Any],
                             optimizer: optax.GradientTransformation,
                             *init_args: Any) -> tuple[dict, dict]:
        """Shapes and shardings of {"step", "params", "opt_state"}, allocating nothing.

        `init_params_fn(*init_args)` returns the boxed params, e.g.
        `lambda rng: model.init(rng, dummy_batch)["params"]`. The returned abstract state is
        a tree of `jax.ShapeDtypeStruct(..., sharding=...)`: the restore target for
        checkpoints and the input of `per_device_memory`. Works inside or outside `context()`.
        """
        with self.context():
            boxed_params = jax.eval_shape(init_params_fn, *init_args)
        params_shardings = self.param_shardings(boxed_params)
        abstract_params = unbox_shapes(boxed_params)
        abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
        shardings = {
            "step": self.replicated,
            "params": params_shardings,
            "opt_state": derive_opt_state_shardings(
                abstract_opt_state, abstract_params, params_shardings),
        }
        abstract = {
            "step": jax.ShapeDtypeStruct((), jnp.int32),
            "params": abstract_params,
            "opt_state": abstract_opt_state,
        }
        abstract = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract, shardings)
        return abstract, shardings

    def init_train_state(self, init_params_fn: Callable[..., Any],
                         optimizer: optax.GradientTransformation,
                         *init_args: Any) -> tuple[dict, dict]:
        """Initialises {"step", "params", "opt_state"} directly in its sharded layout.

        One jit with `out_shardings`: each device computes only its own shards, so a model
        larger than one device's memory never exists whole anywhere.
        """
        _, shardings = self.abstract_train_state(init_params_fn, optimizer, *init_args)

        def init_fn(*args):
            params = nn.meta.unbox(init_params_fn(*args))
            return {"step": jnp.zeros((), jnp.int32), "params": params,
                    "opt_state": optimizer.init(params)}

        init_args = jax.tree.map(self._replicate, init_args)
        with self.context():
            state = jax.jit(init_fn, out_shardings=shardings)(*init_args)
        return state, shardings

    def _replicate(self, x: Any) -> Any:
        """A host value (the same on every process) placed on every device of the mesh."""
        if not isinstance(x, jax.Array):
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            # jax refuses to device_put a typed key onto other processes' devices: move its
            # raw data and re-wrap it.
            data = jax.device_put(jax.random.key_data(x), self.replicated)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(x, self.replicated)

    def batch_shardings(self, batch: Any) -> Any:
        """`data_sharding` for every array of a batch tree (leading dimension = examples)."""
        return jax.tree.map(lambda _: self.data_sharding, batch)

    def input_shard(self) -> tuple[int, int]:
        """(shard_index, num_shards): the slice of each global batch this process must read.

        Processes whose devices hold the same rows of the batch (when `model` spans hosts)
        read the same shard; on one host this is (0, 1).
        """
        process_ids = np.vectorize(lambda d: d.process_index)(self.mesh.devices)
        batch_axis = self.data_sharding.spec[0]
        if batch_axis is None:
            return 0, 1
        return data_shard_of_process(process_ids, self.mesh.axis_names.index(batch_axis),
                                     jax.process_index())

    def host_local_batch_to_global(self, batch: Any) -> Any:
        """Assembles each host's slice of the global batch into global sharded arrays.

        Every process passes its own examples (leading dimension = global batch / processes);
        on a single host this is the whole batch, placed split along `data`.
        """
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.data_sharding, np.asarray(x)),
            batch)


def data_shard_of_process(process_ids: np.ndarray, data_axis: int,
                          process_index: int) -> tuple[int, int]:
    """Which contiguous block of the data axis a process's devices hold.

    `process_ids` is the mesh's device grid mapped to process indices. Every process must hold
    one contiguous block of data indices, all blocks the same size (create_device_mesh and
    create_hybrid_device_mesh lay meshes out this way).
    """
    rows_by_process: dict[int, Any] = {}
    for position, owner in np.ndenumerate(process_ids):
        rows_by_process.setdefault(int(owner), set()).add(position[data_axis])
    rows_by_process = {p: tuple(sorted(rows)) for p, rows in rows_by_process.items()}
    blocks = sorted(set(rows_by_process.values()))
    sizes = {len(block) for block in blocks}
    if len(sizes) != 1 or any(block != tuple(range(block[0], block[0] + len(block)))
                              for block in blocks):
        raise ValueError(f"processes hold uneven or non-contiguous parts of the batch: {blocks}")
    covered = sorted(row for block in blocks for row in block)
    if covered != list(range(process_ids.shape[data_axis])):
        raise ValueError(f"processes hold overlapping parts of the batch: {blocks}")
    return blocks.index(rows_by_process[process_index]), len(blocks)


def _bytes_per_device(shape: Sequence[int], dtype: Any, sharding: NamedSharding) -> int:
    shard_shape = sharding.shard_shape(tuple(shape))
    return math.prod(shard_shape) * np.dtype(dtype).itemsize


def per_device_memory(abstract_state: Any, shardings: Any) -> int:
    """Bytes one device holds for this tree under these shardings (the --dry_run HBM check)."""
    leaves = jax.tree.leaves(abstract_state)
    return sum(_bytes_per_device(leaf.shape, leaf.dtype, sharding)
               for leaf, sharding in zip(leaves, jax.tree.leaves(shardings)))


def _format_bytes(num_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.2f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def sharding_table(abstract_params: Any, shardings: Any) -> str:
    """A text table of every parameter: name, shape, dtype, logical axes, mesh spec, bytes/device.

    `abstract_params` may be boxed (then the logical axes are shown) or plain; `shardings` has
    the structure of the unboxed tree. The trainer writes this to MODEL_DIR.
    """
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    entries = jax.tree_util.tree_flatten_with_path(abstract_params, is_leaf=is_box)[0]
    sharding_leaves = jax.tree.leaves(shardings)
    if len(entries) != len(sharding_leaves):
        raise ValueError(f"{len(entries)} parameters but {len(sharding_leaves)} shardings")
    rows, total = [], 0
    for (path, leaf), sharding in zip(entries, sharding_leaves):
        logical = tuple(leaf.names) if is_box(leaf) else "-"
        value = leaf.value if is_box(leaf) else leaf
        num_bytes = _bytes_per_device(value.shape, value.dtype, sharding)
        total += num_bytes
        rows.append((path_to_name(path), str(tuple(value.shape)), str(np.dtype(value.dtype)),
                     str(logical), str(tuple(sharding.spec)), _format_bytes(num_bytes)))
    header = ("name", "shape", "dtype", "logical axes", "mesh axes", "bytes/device")
    rows.append(("TOTAL", "", "", "", str(dict(_first_mesh(shardings).shape)),
                 _format_bytes(total)))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines) + "\n"
