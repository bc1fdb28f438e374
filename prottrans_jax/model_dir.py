"""Reading a trainer MODEL_DIR for inference: the model config it used and its parameters.

Embedding (`prottrans_jax.embed`) and export (`prottrans_jax.export_hf`) start from here; the
trainer itself resumes whole train states through `checkpoints.Checkpointer`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from prottrans_jax.checkpoints import STATE, Checkpointer
from prottrans_jax.models.gin_utils import config_from_gin
from prottrans_jax.partitioning import unbox_shapes
from prottrans_jax.models.t5 import T5Config, abstract_variables

CONFIG_GIN_NAMES = ("operative_config.gin", "config.gin")


def first_line(err: BaseException) -> str:
    """An exception as one line (tensorstore appends its multi-kilobyte spec)."""
    lines = str(err).strip().splitlines()
    return lines[0].split(" [tensorstore_spec=")[0] if lines else type(err).__name__


def config_from_model_dir(model_dir: str, **overrides: Any):
    """The T5Config a trainer run used, from MODEL_DIR's operative_config.gin (or config.gin).

    The operative config holds the values actually used; config.gin (written at start) is the
    fallback for a run stopped before its first step. Bindings of other configurables (the
    trainer's, the optimizer's) are skipped.
    """
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    for name in CONFIG_GIN_NAMES:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            try:
                config = config_from_gin(T5Config, [path], skip_unknown=True)
            except Exception as err:  # gin raises ValueError, SyntaxError, ImportError...
                raise ValueError(f"cannot read the model config from {path}: {first_line(err)}") from None
            return dataclasses.replace(config, **overrides)
    raise FileNotFoundError(f"{model_dir} is not a trainer MODEL_DIR: no {' or '.join(CONFIG_GIN_NAMES)}")


def latest_step(model_dir: str) -> int:
    """The newest finished checkpoint step in MODEL_DIR (orbax ignores unfinished ones)."""
    checkpointer = Checkpointer(model_dir, async_save=False)
    try:
        step = checkpointer.latest_step()
    finally:
        checkpointer.close()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {model_dir}")
    return int(step)


def restore_params(model_dir: str, config, step: int | None = None, encoder_only: bool = True,
                   sharding=None) -> tuple[dict, int]:
    """(params, step): only the parameters of a checkpoint, as config.param_dtype arrays.

    encoder_only reads just `token_embedder` and `encoder` (all `T5.encode` needs). Orbax's
    partial restore reads the requested subtree of the `state` item and nothing else, so the
    optimizer state (2x the parameters for Adam) is never allocated.
    """
    step = latest_step(model_dir) if step is None else int(step)
    state_dir = os.path.join(os.path.abspath(model_dir), str(step), STATE)
    if not os.path.isdir(state_dir):
        raise FileNotFoundError(f"no checkpoint state at {state_dir}")
    abstract = unbox_shapes(abstract_variables(config, encoder_only=encoder_only))["params"]
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=sharding, dtype=x.dtype), item)
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
    except Exception as err:  # orbax and tensorstore raise many types
        raise ValueError(f"cannot restore the parameters from {state_dir} with the stored model config "
                         f"(d_model={config.d_model}, layers={config.num_encoder_layers}): {first_line(err)}") from None
    params = restored["params"]
    for path, leaf in jax.tree_util.tree_flatten_with_path(item["params"])[0]:
        got = params
        for key in path:
            got = got[key.key]
        if tuple(got.shape) != tuple(leaf.shape):
            raise ValueError(f"checkpoint {state_dir}: parameter {jax.tree_util.keystr(path)} has shape "
                             f"{tuple(got.shape)}, the stored model config expects {tuple(leaf.shape)}")
    return params, step
