"""Orbax checkpoints of the train state and the input position, and preemption handling.

A checkpoint step directory holds two items:
    state           {"step", "params", "opt_state"} (StandardSave): restored straight into the
                    target shardings, so each host reads only its own shards;
    input_position  a JSON dict, e.g. {"batches_consumed": 1200, "seed": 0}: what the input
                    pipeline needs to produce the same next batches after a restart;
    carry           only for a model that carries state across steps (ProtTXL's memory,
                    models/base.py): that state, sharded along the batch like the rows it
                    belongs to; a resume within a phase restores it (`restore_carry`).

Every process of a multi-host job must call the saving and restoring methods (orbax
coordinates the hosts). Paths may be local or gs://; everything goes through etils.epath.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from typing import Any, Mapping, Sequence

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from prottrans_jax.errors import UserError, first_line
from prottrans_jax.partitioning import path_to_name

STATE = "state"
INPUT_POSITION = "input_position"
CARRY = "carry"


class CheckpointMismatchError(UserError):
    """The checkpoint's tree or shapes differ from the model being trained."""


class CheckpointCorruptError(UserError):
    """A checkpoint step directory cannot be read."""


def _describe(error: BaseException) -> str:
    """The cause in one short line, with its type (orbax and tensorstore raise many)."""
    return f"{type(error).__name__}: {first_line(error, max_chars=300)}"


def _as_path(directory: epath.PathLike) -> epath.Path:
    """epath for gs:// and other URLs; absolute local paths (tensorstore requires them)."""
    path = epath.Path(directory)
    return path if "://" in str(directory) else path.expanduser().resolve()


