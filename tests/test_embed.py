"""prottrans_jax.embed: equality with transformers' T5EncoderModel through the CLI, batching,
resume after an interruption, MODEL_DIR input, and one-line errors."""

import dataclasses
import os

import h5py
import jax
import numpy as np
import pytest
import torch
import transformers

from prottrans_jax import inference
from tests.conftest import numpy_state_dict, random_hf_model, save_hf_dir, write_model_dir

MAX_LENGTH = 40  # proteins above it are embedded alone
MAX_TOKENS = 160  # several batches, and partial last batches, for the FASTA below
RNG = np.random.default_rng(0)
LENGTHS = [3, 7, 12, 12, 19, 25, 30, 33, 38, 40, 45, 61]
SEQUENCES = {f"prot{i}|{n}": "".join(RNG.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)) for i, n in enumerate(LENGTHS)}
SEQUENCES["rare/lower"] = "mkuzobXaq"  # lower case and U, Z, O, B: read as X, as ProtTrans does


def write_fasta(path, sequences) -> str:
    with open(path, "w") as f:
        for protein_id, sequence in sequences.items():
            f.write(f">{protein_id} some description\n{sequence[:20]}\n{sequence[20:]}\n")
    return str(path)


def read_h5(path) -> dict:
    with h5py.File(path, "r") as f:
        return {name: (f[name][()], dict(f[name].attrs)) for name in f}


@pytest.fixture(scope="module")
def embed():
    """Imported here, not at collection: tests/downstream/test_features.py replaces the module
    in sys.modules, which `from prottrans_jax import embed` ignores once the package has the
    attribute (see the note to the lead)."""
    from prottrans_jax import embed as module

    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    model = random_hf_model(seed=1)
    hf_dir = save_hf_dir(model, root / "hf")
    fasta = write_fasta(root / "proteins.fasta", SEQUENCES)
    return root, model, hf_dir, fasta


@pytest.fixture(scope="module")
def reference(embed, setup):
    """One uninterrupted CLI run, per residue and per protein (two files)."""
    root, _, hf_dir, fasta = setup
    out = str(root / "reference.h5")
    code = embed.main(["--fasta", fasta, "--output", out, "--hf_model", hf_dir, "--per_residue", "--per_protein",
                       "--max_tokens", str(MAX_TOKENS), "--max_length", str(MAX_LENGTH), "--no_progress"])
    assert code == 0
    return out


def transformers_embedding(model, hf_dir, sequence):
    """ProtTrans' recipe: X for rare residues, spaces, T5Tokenizer (adds </s>), the encoder's
    last hidden state without the </s> row. One protein at a time: no padding at all."""
    tokenizer = transformers.T5Tokenizer.from_pretrained(hf_dir)
    text = " ".join(sequence.upper().translate(str.maketrans("UZOB", "XXXX")))
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.shape[1] == len(sequence) + 1
    with torch.no_grad():
        hidden = model.encoder(input_ids=ids).last_hidden_state[0].numpy()
    return hidden[: len(sequence)]


def test_cli_embeddings_equal_transformers_per_residue_and_per_protein(embed, setup, reference):
    _, model, hf_dir, _ = setup
    per_residue = read_h5(reference)
    per_protein = read_h5(embed.per_protein_path(reference))
    names = {protein_id.replace("/", "_") for protein_id in SEQUENCES}
    assert set(per_residue) == names and set(per_protein) == names
    for protein_id, sequence in SEQUENCES.items():
        name = protein_id.replace("/", "_")
        expected = transformers_embedding(model, hf_dir, sequence)
        array, attrs = per_residue[name]
        assert array.shape == (len(sequence), 32) and array.dtype == np.float32
        assert attrs["length"] == len(sequence) and attrs["original_id"] == protein_id
        # Batched with other lengths and padded here, alone and unpadded there: same values.
        np.testing.assert_allclose(array, expected, atol=1e-5, rtol=1e-5, err_msg=protein_id)
        mean, _ = per_protein[name]
        assert mean.shape == (32,)
        np.testing.assert_allclose(mean, expected.mean(axis=0), atol=1e-5, rtol=1e-5, err_msg=protein_id)
    with h5py.File(reference, "r") as f:
        assert f.attrs["dtype"] == "float32" and f.attrs["embedding"] == "per_residue"
        assert f.attrs["model"] == os.path.abspath(hf_dir) and "_incomplete" not in f
        # The two proteins above MAX_LENGTH went through chunked attention, the others dense.
        assert (f.attrs["attention"], f.attrs["attention_short"], f.attrs["attention_long"]) == ("auto", "xla", "chunked")


