r"""Pre-training entry point, configured with gin as in T5X.

    python -m prottrans_jax.train \
        --gin_file=gin/experiments/prot_t5_tiny_sample.gin \
        --gin.MODEL_DIR="'runs/x'" --gin.TRAIN_STEPS=100

Flags: --gin_file (repeatable, later files override earlier ones), --gin.KEY=VALUE and
--gin_bindings='KEY = VALUE' (repeatable, applied after the files), --gin_search_paths
(comma-separated roots for `include`; the repository root and the working directory are
always searched), --debug (full tracebacks instead of one-line errors).

Writes to MODEL_DIR (local or gs://): config.gin (as parsed), operative_config.gin (the
values actually used, after the first step), shardings.txt (every parameter's shape, logical
axes and mesh layout), orbax checkpoints, and TensorBoard events under train/ and eval/.
Restarting with the same MODEL_DIR resumes exactly: same parameters, same next batches.
SIGTERM checkpoints at the next step boundary and exits cleanly.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import time
from typing import Any, Mapping, Sequence

if __name__ == "__main__":
    # `python -m prottrans_jax.train` runs this file as __main__; running the package module
    # instead keeps a single gin configurable named `train` (gin files import the module).
    from prottrans_jax.train import main as _main

    sys.exit(_main())

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from prottrans_jax import checkpoints, distributed, optimizers, partitioning  # noqa: E402
from prottrans_jax.data import dataset  # noqa: E402
from prottrans_jax.models.encoder_decoder import EncoderDecoderModel  # noqa: E402
from prottrans_jax.trainer import Trainer, peak_flops_per_device, summarize  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(ValueError):
    """A run configuration that cannot work; reported as one line, exit code 1."""


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _write_text(path: str, text: str) -> None:
    if jax.process_index() == 0:
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path, "w") as handle:
            handle.write(text)


# ------------------------------------------------------------------------------ input


def train_batches(task_name: str, feature_lengths: Mapping[str, int], batch_size: int,
                  seed: int, shard_info: seqio.ShardInfo | None = None,
                  start: int = 0, pack: bool = True):
    """The training stream from batch `start` on: deterministic for a seed, endless.

    Resuming skips the batches already consumed; tf.data still reads them (cheap next to
    training: the skipped batches are never converted to numpy nor sent to devices).
    """
    batches = dataset.get_batches(task_name, "train", feature_lengths, batch_size,
                                  shuffle=True, seed=seed, pack=pack, num_epochs=None,
                                  shard_info=shard_info)
    return batches.skip(start).as_numpy_iterator()


def eval_batches(task_name: str, split: str, feature_lengths: Mapping[str, int],
                 batch_size: int, num_batches: int | None, shard_info=None, pack: bool = True):
    """The evaluation split, in order: the first `num_batches` batches, or all of it."""
    batches = dataset.get_batches(task_name, split, feature_lengths, batch_size, shuffle=False,
                                  seed=0, pack=pack, num_epochs=None if num_batches else 1,
                                  shard_info=shard_info)
    if num_batches:
        batches = batches.take(num_batches)
    return batches.as_numpy_iterator()


# ------------------------------------------------------------------------------ train


@gin.configurable(denylist=["partitioner"])
def train(*,
          model_dir: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          mixture_or_task_module: str | None = "tasks",
          batch_size: int = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] | None = None,
          inputs_length: int | None = None,
          targets_length: int | None = None,
          model: Any = None,
          partitioner: partitioning.Partitioner | None = None,
          seed: int = 0,
          num_microbatches: int = 1,
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
          hbm_budget_gib: float | None = None) -> dict:
    """Trains `model` on a seqio task; returns a summary (eval history, final step, flags).

    batch_size is global (all hosts); task_feature_lengths wins over inputs_length /
    targets_length (then the task decides the targets length). eval_interval=None turns
    evaluation off; otherwise the validation split is evaluated before training (fresh
    runs), every eval_interval steps and at the end. peak_flops is the per-device peak
    FLOP/s for MFU: "auto" looks the device kind up, None disables MFU. dry_run builds the
    mesh and the abstract state only, prints the per-device memory of parameters and
    optimizer state, and refuses configs above hbm_budget_gib.
    """
    if mixture_or_task_module:
        try:
            with gin.unlock_config():  # the module may define configurables (T5X does this too)
                importlib.import_module(mixture_or_task_module)
        except ModuleNotFoundError as error:
            raise ConfigError(f"MIXTURE_OR_TASK_MODULE {mixture_or_task_module!r} cannot be "
                              f"imported: {error}") from None
    task = dataset.get_task(mixture_or_task_name)
    if task_feature_lengths is None:
        if inputs_length is None:
            raise ConfigError("set TASK_FEATURE_LENGTHS or INPUTS_LENGTH")
        task_feature_lengths = dataset.task_feature_lengths(task, inputs_length, targets_length)
    task_feature_lengths = dict(task_feature_lengths)
    model = (model or EncoderDecoderModel()).for_task(mixture_or_task_name)
    model.matmul_params  # noqa: B018  (cached for the FLOPs count, computed without a mesh)
    partitioner = partitioner or partitioning.Partitioner()
    optimizer, schedule = optimizers.make_optimizer()
    tf.config.set_visible_devices([], "GPU")  # the input pipeline must not take accelerator memory

    shard_index, num_shards = partitioner.input_shard()
    if batch_size % num_shards or batch_size % partitioner.mesh.shape["data"]:
        raise ConfigError(f"batch_size {batch_size} must divide by the {num_shards} input "
                          f"shards and the data axis {partitioner.mesh.shape['data']}")
    host_batch = batch_size // num_shards
    shard_info = seqio.ShardInfo(shard_index, num_shards)

    # Fail fast on a missing corpus, before anything is compiled.
    dataset.get_batches(mixture_or_task_name, "train", task_feature_lengths, host_batch,
                        seed=seed, pack=pack, num_epochs=1, shard_info=shard_info)
    trainer = Trainer(model, optimizer, partitioner, num_microbatches, seed)
    with partitioner.context():
        boxed = jax.eval_shape(model.init_params, jax.random.key(seed))
    table = partitioning.sharding_table(boxed, trainer.checkpoint_shardings["params"])
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract["params"]))
    param_bytes = partitioning.per_device_memory(trainer.abstract["params"],
                                                 trainer.checkpoint_shardings["params"])
    opt_bytes = partitioning.per_device_memory(trainer.abstract["opt_state"],
                                               trainer.checkpoint_shardings["opt_state"])
    gib = 2 ** 30
    _log(f"model: {num_params:,} parameters; mesh {dict(partitioner.mesh.shape)}; per device: "
         f"params {param_bytes / gib:.3f} GiB + optimizer {opt_bytes / gib:.3f} GiB "
         f"(activations not included)")
    if hbm_budget_gib is not None and (param_bytes + opt_bytes) > hbm_budget_gib * gib:
        raise ConfigError(f"parameters + optimizer state need {(param_bytes + opt_bytes) / gib:.2f} "
                          f"GiB per device, over the {hbm_budget_gib} GiB budget: use more devices "
                          "or a sharding rule set that splits more (gin/partitioning/)")
    if dry_run:
        _log(table)
        return {"dry_run": True, "num_params": num_params,
                "bytes_per_device": param_bytes + opt_bytes}

    model_dir = model_dir if "://" in model_dir else os.path.abspath(model_dir)
    _write_text(os.path.join(model_dir, "config.gin"), gin.config_str())
    _write_text(os.path.join(model_dir, "shardings.txt"), table)

    checkpointer = checkpoints.Checkpointer(model_dir, checkpoint_interval, keep_checkpoints,
                                            async_checkpointing)
    try:
        return _train_loop(
            trainer=trainer, checkpointer=checkpointer, model=model, partitioner=partitioner,
            schedule=schedule, model_dir=model_dir, train_steps=train_steps,
            task_name=mixture_or_task_name, feature_lengths=task_feature_lengths,
            host_batch=host_batch, shard_info=shard_info, seed=seed, pack=pack,
            log_every=log_every, eval_interval=eval_interval, eval_steps=eval_steps,
            eval_split=eval_split, checkpoint_interval=checkpoint_interval,
            peak_flops=peak_flops)
    finally:
        checkpointer.close()


def _restore_or_init(trainer: Trainer, checkpointer: checkpoints.Checkpointer, seed: int):
    step = checkpointer.latest_step()
    if step is None:
        return trainer.init_state(), 0, True
    state, position = checkpointer.restore(trainer.abstract, step)
    if position.get("seed") != seed:
        raise ConfigError(f"{checkpointer.directory} was trained with seed {position.get('seed')}, "
                          f"not {seed}: resume with that seed or use another MODEL_DIR")
    _log(f"resuming from step {step} ({position['batches_consumed']} batches consumed)")
    return trainer.with_halted(state), int(position["batches_consumed"]), False


def _train_loop(*, trainer: Trainer, checkpointer: checkpoints.Checkpointer, model, partitioner,
                schedule, model_dir: str, train_steps: int, task_name: str,
                feature_lengths: dict, host_batch: int, shard_info, seed: int, pack: bool,
                log_every: int, eval_interval: int | None, eval_steps: int | None,
                eval_split: str, checkpoint_interval: int, peak_flops) -> dict:
    """Restore or init, then step / log / evaluate / checkpoint until done or stopped."""
    state, start, fresh = _restore_or_init(trainer, checkpointer, seed)
    batches = train_batches(task_name, feature_lengths, host_batch, seed, shard_info, start, pack)
    if peak_flops == "auto":
        peak_flops = peak_flops_per_device()
    writers = {}
    if jax.process_index() == 0:
        writers = {name: tf.summary.create_file_writer(os.path.join(model_dir, name))
                   for name in ("train", "eval")}

    def scalars(kind, step, values):
        if kind in writers:
            with writers[kind].as_default(step=step):
                for name, value in values.items():
                    tf.summary.scalar(name, value)
            writers[kind].flush()

    def evaluate(step):
        eval_iterator = lambda: (partitioner.host_local_batch_to_global(b)  # noqa: E731
                                 for b in eval_batches(task_name, eval_split, feature_lengths,
                                                       host_batch, eval_steps, shard_info, pack))
        result = trainer.evaluate(state["params"], eval_iterator)
        scalars("eval", step, {k: result[k] for k in ("loss", "accuracy", "masked_accuracy",
                                                   "masked_loss")})
        _log(f"eval  step {step}: loss {result['loss']:.4f}  accuracy {result['accuracy']:.4f}  "
             f"masked accuracy {result['masked_accuracy']:.4f}  "
             f"masked loss {result['masked_loss']:.4f}  "
             f"({int(result['masked_tokens'])} masked tokens)")
        history.append({"step": step, **result})

    def position(step):
        return {"batches_consumed": int(step), "seed": seed}

    history: list[dict] = []
    step, flops_per_step = start, None
    outcome = {"halted": False, "preempted": False}
    metrics = trainer.new_metrics()
    with checkpoints.PreemptionWatcher() as watcher, partitioner.context():
        if fresh and eval_interval:
            evaluate(0)
        last_time, last_step = time.perf_counter(), step
        while step < train_steps:
            batch = partitioner.host_local_batch_to_global(next(batches))
            if flops_per_step is None:
                flops_per_step = model.flops_per_batch(batch)
            state, metrics = trainer.train_step(state, batch, metrics)
            step += 1
            if step == start + 1:
                _write_text(os.path.join(model_dir, "operative_config.gin"),
                            gin.operative_config_str())
                scalars("train", step, {"timing/compile_seconds": trainer.compile_seconds})
                _log(f"first step (compile + run) took {trainer.compile_seconds:.1f} s")
                last_time, last_step = time.perf_counter(), step
            if step % log_every == 0 or step == train_steps:
                values, metrics = jax.device_get(metrics), trainer.new_metrics()
                if trainer.halted(state):
                    outcome["halted"] = True
                    break
                now = time.perf_counter()
                summary = summarize(values)
                steps_timed = max(step - last_step, 1)
                seconds = max(now - last_time, 1e-9) if step > last_step else None
                line = {"loss": summary["loss"], "accuracy": summary["accuracy"],
                        "masked_accuracy": summary["masked_accuracy"],
                        "z_loss": summary["z_loss"], "grad_norm": summary.get("grad_norm", 0.0),
                        "learning_rate": float(schedule(step - 1))}
                if seconds is not None:
                    # Sums cover every step since the last fetch; time only the timed ones.
                    fraction = steps_timed / max(summary["steps"], 1)
                    line["timing/step_seconds"] = seconds / steps_timed
                    line["timing/target_tokens_per_second"] = summary["target_tokens"] * fraction / seconds
                    line["timing/sequences_per_second"] = summary["sequences"] * fraction / seconds
                    if peak_flops:
                        line["timing/mfu"] = (flops_per_step * steps_timed / seconds
                                              / (jax.device_count() * peak_flops))
                scalars("train", step, line)
                _log(_console_line(step, train_steps, line))
                last_time, last_step = now, step
            # A save is a sync point anyway: never save a halted (stale) state under a new step.
            if step % checkpoint_interval == 0 and trainer.halted(state):
                outcome["halted"] = True
                break
            checkpointer.maybe_save(step, trainer.checkpointed(state), position(step))
            if eval_interval and step % eval_interval == 0 and step < train_steps:
                evaluate(step)
            if watcher.should_stop(step):
                outcome["preempted"] = True
                break

        if outcome["halted"]:
            good = int(jax.device_get(state["step"]))
            checkpointer.save_now(good, trainer.checkpointed(state), position(good))
            message = (f"non-finite loss or gradient at step {good + 1}: training stopped; the "
                       f"last good state (step {good}) is saved in {model_dir}")
            _log(f"error: {message}")
            return {**outcome, "step": good, "eval": history, "message": message,
                    "state": trainer.checkpointed(state)}
        checkpointer.save_now(step, trainer.checkpointed(state), position(step))
        if outcome["preempted"]:
            _log(f"stop requested: checkpoint saved at step {step}; restart to resume")
        elif eval_interval:
            evaluate(step)
    return {**outcome, "step": step, "eval": history, "state": trainer.checkpointed(state),
            "feature_lengths": feature_lengths, "host_batch": host_batch}


def _console_line(step: int, total: int, m: Mapping[str, float]) -> str:
    line = (f"step {step}/{total}  loss {m['loss']:.4f}  accuracy {m['accuracy']:.4f}  "
            f"masked {m['masked_accuracy']:.4f}  lr {m['learning_rate']:.2e}  "
            f"grad norm {m['grad_norm']:.3f}")
    if "timing/step_seconds" in m:
        line += (f"  {m['timing/target_tokens_per_second']:,.0f} tokens/s  "
                 f"{m['timing/sequences_per_second']:,.1f} seq/s  "
                 f"{m['timing/step_seconds']:.3f} s/step")
    if "timing/mfu" in m:
        line += f"  MFU {100 * m['timing/mfu']:.1f}%"
    return line


# ------------------------------------------------------------------------------ command line


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
    """argparse flags plus T5X's `--gin.KEY=VALUE` shorthand (turned into bindings)."""
    parser = argparse.ArgumentParser(prog="python -m prottrans_jax.train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", action="append", default=[])
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--gin_search_paths", action="append", default=[])
    parser.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    distributed.add_flags(parser)
    rest = []
    args, unknown = parser.parse_known_args(list(argv))
    for flag in unknown:
        if flag.startswith("--gin.") and "=" in flag:
            key, value = flag[len("--gin."):].split("=", 1)
            args.gin_bindings.append(f"{key} = {value}")
        else:
            rest.append(flag)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    if not args.gin_file:
        parser.error("give at least one --gin_file")
    return args


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


