"""The generic half of every Hugging Face <-> Flax converter: tables in, parameter trees out.

A family's converter describes its weights as a `ParamMap`: entries that occur once, and
per-layer entries whose Hugging Face names hold `{i}`, for each stack of layers. This module
does the rest for every family: transposes and reshapes (`Transform`), stacking layers along
a leading `layers` axis for scanned models, and the checks (every Hugging Face weight used
or explicitly ignored, every parameter filled, every shape what the model declares).

PyTorch's `Linear.weight` is (out, in); a Flax kernel is (in, out): `TRANSPOSE`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np

from prottrans_jax.errors import UserError
from prottrans_jax.partitioning import unbox_shapes


@dataclasses.dataclass(frozen=True)
class Transform:
    """How one Hugging Face array becomes one Flax array, and back."""

    to_flax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


# Hugging Face `hidden_act` names -> ours (models/layers.py ACTIVATIONS), and back.
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def activation_from_hf(name: str, what: str) -> str:
    """Our activation for a config.json `hidden_act`, else ValueError naming it."""
    if name not in HF_ACTIVATIONS:
        raise UserError(f"unsupported {what} hidden_act {name!r}; expected one of {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


IDENTITY = Transform(lambda x: x, lambda x: x)
TRANSPOSE = Transform(lambda x: x.T, lambda x: x.T)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter: its Flax path, its Hugging Face name, and the transform between them."""

    flax_path: tuple[str, ...]
    hf_key: str
    transform: Transform = IDENTITY


@dataclasses.dataclass(frozen=True)
class LayerStack:
    """`num_layers` layers under `flax_prefix` (`layers_{i}`, or `layers` stacked when scanned),
    each with `entries` relative to the layer; the Hugging Face names hold `{i}`."""

    flax_prefix: tuple[str, ...]
    num_layers: int
    entries: tuple[Entry, ...]
    scanned: bool


@dataclasses.dataclass(frozen=True)
class ParamMap:
    entries: tuple[Entry, ...]
    stacks: tuple[LayerStack, ...] = ()


def hf_to_flax(state_dict: Mapping[str, Any], param_map: ParamMap, dtype: Any, *,
               ignored: Iterable[str] = (), what: str = "model") -> dict[str, Any]:
    """Hugging Face weights -> a nested dict of numpy arrays in `dtype`.

    Every key of `state_dict` must be mapped or listed in `ignored`, else ValueError naming it.
    """
    dtype = np.dtype(dtype)
    used = set(ignored) & set(state_dict)
    params: dict[str, Any] = {}

    def take(key: str, transform: Transform) -> np.ndarray:
        if key not in state_dict:
            raise UserError(f"missing Hugging Face weight {key!r} for {what}")
        used.add(key)
        return np.asarray(transform.to_flax(np.asarray(state_dict[key])), dtype)

    for entry in param_map.entries:
        set_path(params, entry.flax_path, take(entry.hf_key, entry.transform))
    for stack in param_map.stacks:
        for entry in stack.entries:
            per_layer = [take(entry.hf_key.format(i=i), entry.transform)
                         for i in range(stack.num_layers)]
            if stack.scanned:
                set_path(params, stack.flax_prefix + ("layers",) + entry.flax_path,
                         np.stack(per_layer, axis=0))
            else:
                for i, array in enumerate(per_layer):
                    set_path(params, stack.flax_prefix + (f"layers_{i}",) + entry.flax_path, array)
    unused = sorted(k for k in state_dict if k not in used)
    if unused:
        raise UserError(f"Hugging Face weight {unused[0]!r} has no place in {what} "
                         f"({len(unused)} unused)")
    return params


def flax_to_hf(params: Any, param_map: ParamMap) -> dict[str, np.ndarray]:
    """Our params (boxed or plain) -> a Hugging Face state_dict of contiguous numpy arrays."""
    params = jax.tree.map(np.asarray, nn.unbox(params))
    state_dict: dict[str, np.ndarray] = {}

    def put(key: str, array: np.ndarray, transform: Transform) -> None:
        state_dict[key] = np.ascontiguousarray(transform.to_hf(array))

    for entry in param_map.entries:
        put(entry.hf_key, get_path(params, entry.flax_path), entry.transform)
    for stack in param_map.stacks:
        for entry in stack.entries:
            for i in range(stack.num_layers):
                if stack.scanned:
                    array = get_path(params, stack.flax_prefix + ("layers",) + entry.flax_path)[i]
                else:
                    array = get_path(params, stack.flax_prefix + (f"layers_{i}",) + entry.flax_path)
                put(entry.hf_key.format(i=i), array, entry.transform)
    return state_dict


def check_shapes(params: Mapping[str, Any], abstract_params: Any) -> None:
    """Every parameter the model declares is present with the declared shape, and no other."""
    expected = dict(flatten(unbox_shapes(abstract_params)))
    got = dict(flatten(params))
    for path, abstract in expected.items():
        if path not in got:
            raise ValueError(f"no Hugging Face weight maps to parameter {'/'.join(path)}")
        if tuple(got[path].shape) != tuple(abstract.shape):
            raise UserError(
                f"shape mismatch for parameter {'/'.join(path)}: converted "
                f"{tuple(got[path].shape)}, model expects {tuple(abstract.shape)} "
                "(check the config against the checkpoint)")
    for path in got:
        if path not in expected:
            raise ValueError(f"converted parameter {'/'.join(path)} is not declared by the model")


def select(params: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The top-level subtrees `keys` of a parameter tree (e.g. what an encoder needs)."""
    return {key: params[key] for key in keys}


# ------------------------------------------------------------------------------ tree utils


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def get_path(tree: Any, path: tuple[str, ...]) -> Any:
    node = tree
    for name in path:
        if not isinstance(node, Mapping) or name not in node:
            raise UserError(f"params have no entry {'/'.join(path)} (config does not match the params)")
        node = node[name]
    return node


def flatten(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, Mapping):
        for name, sub in tree.items():
            yield from flatten(sub, prefix + (name,))
    else:
        yield prefix, tree
