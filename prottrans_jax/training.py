"""The pre-training run: `train(model=..., partitioner=..., optimizer=...)`, configured with gin.

The command line (`python -m prottrans_jax.train`) parses gin and calls `train()`; the model,
the partitioner and the optimizer are injected from gin as in T5X
(`train.model = %MODEL`, bound by gin/models/<family>/*.gin). Nothing here knows a family:
the metrics logged are those the model returns, the FLOPs its own formula.

MODEL_DIR (local or gs://) gets model.json (family, config, vocabulary), config.gin and, after
the first step, operative_config.gin, shardings.txt, orbax checkpoints with the input
position, and TensorBoard events under train/ and eval/. Restarting with the same MODEL_DIR
resumes exactly. A run may continue another in phases (`train.phase = 2`: new feature lengths
and batch size, same parameters, optimizer state, step and schedule); within a phase, the
batch size, feature lengths, task and seed must stay what they were.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any, Mapping

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from prottrans_jax import checkpoints, families, model_dir as model_dir_lib, optimizers, partitioning
from prottrans_jax.data import dataset, registry
from prottrans_jax.data.feature_converters import check_task_fits
from prottrans_jax.errors import USER_ERRORS, UserError, first_line
from prottrans_jax.models.base import Average, Sum, summarize
from prottrans_jax.trainer import Trainer, peak_flops_per_device


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _write_text(path: str, text: str) -> None:
    if jax.process_index() == 0:
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path, "w") as handle:
            handle.write(text)


# ------------------------------------------------------------------------------ input


def train_dataset(task_name: str, feature_lengths: Mapping[str, int], batch_size: int,
                  seed: int, shard_info: seqio.ShardInfo | None = None, pack: bool = True,
                  converter_cls: type | None = None) -> tf.data.Dataset:
    """The training stream as a tf.data pipeline: deterministic for a seed, endless.

    Building it reads the task's file list (a missing corpus fails here) and traces every
    preprocessor (seconds): a run builds it once.
    """
    return dataset.get_batches(task_name, "train", feature_lengths, batch_size, shuffle=True,
                               seed=seed, pack=pack, num_epochs=None, shard_info=shard_info,
                               converter_cls=converter_cls)


def from_batch(stream: tf.data.Dataset, start: int):
    """Numpy batches from batch `start` on. Resuming skips the batches already consumed;
    tf.data still reads them (cheap next to training: the skipped batches are never
    converted to numpy nor sent to devices)."""
    return stream.skip(start).as_numpy_iterator()


def train_batches(task_name: str, feature_lengths: Mapping[str, int], batch_size: int,
                  seed: int, shard_info: seqio.ShardInfo | None = None,
                  start: int = 0, pack: bool = True, converter_cls: type | None = None):
    """The training stream from batch `start` on, as numpy batches."""
    return from_batch(train_dataset(task_name, feature_lengths, batch_size, seed, shard_info,
                                    pack, converter_cls), start)


# The seed of every evaluation's crops, masks and orders: one that no training stream draws with
# (those use train.seed, + 1000 per phase), so that an evaluation of the training split scores
# masks the model never trained on.
EVAL_SEED = 2**31 - 1


def eval_batches(task_name: str, split: str, feature_lengths: Mapping[str, int],
                 batch_size: int, num_batches: int | None, shard_info=None, pack: bool = True,
                 converter_cls: type | None = None):
    """The evaluation split, in order: the first `num_batches` batches, or all of it."""
    batches = dataset.get_batches(task_name, split, feature_lengths, batch_size, shuffle=False,
                                  seed=EVAL_SEED, pack=pack, num_epochs=None if num_batches else 1,
                                  shard_info=shard_info, converter_cls=converter_cls)
    if num_batches:
        batches = batches.take(num_batches)
    return batches.as_numpy_iterator()


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _import_task_module(module: str | None) -> None:
    if module:
        try:
            with gin.unlock_config():  # the module may define configurables (T5X does this too)
                importlib.import_module(module)
        except ModuleNotFoundError as error:
            raise UserError(f"MIXTURE_OR_TASK_MODULE {module!r} cannot be imported: {error}") from None


def _task_vocabulary(task, model) -> Any:
    """The task's vocabulary, refused when its ids do not fit the model's embedding."""
    vocabulary = task.output_features["targets"].vocabulary
    model_size = getattr(model.config, "vocab_size", None)
    if model_size is not None and vocabulary.vocab_size > model_size:
        raise UserError(f"task {task.name!r} uses the {vocabulary.vocab_size}-id vocabulary "
                          f"{getattr(vocabulary, 'name', vocabulary)!r}, but the model's "
                          f"vocab_size is {model_size}")
    return vocabulary


# ------------------------------------------------------------------------------ train


@gin.configurable
def train(*,
          model_dir: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          mixture_or_task_module: str | None = "tasks",
          batch_size: int = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] | None = None,
          inputs_length: int | None = None,
          targets_length: int | None = None,
          model: Any = gin.REQUIRED,
          partitioner: partitioning.Partitioner = gin.REQUIRED,
          optimizer: optimizers.Optimizer = gin.REQUIRED,
          seed: int = 0,
          num_microbatches: int = 1,
          max_steps_in_flight: int = 2,
          pack: bool = True,
          log_every: int = 100,
          eval_interval: int | None = None,
          eval_steps: int | None = None,
          eval_split: str = "validation",
          checkpoint_interval: int = 1000,
          keep_checkpoints: int | None = 3,
          async_checkpointing: bool = True,
          peak_flops: float | str | None = "auto",
          dry_run: bool = False,
          hbm_budget_gib: float | None = None,
          init_from_hf: str | None = None,
          phase: int = 1) -> dict:
    """Trains `model` on a seqio task; returns a summary (eval history, final step, flags).

    batch_size is global (all hosts); task_feature_lengths wins over inputs_length /
    targets_length (then the task's objective decides the targets length). eval_interval=None
    turns evaluation off; otherwise the validation split is evaluated before training (fresh
    runs), every eval_interval steps and at the end. peak_flops is the per-device peak
    FLOP/s for MFU: "auto" looks the device kind up, None disables MFU. dry_run builds the
    mesh and the abstract state only, prints the per-device memory of parameters and
    optimizer state, and refuses configs above hbm_budget_gib. init_from_hf: a local Hugging
    Face directory of the model's family whose weights start a fresh run (continued
    pre-training); its architecture and tokenizer must be the model's and the task's. phase:
    1, or a later phase continuing MODEL_DIR's checkpoint with new lengths and batch size.
    max_steps_in_flight: how many dispatched steps may wait on the devices, which bounds the
    time from SIGTERM to the saved checkpoint (trainer.Trainer).
    """
    train_steps = _positive_int("TRAIN_STEPS (train.train_steps)", train_steps)
    batch_size = _positive_int("BATCH_SIZE (train.batch_size)", batch_size)
    phase = _positive_int("train.phase", phase)
    _positive_int("train.log_every", log_every)
    _positive_int("train.checkpoint_interval", checkpoint_interval)
    _positive_int("train.num_microbatches", num_microbatches)
    _positive_int("train.max_steps_in_flight", max_steps_in_flight)
    _import_task_module(mixture_or_task_module)
    task = dataset.get_task(mixture_or_task_name)
    check_task_fits(task.name, task.output_features, model.feature_converter_cls,
                    f"model {type(model).__name__} ({model.family})", registry.objective_of(task))
    vocabulary = _task_vocabulary(task, model)
    if task_feature_lengths is None:
        if inputs_length is None:
            raise UserError("set INPUTS_LENGTH (train.inputs_length) or TASK_FEATURE_LENGTHS")
        _positive_int("INPUTS_LENGTH (train.inputs_length)", inputs_length)
        task_feature_lengths = registry.feature_lengths_for(task, inputs_length, targets_length)
    task_feature_lengths = {k: _positive_int(f"feature length {k!r}", v)
                            for k, v in dict(task_feature_lengths).items()}
    tf.config.set_visible_devices([], "GPU")  # the input pipeline must not take accelerator memory

    shard_index, num_shards = partitioner.input_shard()
    if batch_size % num_shards or batch_size % partitioner.mesh.shape["data"]:
        raise UserError(f"batch_size {batch_size} must divide by the {num_shards} input "
                          f"shards and the data axis {partitioner.mesh.shape['data']}")
    host_batch = batch_size // num_shards
    shard_info = seqio.ShardInfo(shard_index, num_shards)

    # Built before anything is compiled: a missing corpus fails fast.
    train_stream = train_dataset(mixture_or_task_name, task_feature_lengths, host_batch,
                                 _data_seed(seed, phase), shard_info, pack,
                                 model.feature_converter_cls)
    trainer = Trainer(model, optimizer.transform, partitioner, num_microbatches, seed,
                      max_steps_in_flight, batch_size=batch_size)
    with partitioner.context():
        boxed = jax.eval_shape(model.init_params, jax.random.key(seed))
    table = partitioning.sharding_table(boxed, trainer.checkpoint_shardings["params"])
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract["params"]))
    param_bytes = partitioning.per_device_memory(trainer.abstract["params"],
                                                 trainer.checkpoint_shardings["params"])
    opt_bytes = partitioning.per_device_memory(trainer.abstract["opt_state"],
                                               trainer.checkpoint_shardings["opt_state"])
    # A model's carry (ProtTXL's memory: rows x layers x mem_len x d) is state too.
    carry_bytes = (partitioning.per_device_memory(trainer.abstract_carry, trainer.carry_shardings)
                   if trainer.init_carry else 0)
    gib = 2 ** 30
    _log(f"model: {model.family}, {num_params:,} parameters; mesh {dict(partitioner.mesh.shape)}; "
         f"per device: params {param_bytes / gib:.3f} GiB + optimizer {opt_bytes / gib:.3f} GiB "
         + (f"+ carried memory {carry_bytes / gib:.3f} GiB " if carry_bytes else "")
         + "(activations not included)")
    state_bytes = param_bytes + opt_bytes + carry_bytes
    if hbm_budget_gib is not None and state_bytes > hbm_budget_gib * gib:
        what = "parameters + optimizer state" + (" + carried memory" if carry_bytes else "")
        raise UserError(f"{what} need {state_bytes / gib:.2f} "
                          f"GiB per device, over the {hbm_budget_gib} GiB budget: use more devices "
                          "or a sharding rule set that splits more (gin/partitioning/)")
    if dry_run:
        _log(table)
        return {"dry_run": True, "num_params": num_params, "bytes_per_device": state_bytes}

    model_dir = model_dir if "://" in model_dir else os.path.abspath(model_dir)
    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        raise UserError(f"MODEL_DIR {model_dir} is a file, not a directory")
    try:
        tf.io.gfile.makedirs(model_dir)
    except (OSError, tf.errors.OpError) as error:
        raise UserError(f"MODEL_DIR {model_dir} cannot be written: {first_line(error)}") from None
    run = _Run(model_dir=model_dir, phase=phase, seed=seed, task_name=mixture_or_task_name,
               feature_lengths=task_feature_lengths, batch_size=batch_size)
    checkpointer = checkpoints.Checkpointer(model_dir, checkpoint_interval, keep_checkpoints,
                                            async_checkpointing)
    try:
        state, start, phase_start, fresh = _restore_or_init(trainer, checkpointer, run, model,
                                                            vocabulary, init_from_hf)
        run.phase_start = phase_start
        family = families.get(model.family)
        model_dir_lib.write_model_json(model_dir, model_dir_lib.describe_model(
            family, model.config, vocabulary))
        run.write_config("config", phase_start + start, gin.config_str())
        _write_text(os.path.join(model_dir, "shardings.txt"), table)
        return _train_loop(
            trainer=trainer, checkpointer=checkpointer, model=model, partitioner=partitioner,
            schedule=optimizer.schedule, run=run, state=state, train_stream=train_stream,
            start=start, fresh=fresh,
            train_steps=train_steps, host_batch=host_batch, shard_info=shard_info, pack=pack,
            log_every=log_every, eval_interval=eval_interval, eval_steps=eval_steps,
            eval_split=eval_split, checkpoint_interval=checkpoint_interval,
            peak_flops=peak_flops)
    finally:
        checkpointer.close()


def _data_seed(seed: int, phase: int) -> int:
    """Phase 1 shuffles with the seed; a later phase starts a stream of its own."""
    return seed + 1000 * (phase - 1)


class _Run:
    """Where a run stands in its MODEL_DIR: phase, seed, and the input position."""

    def __init__(self, *, model_dir: str, phase: int, seed: int, task_name: str,
                 feature_lengths: dict, batch_size: int):
        self.model_dir, self.phase, self.seed = model_dir, phase, seed
        self.task_name, self.feature_lengths, self.batch_size = task_name, feature_lengths, batch_size
        self.phase_start = 0

    def position(self, step: int) -> dict:
        return {"batches_consumed": int(step) - self.phase_start, "seed": self.seed,
                "phase": self.phase, "phase_start_step": self.phase_start,
                "batch_size": self.batch_size, "feature_lengths": dict(self.feature_lengths),
                "task": self.task_name}

    def write_config(self, kind: str, step: int, text: str) -> None:
        """config.gin / operative_config.gin for phase 1, `<kind>.phase<k>.gin` after. A
        resumed run whose gin differs keeps the earlier file and writes
        `<...>.from_step<N>.gin` beside it: every config the MODEL_DIR trained under stays."""
        stem = kind if self.phase == 1 else f"{kind}.phase{self.phase}"
        path = os.path.join(self.model_dir, f"{stem}.gin")
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as handle:
                if handle.read() == text:
                    return
            path = os.path.join(self.model_dir, f"{stem}.from_step{step}.gin")
        _write_text(path, text)

    def check_resumable(self, position: Mapping[str, Any], step: int) -> None:
        """A resume within a phase must keep the phase's data settings."""
        where = f"{self.model_dir} (phase {self.phase}, step {step})"
        for key, ours in (("batch_size", self.batch_size),
                          ("feature_lengths", dict(self.feature_lengths)),
                          ("task", self.task_name)):
            theirs = position.get(key)
            if theirs is not None and theirs != ours:
                raise UserError(
                    f"{where} was trained with {key} {theirs!r}; this run has {ours!r}: restore "
                    f"it, or start a new phase with train.phase = {self.phase + 1}")