@gin.configurable
class Checkpointer:
    """Periodic, keep-N, asynchronous checkpoints in MODEL_DIR, restored into shardings.

    Asynchronous saves return once the arrays are copied off the devices; the write finishes
    in the background. `wait_until_finished()` (also called by `close()` and `restore()`)
    must run before the process exits.
    """

    def __init__(self, directory: epath.PathLike, save_interval_steps: int = 1000,
                 max_to_keep: int | None = 3, async_save: bool = True):
        self.directory = _as_path(directory)
        # Saves at multiples of the interval and at a multi-host preemption sync point; not
        # orbax's default extra save at the first call (a costly surprise at XL scale).
        policies = ocp.checkpoint_managers
        save_policy = policies.AnySavePolicy([
            policies.FixedIntervalPolicy(save_interval_steps),
            policies.PreemptionCheckpointingPolicy(),
        ])
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=save_policy,
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={STATE: ocp.StandardCheckpointHandler(),
                           INPUT_POSITION: ocp.JsonCheckpointHandler(),
                           CARRY: ocp.StandardCheckpointHandler()},
        )

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> Sequence[int]:
        return sorted(self._manager.all_steps())

    def step_directory(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _save(self, step: int, state: Any, input_position: Mapping[str, Any],
              force: bool, carry: Any = None) -> bool:
        try:
            json.dumps(dict(input_position))
        except (TypeError, ValueError) as error:
            raise TypeError(f"input_position must be a JSON-serialisable dict: {error}") from None
        items = {STATE: ocp.args.StandardSave(state),
                 INPUT_POSITION: ocp.args.JsonSave(dict(input_position))}
        if carry is not None:
            items[CARRY] = ocp.args.StandardSave(carry)
        return self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)

    def maybe_save(self, step: int, state: Any, input_position: Mapping[str, Any],
                   carry: Any = None) -> bool:
        """Saves if `step` is a multiple of save_interval_steps (or a preemption sync point
        was reached on a multi-host TPU job); returns whether a save started."""
        return self._save(step, state, input_position, force=False, carry=carry)

    def save_now(self, step: int, state: Any, input_position: Mapping[str, Any],
                 wait: bool = True, carry: Any = None) -> bool:
        """Saves regardless of the interval: final step, SIGTERM, last good state before NaN.

        A step that is already saved is left as it is. With `wait` (the default) the write
        has finished when this returns, so the process may exit.
        """
        saved = False
        if step not in self._manager.all_steps():
            saved = self._save(step, state, input_position, force=True, carry=carry)
        if wait:
            self.wait_until_finished()
        return saved

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def _saved_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        try:
            metadata = self._manager.item_metadata(step)[STATE]
        except Exception as error:  # orbax raises many types for unreadable files.
            raise self.corrupt_error(step, _describe(error)) from error
        leaves = jax.tree_util.tree_flatten_with_path(metadata)[0] if metadata is not None else []
        if not leaves:
            raise self.corrupt_error(step, f"no '{STATE}' metadata")
        return {path_to_name(path): tuple(leaf.shape) for path, leaf in leaves}

    def check_matches(self, abstract_state: Any, step: int) -> None:
        """Raises CheckpointMismatchError naming the first key whose presence or shape differs."""
        saved = self._saved_shapes(step)
        wanted = {path_to_name(path): tuple(leaf.shape)
                  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
        # Parameters first: a model mismatch is best named by a parameter, not an optimizer
        # statistic derived from it.
        wanted = dict(sorted(wanted.items(), key=lambda item: not item[0].startswith("params/")))
        problem = None
        for name, shape in wanted.items():
            if name not in saved:
                problem = f"'{name}' (shape {shape}) is missing from the checkpoint"
            elif saved[name] != shape:
                problem = f"'{name}' has shape {saved[name]} in the checkpoint but {shape} in the model"
            if problem:
                break
        if problem is None:
            extra = [name for name in saved if name not in wanted]
            if extra:
                problem = f"the checkpoint has '{extra[0]}' (shape {saved[extra[0]]}) which the model lacks"
        if problem:
            raise CheckpointMismatchError(
                f"checkpoint {self.step_directory(step)} does not match the model being "
                f"trained: {problem}; use another MODEL_DIR or the model config it was saved with")

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores (state, input_position) from `step` (default: the latest).

        `abstract_state` is a tree of `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`
        (`Partitioner.abstract_train_state`): arrays come back in those shardings.
        """
        self.wait_until_finished()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self.check_matches(abstract_state, step)
        args = ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state),
            INPUT_POSITION: ocp.args.JsonRestore(),
        })
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as error:
            raise self.corrupt_error(step, _describe(error)) from error
        input_position = restored[INPUT_POSITION]
        if input_position is None:
            raise self.corrupt_error(step, f"no '{INPUT_POSITION}'")
        return restored[STATE], dict(input_position)

    def restore_carry(self, abstract_carry: Any, step: int) -> Any:
        """The carry saved at `step`, into the shardings of `abstract_carry` (a tree of
        `jax.ShapeDtypeStruct(..., sharding=...)`, `Trainer.abstract_carry`)."""
        self.wait_until_finished()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                **{CARRY: ocp.args.StandardRestore(abstract_carry)}))
        except Exception as error:  # orbax raises many types; a missing item among them
            raise self.corrupt_error(step, f"its '{CARRY}' (the model's memory) does not restore: "
                                           f"{_describe(error)}") from error
        return restored[CARRY]

    def corrupt_error(self, step: int, cause: str) -> CheckpointCorruptError:
        """The error for an unreadable step, with the way to go on: from the latest finished
        step before it (it once ended in a TensorStore repr alone)."""
        earlier = [s for s in self.all_steps() if s < step]
        hint = ("no earlier checkpoint is kept: start again in a new MODEL_DIR" if not earlier else
                f"the previous checkpoint, step {earlier[-1]}, is finished: move {self.step_directory(step)} "
                "out of MODEL_DIR to resume from it")
        return CheckpointCorruptError(f"checkpoint {self.step_directory(step)} is corrupt or incomplete: "
                                      f"{cause}; {hint}")


def _jax_preemption_service_active() -> bool:
    """True when jax.distributed runs JAX's preemption service (TPU multi-host jobs).

    The service installs its own SIGTERM handler and agrees on a common step across hosts;
    jax 0.10 has no public query for it, hence the private module.
    """
    from jax._src import distributed  # pylint: disable=g-import-not-at-top

    return (distributed.global_state.client is not None
            and distributed.global_state.preemption_sync_manager is not None)


class PreemptionWatcher:
    """Turns SIGTERM into a decision taken at a step boundary, the same on every host.

    Call `should_stop(step)` once per step on every process; when it returns True, save with
    `Checkpointer.save_now` and exit. Under JAX's preemption service (multi-host TPU) the
    decision is its sync point; otherwise a SIGTERM handler sets a flag, shared across
    processes with an all-gather when there are several.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
        self._received = threading.Event()
        self._previous_handlers: dict[int, Any] = {}
        self._use_jax_service = _jax_preemption_service_active()
        if not self._use_jax_service and threading.current_thread() is threading.main_thread():
            for signum in signals:
                self._previous_handlers[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        del frame
        logging.warning("received signal %d: will checkpoint and stop at the next step", signum)
        self._received.set()

    @property
    def signal_received(self) -> bool:
        return self._received.is_set()

    def should_stop(self, step: int) -> bool:
        if self._use_jax_service:
            return bool(multihost_utils.reached_preemption_sync_point(int(step)))
        if jax.process_count() == 1:
            return self.signal_received
        flags = multihost_utils.process_allgather(np.asarray(self.signal_received))
        return bool(np.any(flags))

    def close(self) -> None:
        """Puts the previous signal handlers back."""
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def __enter__(self) -> "PreemptionWatcher":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