EXPECTED_ERRORS = (ValueError, FileNotFoundError, ModuleNotFoundError, IOError,
                   checkpoints.CheckpointCorruptError)


def check_override_macros(bindings: Sequence[str]) -> None:
    """Refuses a `--gin.NAME=...` macro that no gin file reads (gin itself accepts any name).

    Without this, a misspelt `--gin.TRAIN_STEPZ=10` would silently train for the file's
    TRAIN_STEPS. Keys with a dot bind a configurable's parameter and gin checks those itself.
    """
    macro = gin.config.get_configurable(gin.config.macro)
    # gin has no public accessor for the parsed bindings; _CONFIG is stable since gin 0.1.
    used = {ref.config_key[0] for ref in gin.config.iterate_references(gin.config._CONFIG, to=macro)}
    for binding in bindings:
        name = binding.split("=", 1)[0].strip()
        if name and "." not in name and name not in used:
            close = difflib.get_close_matches(name, sorted(used), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(f"unknown macro in binding '{binding.strip()}': no gin file "
                             f"reads %{name}{hint}")


def run(argv: Sequence[str]) -> tuple[int, dict]:
    """Parses gin and runs `train`: (exit code: 0 ok, 1 bad input or halted; train's result)."""
    args = parse_flags(argv)
    distributed.initialize_from_flags(args)  # before any JAX computation
    gin.clear_config()
    for path in [REPO_ROOT, os.getcwd()] + [p for arg in args.gin_search_paths
                                           for p in arg.split(",") if p]:
        gin.add_config_file_search_path(path)
    try:
        gin.parse_config_files_and_bindings(args.gin_file, args.gin_bindings)
        check_override_macros(args.gin_bindings)
    except (ValueError, IOError, SyntaxError, ImportError) as error:
        if args.debug:
            raise
        print(f"error: gin: {_one_line(error)}", file=sys.stderr)
        return 1, {}
    try:
        result = train()
    except EXPECTED_ERRORS as error:
        if args.debug:
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1, {}
    if result.get("halted"):
        print(f"error: {result['message']}", file=sys.stderr)
        return 1, result
    return 0, result


def main(argv: Sequence[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)[0]