def _restore_or_init(trainer: Trainer, checkpointer: checkpoints.Checkpointer, run: _Run,
                     model, vocabulary, init_from_hf: str | None):
    """(state, batches consumed in this phase, the phase's first step, fresh?)."""
    step = checkpointer.latest_step()
    if step is None:
        if run.phase > 1:
            raise UserError(f"train.phase = {run.phase} continues a trained MODEL_DIR, but "
                              f"{run.model_dir} has no checkpoint: run phase {run.phase - 1} first")
        if init_from_hf:
            return trainer.init_state_from_params(
                released_params(init_from_hf, model, vocabulary)), 0, 0, True
        return trainer.init_state(), 0, 0, True
    state, position = checkpointer.restore(trainer.abstract, step)
    if position.get("seed") != run.seed:
        raise UserError(f"{checkpointer.directory} was trained with seed {position.get('seed')}, "
                          f"not {run.seed}: resume with that seed or use another MODEL_DIR")
    stored_phase = int(position.get("phase", 1))
    if run.phase < stored_phase:
        raise UserError(f"{run.model_dir} is in phase {stored_phase} (step {step}); this run "
                          f"says train.phase = {run.phase}")
    if init_from_hf:
        _log(f"resuming from step {step}: train.init_from_hf is not read again")
    if run.phase > stored_phase:  # a model's carry (memory) belongs to the old rows: it starts empty
        _log(f"phase {run.phase} starts at step {step} (phase {stored_phase} ended there): "
             f"batch size {run.batch_size}, lengths {run.feature_lengths}")
        return trainer.with_halted(state), 0, int(step), False
    run.check_resumable(position, step)
    consumed = int(position["batches_consumed"])
    _log(f"resuming from step {step} ({consumed} batches consumed)")
    # The carry (ProtTXL's memory) is restored with the input position: the same rows continue.
    carry = checkpointer.restore_carry(trainer.abstract_carry, step) if trainer.init_carry else None
    return trainer.with_halted(state, carry), consumed, int(position.get("phase_start_step", 0)), False


