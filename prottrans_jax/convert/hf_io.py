"""Reading and writing Hugging Face model directories without executing pickles.

Weights come from `model.safetensors` (or its sharded index) or, failing that, from
`pytorch_model.bin` (or its sharded index) through `torch.load(weights_only=True)`, which
refuses arbitrary pickled objects. Tensors are returned as numpy arrays (bfloat16 is widened
to float32, which numpy cannot represent natively).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from prottrans_jax.errors import UserError, first_line

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"
CONFIG = "config.json"


def load_hf_config(model_dir: str) -> dict[str, Any]:
    """The model's `config.json` as a dict."""
    path = os.path.join(model_dir, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no Hugging Face config: {path} does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read Hugging Face config {path}: {err}") from None


def load_hf_state_dict(model_dir: str) -> dict[str, np.ndarray]:
    """All weights of a Hugging Face model directory, by PyTorch state_dict name."""
    for index_name, single_name, reader in (
        (SAFETENSORS_INDEX, SAFETENSORS, _read_safetensors),
        (PYTORCH_BIN_INDEX, PYTORCH_BIN, _read_torch_bin),
    ):
        index_path = os.path.join(model_dir, index_name)
        single_path = os.path.join(model_dir, single_name)
        if os.path.isfile(single_path):
            return reader(single_path)
        if os.path.isfile(index_path):
            state_dict: dict[str, np.ndarray] = {}
            for shard in _shards_of(index_path):
                state_dict.update(reader(os.path.join(model_dir, shard)))
            return state_dict
    raise FileNotFoundError(
        f"no Hugging Face weights in {model_dir}: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, "
        f"{PYTORCH_BIN} or {PYTORCH_BIN_INDEX}"
    )


def save_hf_model(output_dir: str, state_dict: dict[str, np.ndarray], hf_config: dict[str, Any]) -> None:
    """Writes `config.json` and `model.safetensors` (what `from_pretrained` reads)."""
    from safetensors.numpy import save_file

    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, CONFIG), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    tensors = {name: np.ascontiguousarray(array) for name, array in state_dict.items()}
    save_file(tensors, os.path.join(output_dir, SAFETENSORS), metadata={"format": "pt"})


def _shards_of(index_path: str) -> list[str]:
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"cannot read weight index {index_path}: {err!r}") from None
    return sorted(set(weight_map.values()))


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing weight shard {path}")
    try:
        out = {}
        with safe_open(path, framework="np") as f:
            for name in f.keys():
                try:
                    out[name] = f.get_tensor(name)
                except TypeError:  # bfloat16: numpy has no such dtype
                    out[name] = _read_safetensors_tensor_with_torch(path, name)
        return out
    except Exception as err:  # safetensors raises its own error types
        raise UserError(f"cannot read safetensors weights {path}: {first_line(err)}") from None


def _read_safetensors_tensor_with_torch(path: str, name: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return f.get_tensor(name).float().numpy()


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing weight shard {path}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise UserError(f"cannot read PyTorch weights {path} (weights_only=True): {first_line(err)}") from None
    if not isinstance(state_dict, dict):
        raise UserError(f"cannot read PyTorch weights {path}: expected a state_dict, got {type(state_dict).__name__}")
    out = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"cannot read PyTorch weights {path}: entry {name!r} is not a tensor")
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        out[name] = tensor.numpy()
    return out

