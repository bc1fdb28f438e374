"""Checkpoint round trips, retention, resume, error messages and preemption."""

import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from prottrans_jax import checkpoints, optimizers, partitioning
from tests.conftest import assert_trees_equal


class TwoLayer(nn.Module):
    hidden: int = 32

    @nn.compact
    def __call__(self, x):
        dense = lambda features, axes: nn.Dense(  # noqa: E731
            features, kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), axes))
        hidden = nn.relu(dense(self.hidden, ("embed", "mlp"))(x))  # Dense_0
        return dense(16, ("mlp", "embed"))(hidden)  # Dense_1


def make_state(partitioner, hidden=32, seed=0):
    """A sharded {"step", "params", "opt_state"} with factored Adafactor statistics."""
    optimizer = optimizers.adafactor(0.01, min_dim_size_to_factor=8)
    init = lambda rng: TwoLayer(hidden).init(rng, jnp.zeros((2, 16)))["params"]  # noqa: E731
    state, _ = partitioner.init_train_state(init, optimizer, jax.random.key(seed))
    abstract, _ = partitioner.abstract_train_state(init, optimizer, jax.random.key(seed))
    return state, abstract


@pytest.fixture(scope="module")
def fsdp():
    return partitioning.Partitioner(mesh_shape=(4, 2),
                                    logical_axis_rules=partitioning.FSDP_TENSOR_PARALLEL)


def one_line(error):
    return "\n" not in str(error.value) and len(str(error.value)) < 600


def test_round_trip_is_bit_exact_and_lands_in_the_target_shardings(tmp_path, fsdp):
    state, abstract = make_state(fsdp)
    state["step"] = jnp.asarray(7, jnp.int32)
    position = {"batches_consumed": 7, "seed": 42}
    with checkpoints.Checkpointer(tmp_path / "model") as checkpointer:
        assert checkpointer.save_now(7, state, position)
    # A new process would build a new manager on the same directory.
    with checkpointer_for(tmp_path / "model") as checkpointer:
        restored, restored_position = checkpointer.restore(abstract)
    assert restored_position == position
    assert_trees_equal(restored, state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract)):
        assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
    kernel = restored["params"]["Dense_0"]["kernel"]
    assert kernel.sharding.spec == P("data", "model")

    # Restoring into another layout (data parallel on (8, 1)) reshards on the way in.
    other = partitioning.Partitioner(mesh_shape=(8, 1))
    _, replicated_abstract = make_state(other)
    with checkpointer_for(tmp_path / "model") as checkpointer:
        resharded, _ = checkpointer.restore(replicated_abstract)
    assert resharded["params"]["Dense_0"]["kernel"].sharding.is_fully_replicated
    assert_trees_equal(resharded, state)


def checkpointer_for(directory, **kwargs):
    return checkpoints.Checkpointer(directory, **kwargs)


def test_periodic_saves_keep_the_last_n_and_resume_picks_the_latest(tmp_path, fsdp):
    state, abstract = make_state(fsdp)
    with checkpointer_for(tmp_path, save_interval_steps=5, max_to_keep=2) as checkpointer:
        saved = []
        for step in range(1, 21):
            state["step"] = jnp.asarray(step, jnp.int32)
            if checkpointer.maybe_save(step, state, {"batches_consumed": step}):
                saved.append(step)
        assert saved == [5, 10, 15, 20]
        checkpointer.wait_until_finished()
        assert checkpointer.all_steps() == [15, 20]
        # An off-interval save for SIGTERM / NaN, then the final one; repeats are no-ops.
        state["step"] = jnp.asarray(23, jnp.int32)
        assert checkpointer.save_now(23, state, {"batches_consumed": 23})
        assert not checkpointer.save_now(23, state, {"batches_consumed": 23})
    with checkpointer_for(tmp_path, save_interval_steps=5, max_to_keep=2) as checkpointer:
        assert checkpointer.latest_step() == 23
        restored, position = checkpointer.restore(abstract)
    assert int(restored["step"]) == 23 and position == {"batches_consumed": 23}
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [20, 23]