def released_params(directory: str, model, vocabulary) -> Any:
    """Released weights for a fresh run, checked against the model and the task vocabulary."""
    from prottrans_jax.convert.hf_dir import check_same_architecture, load_hf_dir

    where = f"train.init_from_hf {directory}"
    try:
        imported = load_hf_dir(directory)
    except USER_ERRORS as error:
        raise UserError(f"{where}: {error}") from None
    if imported.family.name != model.family:
        raise UserError(f"{where} holds a {imported.family.name} model; the model being "
                          f"trained is {model.family}")
    check_same_architecture(imported.config, model.config, where)
    if list(imported.vocabulary.pieces) != list(vocabulary.pieces):
        ours, theirs = list(vocabulary.pieces), list(imported.vocabulary.pieces)
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise UserError(f"{where}: its tokenizer differs from the task's vocabulary at id "
                          f"{first} ({theirs[first] if first < len(theirs) else None!r} there, "
                          f"{ours[first] if first < len(ours) else None!r} in the task)")
    _log(f"initialised from the Hugging Face weights in {directory}")
    return imported.params


def _train_loop(*, trainer: Trainer, checkpointer: checkpoints.Checkpointer, model, partitioner,
                schedule, run: _Run, state, train_stream: tf.data.Dataset, start: int,
                fresh: bool, train_steps: int,
                host_batch: int, shard_info, pack: bool, log_every: int,
                eval_interval: int | None, eval_steps: int | None, eval_split: str,
                checkpoint_interval: int, peak_flops) -> dict:
    """Step / log / evaluate / checkpoint until done or stopped."""
    converter_cls = model.feature_converter_cls
    batches = from_batch(train_stream, start)
    if peak_flops == "auto":
        peak_flops = peak_flops_per_device()
    logger = _Logger(run.model_dir)
    history: list[dict] = []

    def evaluate(step):
        eval_iterator = lambda: (partitioner.host_local_batch_to_global(b)  # noqa: E731
                                 for b in eval_batches(run.task_name, eval_split,
                                                       run.feature_lengths, host_batch,
                                                       eval_steps, shard_info, pack,
                                                       converter_cls))
        result = trainer.evaluate(state["params"], eval_iterator)
        if result is None:
            _log(f"eval  step {step}: nothing to evaluate (split {eval_split!r} has no full batch "
                 f"of {host_batch} rows)")
            return
        logger.scalars("eval", step, result)
        _log(f"eval  step {step}: " + _format(result, trainer.metric_kinds, model.headline_metrics))
        history.append({"step": step, **result})

    step, flops_per_step = run.phase_start + start, None
    outcome = {"halted": False, "preempted": False}
    metrics = None
    with checkpoints.PreemptionWatcher() as watcher, partitioner.context():
        if fresh and eval_interval:
            evaluate(0)
        first_step = step
        last_time, last_step = time.perf_counter(), step
        while step < train_steps:
            batch = partitioner.host_local_batch_to_global(next(batches))
            if metrics is None:
                metrics = trainer.new_metrics(batch)
                flops_per_step = model.flops_per_batch(batch)
            state, metrics = trainer.train_step(state, batch, metrics)
            step += 1
            if step == first_step + 1:
                run.write_config("operative_config", first_step, gin.operative_config_str())
                logger.scalars("train", step, {"timing/compile_seconds": trainer.compile_seconds})
                _log(f"first step (compile + run) took {trainer.compile_seconds:.1f} s")
                last_time, last_step = time.perf_counter(), step
            if step % log_every == 0 or step == train_steps:
                values, metrics = jax.device_get(metrics), trainer.new_metrics(batch)
                if trainer.halted(state):
                    outcome["halted"] = True
                    break
                now = time.perf_counter()
                line = _train_line(summarize(values), trainer.metric_kinds, step - last_step,
                                   now - last_time, float(schedule(step - 1)), flops_per_step,
                                   peak_flops)
                logger.scalars("train", step, line)
                _log(_console_line(step, train_steps, line, model.headline_metrics))
                last_time, last_step = now, step
            # A save is a sync point anyway: never save a halted (stale) state under a new step.
            if step % checkpoint_interval == 0 and trainer.halted(state):
                outcome["halted"] = True
                break
            checkpointer.maybe_save(step, trainer.checkpointed(state), run.position(step),
                                    carry=trainer.carry_of(state))
            if eval_interval and step % eval_interval == 0 and step < train_steps:
                evaluate(step)
            if watcher.should_stop(step):
                outcome["preempted"] = True
                break

        if outcome["halted"]:
            good = int(jax.device_get(state["step"]))
            checkpointer.save_now(good, trainer.checkpointed(state), run.position(good),
                                  carry=trainer.carry_of(state))
            message = (f"non-finite loss or gradient at step {good + 1}: training stopped; the "
                       f"last good state (step {good}) is saved in {run.model_dir}")
            _log(f"error: {message}")
            return {**outcome, "step": good, "eval": history, "message": message,
                    "state": trainer.checkpointed(state), "carry": trainer.carry_of(state)}
        checkpointer.save_now(step, trainer.checkpointed(state), run.position(step),
                              carry=trainer.carry_of(state))
        if outcome["preempted"]:
            _log(f"stop requested: checkpoint saved at step {step}; restart to resume")
        elif eval_interval:
            evaluate(step)
    return {**outcome, "step": step, "eval": history, "state": trainer.checkpointed(state),
            "carry": trainer.carry_of(state),
            "feature_lengths": run.feature_lengths, "host_batch": host_batch, "model": model,
            "task": run.task_name}


