"""A trainer MODEL_DIR as data: what it holds (model.json) and its parameters, local or gs://.

The trainer writes `model.json` at start: the family, its config and the vocabulary of the
task it trains on. `embed`, `export_hf`, `evaluate` and `tsne` read it here, so none of them
needs a flag, or gin, to know what a directory holds; reading a directory never runs code
from it. Directories written before model.json existed are read from their operative config,
with its `import` lines ignored (only this project's own config classes are bound).

The trainer itself resumes whole train states through `checkpoints.Checkpointer`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Iterable

import gin
import jax
import orbax.checkpoint as ocp
from etils import epath

from prottrans_jax import families
from prottrans_jax.checkpoints import STATE, Checkpointer
from prottrans_jax.errors import UserError, first_line
from prottrans_jax.partitioning import unbox_shapes
from prottrans_jax.vocab import ProteinVocabulary

MODEL_JSON = "model.json"
FORMAT_VERSION = 1
CONFIG_GIN_NAMES = ("operative_config.gin", "config.gin")


@dataclasses.dataclass(frozen=True)
class StoredModel:
    """What a MODEL_DIR holds: its family, the model config and the task's vocabulary."""

    family: families.Family
    config: Any
    vocabulary: ProteinVocabulary


def _path(model_dir: str) -> epath.Path:
    return epath.Path(model_dir)


def describe_model(family: families.Family, config: Any, vocabulary: ProteinVocabulary) -> dict:
    return {"format_version": FORMAT_VERSION, "family": family.name,
            "config": dataclasses.asdict(config), "vocabulary": list(vocabulary.pieces)}


def write_model_json(model_dir: str, description: dict) -> None:
    """Writes model.json atomically (a reader never sees half a file). Process 0 only."""
    if jax.process_index() != 0:
        return
    directory = _path(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f".{MODEL_JSON}.tmp"
    staging.write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    staging.replace(directory / MODEL_JSON)


def read_model_json(model_dir: str) -> dict | None:
    path = _path(model_dir) / MODEL_JSON
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {first_line(err)}") from None
    if not isinstance(data, dict) or "family" not in data or "config" not in data:
        raise UserError(f"{path} is not a model description (no 'family' and 'config')")
    return data


def read_model(model_dir: str, **overrides: Any) -> StoredModel:
    """The family, config (with `overrides`, e.g. dtype) and vocabulary a MODEL_DIR holds."""
    directory = _path(model_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    data = read_model_json(model_dir)
    if data is not None:
        family = families.get(data["family"])
        try:
            config = family.config_from_dict(data["config"], **overrides)
        except (TypeError, ValueError) as err:
            raise UserError(f"{directory / MODEL_JSON}: {first_line(err)}") from None
        pieces = data.get("vocabulary")
        vocabulary = (family.vocabulary_from_pieces(pieces, str(directory / MODEL_JSON))
                      if pieces else family.default_vocabulary())
        return StoredModel(family, config, vocabulary)
    for name in CONFIG_GIN_NAMES:
        path = directory / name
        if path.exists():
            family, config = _config_from_gin_text(path.read_text(), str(path))
            config = dataclasses.replace(config, **overrides)
            return StoredModel(family, config, family.default_vocabulary())
    raise FileNotFoundError(f"{model_dir} is not a trainer MODEL_DIR: no {MODEL_JSON} nor "
                            f"{' or '.join(CONFIG_GIN_NAMES)}")


def _config_from_gin_text(text: str, where: str) -> tuple[families.Family, Any]:
    """(family, config) from an old MODEL_DIR's gin file, without executing its imports."""
    bindings = "\n".join(line for line in text.splitlines()
                         if not line.lstrip().startswith(("import ", "from ", "include ")))
    for family in families.all_families().values():
        if not re.search(rf"\b{family.config_cls.__name__}\.", bindings):  # AlbertConfig. is not BertConfig.
            continue
        gin.clear_config()
        try:
            gin.parse_config(bindings, skip_unknown=True)
            return family, family.config_cls()
        except Exception as err:  # gin raises ValueError, SyntaxError, TypeError...
            raise UserError(f"cannot read the model config from {where}: {first_line(err)}") from None
        finally:
            gin.clear_config()
    raise UserError(f"{where} binds no model config of a known family "
                     f"({', '.join(sorted(families.all_families()))})")


def latest_step(model_dir: str) -> int:
    """The newest finished checkpoint step in MODEL_DIR (orbax ignores unfinished ones)."""
    with Checkpointer(model_dir, async_save=False) as checkpointer:
        step = checkpointer.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {model_dir}")
    return int(step)


def abstract_params(stored: StoredModel, keys: Iterable[str] | None = None) -> dict:
    """Shapes and dtypes of the model's parameters (or of their top-level subtrees `keys`)."""
    model = stored.family.pretrain_model(stored.config)
    params = unbox_shapes(jax.eval_shape(model.init_params, jax.random.key(0)))
    return params if keys is None else {key: params[key] for key in keys}


def restore_params(model_dir: str, stored: StoredModel, keys: Iterable[str] | None = None,
                   step: int | None = None, sharding=None) -> tuple[dict, int]:
    """(params, step): only the parameters (or their subtrees `keys`) of a checkpoint.

    Orbax's partial restore reads the requested subtree of the `state` item and nothing else,
    so the optimizer state (2x the parameters for Adam) is never allocated.
    """
    with Checkpointer(model_dir, async_save=False) as checkpointer:
        steps = checkpointer.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {model_dir}")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise FileNotFoundError(f"{model_dir} has no finished checkpoint at step {step} "
                                    f"(it has {', '.join(map(str, steps))})")
        return _restore_params(checkpointer, model_dir, stored, keys, step, sharding), step


def _restore_params(checkpointer, model_dir, stored, keys, step, sharding) -> dict:
    state_dir = _path(model_dir) / str(step) / STATE
    abstract = abstract_params(stored, keys)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=sharding, dtype=x.dtype), item)
    if "://" not in model_dir:
        state_dir = state_dir.resolve()  # tensorstore needs absolute local paths
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
    except Exception as err:  # orbax and tensorstore raise many types
        raise checkpointer.corrupt_error(step, f"its parameters do not restore with the stored "
                                               f"{stored.family.name} config ({first_line(err)})") from None
    params = restored["params"]
    for path, leaf in jax.tree_util.tree_flatten_with_path(item["params"])[0]:
        got = params
        for key in path:
            got = got[key.key]
        if tuple(got.shape) != tuple(leaf.shape):
            raise UserError(f"checkpoint {state_dir}: parameter {jax.tree_util.keystr(path)} has shape "
                             f"{tuple(got.shape)}, the stored model config expects {tuple(leaf.shape)}")
    return params