def test_a_protein_above_max_length_embeds_whole_with_chunked_attention_equal_to_xla(setup):
    """auto: chunked (tiles of 16 here, so 101 + </s> positions make 7 x 7 tiles) for the protein
    above max_length, xla below; the same embeddings as xla everywhere."""
    _, _, hf_dir, _ = setup
    model = inference.load_for_inference(hf_model=hf_dir, dtype="float32")
    config = dataclasses.replace(model.encoder.config, attention_block_size=16)
    model = dataclasses.replace(model, encoder=dataclasses.replace(model.encoder, config=config))
    proteins = [inference.Protein("long", "".join(RNG.choice(list("ACDEFGHIKLMNPQRSTVWY"), 101))),
                inference.Protein("short", "MKTAYIAKQRQISFVKSHFS")]

    def run(attention):
        summary = {}
        rows = {p.id: r for done in inference.embed_sequences(model, proteins, max_length=MAX_LENGTH, summary=summary,
                                                              attention=attention)
                for p, r in zip(done.batch.proteins, done.per_residue)}
        return rows, summary

    auto, summary = run("auto")
    dense, dense_summary = run("xla")
    assert summary["long_ids"] == ["long"] and summary["attention_long"] == "chunked"
    assert summary["attention_short"] == "xla" and dense_summary["attention_long"] == "xla"
    assert auto["long"].shape == (101, 32)
    for name in ("long", "short"):
        np.testing.assert_allclose(auto[name], dense[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_batch_plan_respects_the_budget_and_processes_long_proteins_alone():
    proteins = [inference.Protein(k, v.upper()) for k, v in SEQUENCES.items()]
    batches = inference.plan_batches(proteins, MAX_TOKENS, MAX_LENGTH)
    seen = [p.id for b in batches for p in b.proteins]
    assert sorted(seen) == sorted(SEQUENCES)  # every protein once
    for b in batches:
        assert all(len(p.sequence) + 1 <= b.length for p in b.proteins)
        if b.alone:
            assert len(b.proteins) == 1 and len(b.proteins[0].sequence) > MAX_LENGTH
        else:
            assert b.rows * b.length <= MAX_TOKENS and len(b.proteins) <= b.rows
    assert sum(b.alone for b in batches) == 2
    # Static shapes: a thousand proteins of every length up to 1000 need few programs.
    many = [inference.Protein(str(n), "A" * n) for n in range(1, 1001)]
    for steps, buckets in ((2, 11), (4, 21)):  # lengths 32 .. 1024
        shapes = {(b.rows, b.length) for b in inference.plan_batches(many, 4096, 1000, steps_per_octave=steps)}
        assert len({length for _, length in shapes}) == buckets and len(shapes) <= 2 * buckets
    assert [inference.bucket_length(n) for n in (1, 33, 49, 65, 97, 1001, 1025)] == [32, 48, 64, 96, 128, 1024, 1280]
    assert [inference.bucket_length(n, 4) for n in (33, 41, 65, 129, 1025, 2049)] == [40, 48, 80, 160, 1280, 2560]


def test_resume_after_an_interruption_gives_the_same_file(embed, setup, reference, tmp_path):
    root, _, hf_dir, fasta = setup
    out = str(tmp_path / "resumed.h5")
    kwargs = dict(hf_model=hf_dir, per_residue=True, per_protein=True, max_tokens=MAX_TOKENS, max_length=MAX_LENGTH)

    def crash_after_two(batches_written):
        if batches_written == 2:
            raise KeyboardInterrupt  # as a user's Ctrl-C between batches

    with pytest.raises(KeyboardInterrupt):
        embed.embed_fasta_to_h5(fasta, out, after_batch=crash_after_two, **kwargs)
    partial = read_h5(out)
    assert 0 < len(partial) < len(SEQUENCES)
    assert "prot0|3" not in partial  # the shortest protein comes last
    with h5py.File(out, "a") as f:  # and a write cut short by a crash: a dataset left in staging
        f.create_dataset("_incomplete/prot0|3", data=np.zeros((2, 32), np.float32))

    summary = embed.embed_fasta_to_h5(fasta, out, **kwargs)
    assert summary["skipped_existing"] == len(partial)
    assert summary["embedded"] == len(SEQUENCES) - len(partial)
    for a, b in ((reference, out), (embed.per_protein_path(reference), embed.per_protein_path(out))):
        expected, got = read_h5(a), read_h5(b)
        assert set(got) == set(expected)  # the staging group is gone
        for name, (array, attrs) in expected.items():
            assert got[name][1] == attrs
            np.testing.assert_allclose(got[name][0], array, atol=1e-6, rtol=1e-6, err_msg=name)
    again = embed.embed_fasta_to_h5(fasta, out, **kwargs)  # nothing left to do
    assert again["embedded"] == 0 and again["skipped_existing"] == len(SEQUENCES)


def test_model_dir_gives_the_same_embeddings_as_the_hf_directory(embed, setup, reference, tmp_path):
    _, model, _, fasta = setup
    state_dict = numpy_state_dict(model)
    write_model_dir(tmp_path / "model", state_dict)
    out = str(tmp_path / "from_model_dir.h5")
    summary = embed.embed_fasta_to_h5(fasta, out, model_dir=str(tmp_path / "model"), per_residue=False,
                                      per_protein=True, max_tokens=MAX_TOKENS, max_length=MAX_LENGTH)
    assert summary["embedded"] == len(SEQUENCES) and summary["long_processed_alone"] == 2
    assert summary["outputs"] == [out]  # per protein only: the main file holds the means
    expected = read_h5(embed.per_protein_path(reference))
    got = read_h5(out)
    for name, (array, _) in expected.items():
        np.testing.assert_allclose(got[name][0], array, atol=1e-6, rtol=1e-6, err_msg=name)
    # Resuming with other weights would mix two models in one file: refused.
    with pytest.raises(ValueError, match="model_fingerprint"):
        embed.embed_fasta_to_h5(fasta, out, hf_model=save_hf_dir(random_hf_model(seed=2), tmp_path / "other"),
                                per_residue=False, per_protein=True)


def test_invalid_records_follow_the_fasta_policy(embed, setup, tmp_path):
    _, _, hf_dir, _ = setup
    fasta = tmp_path / "dirty.fasta"
    fasta.write_text(">ok\nMKTAYIAK\n>bad\nMK1TA\n>empty\n>ok\nMKT\n>fine\nGSHM\n")
    summary = embed.embed_fasta_to_h5(str(fasta), str(tmp_path / "o.h5"), hf_model=hf_dir, policy="skip")
    assert summary["read"] == 5 and summary["embedded"] == 2
    assert summary["invalid"] == {"invalid_character": 1, "empty_sequence": 1, "duplicate_id": 1}
    assert set(read_h5(tmp_path / "o.h5")) == {"ok", "fine"}


def test_bad_inputs_are_one_line_errors(embed, setup, tmp_path, capsys):
    _, _, hf_dir, fasta = setup

    def run(*args):
        code = embed.main(["--fasta", fasta, "--output", str(tmp_path / "o.h5"), "--no_progress", *args])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
        return err

    assert "does not exist" in run("--model_dir", str(tmp_path / "missing"))
    assert "does not exist" in run("--hf_model", str(tmp_path / "missing"))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in os.listdir(hf_dir):
        data = open(os.path.join(hf_dir, name), "rb").read()
        (corrupt / name).write_bytes(data[: len(data) // 2] if name == "model.safetensors" else data)
    assert "cannot read safetensors weights" in run("--hf_model", str(corrupt))
    if jax.default_backend() != "gpu":
        assert "needs a CUDA GPU" in run("--hf_model", hf_dir, "--attention", "cudnn")
        assert "attention_implementation='pallas' needs a CUDA GPU" in run("--hf_model", hf_dir, "--attention", "pallas")
        assert not os.path.exists(tmp_path / "o.h5")
    bad_fasta = tmp_path / "bad.fasta"
    bad_fasta.write_text(">a\nMKT\n>b\nMK1T\n")
    code = embed.main(["--fasta", str(bad_fasta), "--output", str(tmp_path / "o.h5"), "--hf_model", hf_dir])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == f"error: {bad_fasta}:4: invalid character '1' in record 'b' (column 3); " \
        "expected amino-acid letters ACDEFGHIKLMNPQRSTVWYXUZOB"
    assert not os.path.exists(tmp_path / "o.h5")  # nothing written for a bad input
    for odd_id, why in ((".", "'.' is the file's root group"), ("_incomplete", "the staging group")):
        odd = tmp_path / "odd.fasta"
        odd.write_text(f">a\nMKT\n>{odd_id}\nMKT\n")  # once raw HDF5 errors, mid-run
        code = embed.main(["--fasta", str(odd), "--output", str(tmp_path / "o.h5"), "--hf_model", hf_dir])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith(f"error: {odd}: FASTA id {odd_id!r} cannot name an HDF5 dataset ({why}")
        assert not os.path.exists(tmp_path / "o.h5")
    empty = tmp_path / "empty.fasta"  # once an empty "finished" HDF5 and exit 0
    empty.write_text("")
    code = embed.main(["--fasta", str(empty), "--output", str(tmp_path / "o.h5"), "--hf_model", hf_dir])
    assert code == 1 and capsys.readouterr().err.strip() == f"error: {empty}: no protein to embed (0 record(s) read)"
    assert not os.path.exists(tmp_path / "o.h5")


def test_out_of_memory_skips_a_long_protein_but_stops_on_a_batch():
    long = inference.Batch((inference.Protein("big", "A" * 50),), rows=1, length=64, alone=True)
    batch = inference.Batch((inference.Protein("a", "AAA"),), rows=1, length=32, alone=False)
    oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0GiB")
    summary = {"out_of_memory_ids": []}
    inference._skip_if_alone_and_out_of_memory(oom, long, summary, 4096)
    assert summary["out_of_memory_ids"] == ["big"]
    with pytest.raises(inference.OutOfMemoryError, match="lower --max_tokens"):
        inference._skip_if_alone_and_out_of_memory(oom, batch, summary, 4096)
    with pytest.raises(ValueError, match="unrelated"):  # other errors are not swallowed
        inference._skip_if_alone_and_out_of_memory(ValueError("unrelated"), long, summary, 4096)


def test_a_bert_directory_embeds_only_the_residues(embed, tiny_bert_hf_dir, tmp_path):
    """A ProtBert-shaped HF directory (recognised by its config's model_type): proteins framed
    as [CLS] ... [SEP], only the residues written; a MODEL_DIR of the same weights agrees."""
    from prottrans_jax.convert import bert as bert_convert
    from prottrans_jax.convert.hf_io import load_hf_config, load_hf_state_dict
    from tests.conftest import random_hf_bert, write_family_model_dir

    hf_dir = tiny_bert_hf_dir("pretraining", 5)
    fasta = write_fasta(tmp_path / "p.fasta", SEQUENCES)
    out = str(tmp_path / "bert.h5")
    summary = embed.embed_fasta_to_h5(fasta, out, hf_model=hf_dir, per_residue=True, per_protein=True,
                                      max_tokens=MAX_TOKENS, max_length=MAX_LENGTH)
    assert summary["family"] == "prot_bert" and summary["embedded"] == len(SEQUENCES)
    per_residue, per_protein = read_h5(out), read_h5(embed.per_protein_path(out))
    model = random_hf_bert("pretraining", 5).bert
    tokenizer = transformers.BertTokenizer.from_pretrained(hf_dir)
    for protein_id, sequence in SEQUENCES.items():
        text = " ".join(sequence.upper().translate(str.maketrans("UZOB", "XXXX")))
        ids = tokenizer(text, return_tensors="pt").input_ids
        assert ids.shape[1] == len(sequence) + 2  # [CLS] residues [SEP]
        with torch.no_grad():
            expected = model(input_ids=ids).last_hidden_state[0, 1:-1].numpy()
        array, attrs = per_residue[protein_id.replace("/", "_")]
        assert array.shape == (len(sequence), 32) and attrs["length"] == len(sequence)
        np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-5, err_msg=protein_id)
        np.testing.assert_allclose(per_protein[protein_id.replace("/", "_")][0], expected.mean(0),
                                   rtol=1e-5, atol=1e-5, err_msg=protein_id)
    state_dict = load_hf_state_dict(hf_dir)
    config = bert_convert.config_from_hf(load_hf_config(hf_dir), state_dict, dtype="float32")
    write_family_model_dir(tmp_path / "model", bert_convert.hf_to_flax(state_dict, config), config)
    from_dir = str(tmp_path / "from_model_dir.h5")
    embed.embed_fasta_to_h5(fasta, from_dir, model_dir=str(tmp_path / "model"), per_residue=False,
                            per_protein=True, max_tokens=MAX_TOKENS, max_length=MAX_LENGTH)
    for name, (array, _) in read_h5(embed.per_protein_path(out)).items():
        np.testing.assert_allclose(read_h5(from_dir)[name][0], array, rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_directory_of_an_unknown_family_is_a_one_line_error(embed, setup, tmp_path, capsys):
    _, _, hf_dir, fasta = setup
    other = tmp_path / "esm"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "esm", "hidden_size": 32}')
    code = embed.main(["--fasta", fasta, "--output", str(tmp_path / "o.h5"), "--hf_model", str(other)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"{other / 'config.json'}: model_type 'esm' is not a family this project reads" in err


def test_an_albert_directory_embeds_its_hidden_states_not_its_narrower_token_table(embed, tiny_albert_hf_dir,
                                                                                   tmp_path):
    """ProtAlbert-shaped (E 16 -> hidden 64, one shared layer): the residues' 64-wide last
    hidden states, as transformers' AlbertModel computes them; the model reports width 64."""
    from tests.conftest import random_hf_albert

    hf_dir = tiny_albert_hf_dir("pretraining", 5)
    assert inference.load_for_inference(hf_model=hf_dir, dtype="float32").d_model == 64
    fasta = write_fasta(tmp_path / "p.fasta", SEQUENCES)
    out = str(tmp_path / "albert.h5")
    summary = embed.embed_fasta_to_h5(fasta, out, hf_model=hf_dir, per_residue=True, per_protein=False,
                                      max_tokens=MAX_TOKENS, max_length=MAX_LENGTH)
    assert summary["family"] == "prot_albert" and summary["embedded"] == len(SEQUENCES)
    per_residue = read_h5(out)
    model = random_hf_albert("pretraining", 5).albert
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    for protein_id, sequence in SEQUENCES.items():
        text = " ".join(sequence.upper().translate(str.maketrans("UZOB", "XXXX")))
        ids = tokenizer(text, return_tensors="pt").input_ids
        assert ids.shape[1] == len(sequence) + 2  # [CLS] residues [SEP]
        with torch.no_grad():
            expected = model(input_ids=ids).last_hidden_state[0, 1:-1].numpy()
        array, _ = per_residue[protein_id.replace("/", "_")]
        assert array.shape == (len(sequence), 64)
        np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-5, err_msg=protein_id)


def test_an_electra_model_embeds_with_the_discriminator_or_on_request_the_generator(
        embed, tiny_electra_hf_dir, tmp_path, capsys):
    """The paper reports both towers: the discriminator by default, the generator with --part,
    from the two-directory layout, from one tower's directory, and from a MODEL_DIR."""
    from prottrans_jax.convert.hf_dir import load_hf_dir
    from tests.conftest import random_hf_electra, write_family_model_dir

    whole = tiny_electra_hf_dir(2)
    sequences = dict(list(SEQUENCES.items())[:4])
    fasta = write_fasta(tmp_path / "p.fasta", sequences)
    models = random_hf_electra(2)
    tokenizer = transformers.ElectraTokenizer.from_pretrained(os.path.join(whole, "generator"))
    loaded = load_hf_dir(whole, dtype="float32")
    write_family_model_dir(tmp_path / "model", loaded.params, loaded.config, "prot_electra")
    runs = {"discriminator": [dict(hf_model=whole), dict(hf_model=os.path.join(whole, "discriminator")),
                              dict(model_dir=str(tmp_path / "model"))],
            "generator": [dict(hf_model=whole, part="generator"), dict(hf_model=os.path.join(whole, "generator")),
                          dict(model_dir=str(tmp_path / "model"), part="generator")]}
    for tower, sources in runs.items():
        for index, source in enumerate(sources):
            out = str(tmp_path / f"{tower}{index}.h5")
            summary = embed.embed_fasta_to_h5(fasta, out, per_residue=True, max_tokens=MAX_TOKENS,
                                              max_length=MAX_LENGTH, **source)
            assert summary["embedded"] == len(sequences)
            with h5py.File(out, "r") as f:
                assert f.attrs["part"] == tower and f.attrs["family"] == "prot_electra"
            for protein_id, sequence in sequences.items():
                ids = tokenizer(" ".join(sequence), return_tensors="pt").input_ids
                with torch.no_grad():
                    expected = models[tower].electra(input_ids=ids).last_hidden_state[0, 1:-1].numpy()
                array, _ = read_h5(out)[protein_id.replace("/", "_")]
                np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-5, err_msg=f"{tower} {source}")
    code = embed.main(["--fasta", fasta, "--output", str(tmp_path / "x.h5"), "--part", "discriminator",
                       "--hf_model", os.path.join(whole, "generator")])
    assert code == 1 and "holds the prot_electra generator, not the discriminator" in capsys.readouterr().err
    code = embed.main(["--fasta", fasta, "--output", str(tmp_path / "y.h5"), "--part", "decoder",
                       "--hf_model", whole])
    assert code == 1 and "--part 'decoder': a prot_electra model embeds with discriminator or generator" in \
        capsys.readouterr().err


def test_an_xlnet_directory_and_model_dir_embed_the_content_stream(embed, tmp_path):
    """A ProtXLNet-shaped HF directory (XLNetLMHeadModel + spiece.model) and a prot_xlnet
    MODEL_DIR of the same weights: each protein as `residues <sep> <cls>`, only the residues
    written, equal to XLNetModel on the protein alone (ProtTrans' call: input ids only)."""
    from prottrans_jax.convert import xlnet as xlnet_convert
    from prottrans_jax.convert.hf_io import load_hf_config, load_hf_state_dict
    from prottrans_jax.vocab import prot_xlnet_vocabulary
    from tests.conftest import random_hf_xlnet, write_family_model_dir

    hf_dir = tmp_path / "hf"
    hf_model = random_hf_xlnet("lm", 6)
    hf_model.save_pretrained(hf_dir)
    xlnet_convert.write_tokenizer(str(hf_dir))
    fasta = write_fasta(tmp_path / "p.fasta", SEQUENCES)
    out = str(tmp_path / "xlnet.h5")
    summary = embed.embed_fasta_to_h5(fasta, out, hf_model=str(hf_dir), per_residue=True, per_protein=True,
                                      max_tokens=MAX_TOKENS, max_length=MAX_LENGTH)
    assert summary["family"] == "prot_xlnet" and summary["embedded"] == len(SEQUENCES)
    per_residue, per_protein = read_h5(out), read_h5(embed.per_protein_path(out))
    vocabulary = prot_xlnet_vocabulary()
    for protein_id, sequence in SEQUENCES.items():
        ids = [*vocabulary.encode(sequence.upper()), 4, 3]  # X, U, Z, O, B -> <unk>, one id each
        with torch.no_grad():
            expected = hf_model.transformer(input_ids=torch.tensor([ids]), use_mems=False)
        expected = expected.last_hidden_state[0, :-2].numpy()
        array, attrs = per_residue[protein_id.replace("/", "_")]
        assert array.shape == (len(sequence), 32) and attrs["length"] == len(sequence)
        np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-5, err_msg=protein_id)
        np.testing.assert_allclose(per_protein[protein_id.replace("/", "_")][0], expected.mean(0),
                                   rtol=1e-5, atol=1e-5, err_msg=protein_id)
    state_dict = load_hf_state_dict(str(hf_dir))
    config = xlnet_convert.config_from_hf(load_hf_config(str(hf_dir)), state_dict, dtype="float32")
    write_family_model_dir(tmp_path / "model", xlnet_convert.hf_to_flax(state_dict, config), config, "prot_xlnet")
    from_dir = str(tmp_path / "from_model_dir.h5")
    embed.embed_fasta_to_h5(fasta, from_dir, model_dir=str(tmp_path / "model"), per_residue=False,
                            per_protein=True, max_tokens=MAX_TOKENS, max_length=MAX_LENGTH)
    for name, (array, _) in per_protein.items():
        np.testing.assert_allclose(read_h5(from_dir)[name][0], array, rtol=1e-5, atol=1e-6, err_msg=name)