class _Logger:
    """TensorBoard writers (process 0 only), one per kind (train, eval)."""

    def __init__(self, model_dir: str):
        self.writers = {}
        if jax.process_index() == 0:
            self.writers = {name: tf.summary.create_file_writer(os.path.join(model_dir, name))
                            for name in ("train", "eval")}

    def scalars(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        if kind in self.writers:
            with self.writers[kind].as_default(step=step):
                for name, value in values.items():
                    if not name.endswith("_count"):
                        tf.summary.scalar(name, value)
            self.writers[kind].flush()


def _train_line(summary: Mapping[str, float], kinds: Mapping[str, type], steps_timed: int,
                seconds: float, learning_rate: float, flops_per_step: float | None,
                peak_flops: float | None) -> dict[str, float]:
    """What one log step reports: every metric's mean, the learning rate and, once timed,
    step time, each Sum metric per second and MFU."""
    line = {name: value for name, value in summary.items()
            if kinds.get(name) is Average and name != "steps"}
    line["learning_rate"] = learning_rate
    if steps_timed > 0:
        seconds = max(seconds, 1e-9)
        # Sums cover every step since the last fetch; time only the timed ones.
        fraction = steps_timed / max(summary["steps"], 1)
        line["timing/step_seconds"] = seconds / steps_timed
        for name, kind in kinds.items():
            if kind is Sum and name != "steps":
                line[f"timing/{name}_per_second"] = summary[name] * fraction / seconds
        if peak_flops and flops_per_step:
            line["timing/mfu"] = (flops_per_step * steps_timed / seconds
                                  / (jax.device_count() * peak_flops))
    return line


def _format(values: Mapping[str, float], kinds: Mapping[str, type], headline: tuple[str, ...]) -> str:
    """An eval summary in one line: the headline metrics, the other means, the totals."""
    order = [*headline, *sorted(set(kinds) - set(headline))]
    means = [f"{name} {values[name]:.4f}" for name in order
             if kinds.get(name) is Average and name in values and name != "grad_norm"]
    totals = [f"{values[name]:,.0f} {name}" for name, kind in kinds.items()
              if kind is Sum and name in values and name != "steps"]
    return "  ".join(means) + (f"  ({', '.join(totals)})" if totals else "")


def _console_line(step: int, total: int, line: Mapping[str, float],
                  headline: tuple[str, ...]) -> str:
    text = f"step {step}/{total}  " + "  ".join(f"{name} {line[name]:.4f}" for name in headline
                                                 if name in line)
    text += f"  lr {line['learning_rate']:.2e}  grad norm {line.get('grad_norm', 0.0):.3f}"
    rates = [f"{value:,.1f} {name[len('timing/'):-len('_per_second')]}/s"
             for name, value in line.items() if name.endswith("_per_second")]
    if rates:
        text += "  " + "  ".join(rates) + f"  {line['timing/step_seconds']:.3f} s/step"
    if "timing/mfu" in line:
        text += f"  MFU {100 * line['timing/mfu']:.1f}%"
    return text