def test_async_save_is_unaffected_by_later_buffer_donation(tmp_path, fsdp):
    state, abstract = make_state(fsdp)
    want = jax.device_get(state)
    checkpointer = checkpointer_for(tmp_path, async_save=True)
    checkpointer.save_now(1, state, {"batches_consumed": 1}, wait=False)
    # The next train step donates (reuses) the saved buffers while the write runs.
    overwrite = jax.jit(lambda s: jax.tree.map(lambda x: x * 0 + 3, s), donate_argnums=0)
    jax.block_until_ready(overwrite(state))
    restored, _ = checkpointer.restore(abstract)
    checkpointer.close()
    assert_trees_equal(restored, want)


def test_mismatched_model_gives_a_one_line_error_naming_the_key(tmp_path, fsdp):
    state, _ = make_state(fsdp, hidden=32)
    with checkpointer_for(tmp_path) as checkpointer:
        checkpointer.save_now(3, state, {"batches_consumed": 3})
    _, other_abstract = make_state(fsdp, hidden=64)
    with checkpointer_for(tmp_path) as checkpointer:
        with pytest.raises(checkpoints.CheckpointMismatchError) as error:
            checkpointer.restore(other_abstract)
    message = str(error.value)
    assert one_line(error)
    assert "params/Dense_0/bias" in message or "params/Dense_0/kernel" in message
    assert "(32,)" in message or "(16, 32)" in message
    assert "(64,)" in message or "(16, 64)" in message
    assert str(tmp_path / "3") in message


def test_corrupt_checkpoint_gives_a_one_line_error_naming_the_step(tmp_path, fsdp):
    state, abstract = make_state(fsdp)

    def damage(step_dir):  # the array data, keeping the directory structure
        data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
        assert data_files
        for path in data_files:
            path.write_bytes(b"not a checkpoint")

    def restore_error(directory):
        with checkpointer_for(directory) as checkpointer:
            with pytest.raises(checkpoints.CheckpointCorruptError) as error:
                checkpointer.restore(abstract)
        assert one_line(error) and str(directory / "4") in str(error.value)
        return str(error.value)

    with checkpointer_for(tmp_path) as checkpointer:
        checkpointer.save_now(2, state, {"batches_consumed": 2})
        checkpointer.save_now(4, state, {"batches_consumed": 4})
    damage(tmp_path / "4")
    # It says which step to go on from, and how (it once ended in a TensorStore repr alone).
    assert (f"the previous checkpoint, step 2, is finished: move {tmp_path / '4'} out of MODEL_DIR "
            "to resume from it") in restore_error(tmp_path)

    # A step directory whose state item vanished entirely.
    for path in sorted((tmp_path / "4" / "state").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    restore_error(tmp_path)

    alone = tmp_path / "alone"  # the only checkpoint is the damaged one
    with checkpointer_for(alone) as checkpointer:
        checkpointer.save_now(4, state, {"batches_consumed": 4})
    damage(alone / "4")
    assert "no earlier checkpoint is kept: start again in a new MODEL_DIR" in restore_error(alone)


def test_restore_without_checkpoint_and_bad_input_position(tmp_path, fsdp):
    state, abstract = make_state(fsdp)
    with checkpointer_for(tmp_path) as checkpointer:
        with pytest.raises(FileNotFoundError, match="no checkpoint in"):
            checkpointer.restore(abstract)
        with pytest.raises(TypeError, match="JSON-serialisable"):
            checkpointer.save_now(1, state, {"iterator": object()})


def test_preemption_watcher_turns_sigterm_into_a_stop_at_the_next_step():
    previous = signal.getsignal(signal.SIGTERM)
    with checkpoints.PreemptionWatcher() as watcher:
        assert not watcher.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.should_stop(2)
    assert signal.getsignal(signal.SIGTERM) is previous
