"""ProtTXL through the trainer: the carried memory sharded along the batch, through
microbatches, from an empty memory at every evaluation, saved and restored so that a resumed
run continues bit for bit; the train command on real proteins, and embedding its MODEL_DIR."""

import dataclasses
import json

import h5py
import jax
import numpy as np
import optax
import pytest

from prottrans_jax import checkpoints, export_hf, partitioning
from prottrans_jax import train as train_lib
from prottrans_jax.models.base import summarize
from prottrans_jax.models.transfo_xl import TransfoXL, TransfoXLCausalLMModel, TransfoXLConfig
from prottrans_jax.partitioning import unbox_shapes
from prottrans_jax.trainer import Trainer
from prottrans_jax.vocab import prot_txl_vocabulary
from tests.conftest import ONE_DEVICE, assert_trees_equal, run_training

TINY = TransfoXLConfig(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, head_dim=8, intermediate_size=64,
                       dropout_prob=0.1, attention_dropout_prob=0.0, mem_len=8, dtype="float32")
ROWS, SEG = 4, 8


def stream_batches(count, seed=0):
    """`count` consecutive segments of ROWS random streams, as data/stream.py lays them out."""
    tokens = np.random.default_rng(seed).integers(2, 28, (ROWS, count * SEG + 1)).astype(np.int32)
    return [{"decoder_input_tokens": tokens[:, i:i + SEG], "decoder_target_tokens": tokens[:, i + 1:i + SEG + 1],
             "decoder_loss_weights": np.ones((ROWS, SEG), np.int32),
             "decoder_masked_weights": (tokens[:, i + 1:i + SEG + 1] != 2).astype(np.int32)}
            for i in range(0, count * SEG, SEG)]


def run_steps(partitioner, model, batches, num_microbatches=1, params=None):
    """(params, carry, summarised metrics) after one train step per batch (SGD at lr 1)."""
    trainer = Trainer(model, optax.sgd(1.0), partitioner, num_microbatches, seed=0, batch_size=ROWS)
    state = trainer.init_state()
    if params is not None:
        state = trainer.with_halted(jax.device_put(
            {"step": np.zeros((), np.int32), "params": params, "opt_state": trainer.optimizer.init(params)},
            trainer.checkpoint_shardings))
    with partitioner.context():
        metrics = None
        for batch in batches:
            device_batch = partitioner.host_local_batch_to_global(batch)
            metrics = metrics or trainer.new_metrics(device_batch)
            state, metrics = trainer.train_step(state, device_batch, metrics)
    return state, jax.device_get(state["params"]), jax.device_get(state["carry"]), summarize(metrics)


def assert_close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), a, b)


@pytest.fixture(scope="module")
def single_device_run():
    model = TransfoXLCausalLMModel(dataclasses.replace(TINY, dropout_prob=0.0))
    single = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
    params = jax.device_get(model.init_params(jax.random.key(0)))
    params = unbox_shapes(params)
    return model, params, run_steps(single, model, stream_batches(3), params=params)


def test_the_carry_goes_through_microbatches_with_its_rows(single_device_run):
    """Three steps (the later two attend to the carried memory) in 2 microbatches of 2 rows
    equal the unmicrobatched steps: parameters, metrics and the carry each row leaves."""
    model, params, (_, full_params, full_carry, full_metrics) = single_device_run
    single = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
    _, micro_params, micro_carry, micro_metrics = run_steps(single, model, stream_batches(3), 2, params)
    assert full_carry["valid"].all() and np.abs(full_carry["memory"]).max() > 0.1
    assert_close(micro_carry, full_carry)
    assert_close(micro_params, full_params)
    np.testing.assert_allclose(micro_metrics["loss"], full_metrics["loss"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rule_set", sorted(partitioning.RULE_SETS))
def test_the_carry_is_sharded_along_the_batch_and_the_step_equals_one_device(single_device_run, rule_set):
    """Three steps on a (4, 2) mesh under each rule set equal one device's: parameters,
    metrics, and the memory, which stays sharded along the batch."""
    model, params, (_, full_params, full_carry, full_metrics) = single_device_run
    mesh = partitioning.Partitioner(mesh_shape=(4, 2), rule_set=rule_set)
    state, got_params, got_carry, got_metrics = run_steps(mesh, model, stream_batches(3), params=params)
    assert tuple(state["carry"]["memory"].sharding.spec)[0] == "data"
    assert tuple(state["carry"]["valid"].sharding.spec)[0] == "data"
    assert_close(got_carry, full_carry)
    assert_close(got_params, full_params)
    np.testing.assert_allclose(got_metrics["loss"], full_metrics["loss"], rtol=1e-5, atol=1e-6)


def test_an_evaluation_starts_from_an_empty_memory(single_device_run):
    """Whatever memory training carries, an evaluation starts empty and carries its own over
    its batches in order: its first batch scores as a segment with no memory at all."""
    model, params, _ = single_device_run
    single = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
    trainer = Trainer(model, optax.sgd(1.0), single, batch_size=ROWS)
    batches = stream_batches(3, seed=4)
    with single.context():
        result = trainer.evaluate(params, lambda: iter(batches))
        assert trainer.evaluate(params, lambda: iter(batches)) == result  # no state survives a run
        first = trainer.evaluate(params, lambda: iter(batches[:1]))
    alone = summarize(model.loss_and_metrics(params, batches[0], None, False, carry=None)[1])
    np.testing.assert_allclose(first["loss"], alone["loss"], rtol=1e-6, atol=1e-6)
    carry, total = unbox_shapes(model.init_carry(ROWS)), 0.0
    for batch in batches:
        loss_sum, _, carry = model.loss_and_metrics(params, batch, None, False, carry)
        total += float(loss_sum)
    np.testing.assert_allclose(result["loss"], total / (3 * ROWS * SEG), rtol=1e-5, atol=1e-6)


def test_without_memory_the_model_trains_with_no_carry():
    """mem_len 0: no carry in the state, and the step takes the model's (loss, metrics)."""
    model = TransfoXLCausalLMModel(dataclasses.replace(TINY, mem_len=0))
    single = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
    trainer = Trainer(model, optax.sgd(0.1), single)
    state = trainer.init_state()
    assert "carry" not in state
    with single.context():
        batch = single.host_local_batch_to_global(stream_batches(1)[0])
        state, metrics = trainer.train_step(state, batch, trainer.new_metrics(batch))
    assert int(state["step"]) == 1 and np.isfinite(summarize(metrics)["loss"])


# ------------------------------------------------------------------ the train command

GIN = "--gin_file=gin/experiments/prot_txl_tiny_sample.gin"
SMALL = ["--gin.TransfoXLConfig.hidden_size=32", "--gin.TransfoXLConfig.num_heads=4",
         "--gin.TransfoXLConfig.head_dim=8", "--gin.TransfoXLConfig.intermediate_size=64",
         "--gin.TransfoXLConfig.mem_len=16", "--gin.TransfoXLConfig.dropout_prob=0.1"]


def flags(model_dir, steps, *extra):
    return [GIN, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
            "--gin.MIXTURE_OR_TASK_NAME='short_causal_lm'", "--gin.BATCH_SIZE=4", "--gin.INPUTS_LENGTH=16",
            "--gin.train.eval_split='train'", "--gin.train.eval_interval=None", "--gin.train.log_every=2",
            "--gin.train.checkpoint_interval=100", *SMALL, *ONE_DEVICE, *extra]


@pytest.fixture(scope="module")
def straight_txl(corpus, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("txl_straight")
    return model_dir, run_training(flags(model_dir, 6))


def test_stop_and_resume_with_the_carried_memory_equals_an_uninterrupted_run(straight_txl, tmp_path, monkeypatch):
    """6 steps = 3 steps, a preemption (checkpoint with the memory), a restart and 3 more, bit
    for bit: parameters, optimizer state and the memory the rows carry."""
    model_dir, straight = straight_txl
    assert np.asarray(straight["carry"]["valid"]).all()
    with monkeypatch.context() as patch:
        patch.setattr(checkpoints.PreemptionWatcher, "should_stop", lambda self, step: step == 3)
        first = run_training(flags(tmp_path, 6))
    assert first["preempted"] and (tmp_path / "3" / checkpoints.CARRY).is_dir()
    resumed = run_training(flags(tmp_path, 6))
    assert resumed["step"] == 6
    assert_trees_equal(resumed["state"], straight["state"])
    assert_trees_equal(resumed["carry"], straight["carry"])
    stored = json.loads((model_dir / "model.json").read_text())
    assert stored["family"] == "prot_txl" and stored["vocabulary"][:3] == ["<pad>", "<unk>", "<eos>"]


def test_a_new_phase_starts_with_an_empty_memory(straight_txl, tmp_path):
    import shutil

    shutil.copytree(straight_txl[0], tmp_path / "m")
    result = run_training(flags(tmp_path / "m", 7, "--gin.train.phase=2", "--gin.BATCH_SIZE=8"))
    assert result["step"] == 7 and np.asarray(result["carry"]["memory"]).shape[0] == 8


def test_embedding_a_prot_txl_model_dir_reads_each_protein_after_the_separator(straight_txl, tmp_path):
    from prottrans_jax import embed, model_dir as model_dir_lib

    model_dir, _ = straight_txl
    sequences = {"short": "MKTAYIAKQR", "long": "ACDEFGHIKLMNPQRSTVWY" * 4}  # 80 > mem_len 16: segments
    fasta = tmp_path / "p.fasta"
    fasta.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in sequences.items()))
    out = str(tmp_path / "txl.h5")
    summary = embed.embed_fasta_to_h5(str(fasta), out, model_dir=str(model_dir), per_residue=True)
    assert summary["family"] == "prot_txl" and summary["embedded"] == 2
    stored = model_dir_lib.read_model(str(model_dir), dtype="float32", param_dtype="float32")
    params, _ = model_dir_lib.restore_params(str(model_dir), stored)
    vocabulary = prot_txl_vocabulary()
    with h5py.File(out) as f:
        for name, sequence in sequences.items():
            tokens = np.array([[vocabulary.eos_id, *vocabulary.encode(sequence)]], np.int32)
            # One causal pass with a memory that covers the whole protein: what segments of
            # 16 with a 16-token memory compute only for the first 33 tokens.
            config = dataclasses.replace(stored.config, mem_len=0)
            expected, _ = TransfoXL(config).apply({"params": params}, tokens, method=TransfoXL.encode)
            expected = np.asarray(expected)[0, 1:]
            assert f[name].shape == (len(sequence), 32)
            covered = min(len(sequence), 2 * 16 - 1)
            np.testing.assert_allclose(f[name][:covered], expected[:covered], rtol=1e-5, atol=1e-5, err_msg=name)


def test_prot_txl_has_no_hugging_face_export_nor_import(straight_txl, tmp_path, capsys):
    model_dir, _ = straight_txl
    code = export_hf.main(["--model_dir", str(model_dir), "--output", str(tmp_path / "hf")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "prot_txl family has no Hugging Face form" in err[0]
    from prottrans_jax import embed

    hf_dir = tmp_path / "transfo_xl"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text('{"model_type": "transfo-xl", "d_model": 32}')
    (tmp_path / "p.fa").write_text(">p\nMKTAYIAK\n")
    code = embed.main(["--fasta", str(tmp_path / "p.fa"), "--output", str(tmp_path / "o.h5"),
                       "--hf_model", str(hf_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "model_type 'transfo-xl' is not a family this project reads" in err[0]


def test_the_paper_recipe_dry_runs_with_its_carried_memory(corpus, tmp_path, capsys):
    """gin/experiments/prot_txl_bfd.gin at its size (no weights allocated): 562M parameters,
    and the memory of 44,928 rows x 32 layers x 512 x 1024 in bfloat16 counted as state."""
    code, result = train_lib.run(["--gin_file=gin/experiments/prot_txl_bfd.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                                  "--gin.MIXTURE_OR_TASK_NAME='short_causal_lm'", "--gin.train.dry_run=True",
                                  *ONE_DEVICE])
    assert code == 0 and result["num_params"] == 562_479_136
    carry = 44_928 * 32 * 512 * 1024 * 2 + 44_928 * 512  # memory (bfloat16) + validity flags
    assert result["bytes_per_device"] >= carry and "+ carried memory 1404" in capsys.readouterr().out
