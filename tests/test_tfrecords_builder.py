"""The Beam builder: correct, deterministic, loses nothing, and fails loudly."""

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from prottrans_jax.fasta import FastaError, read_fasta
from prottrans_jax.vocab import normalize_sequence
from tfrecords_builder import tfrecord_io
from tfrecords_builder.__main__ import main
from tfrecords_builder.build import BuildError, verify_shards
from tfrecords_builder.fasta_source import FastaSource
from tfrecords_builder.pipeline import BuildConfig, assign_split, sequence_digest

from tests.conftest import SAMPLE, run_build

AMINO = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def random_fasta(path, count, seed=0, min_length=20, max_length=300, width=60):
    """A synthetic FASTA of random proteins, wrapped at `width`; returns {id: sequence}."""
    rng = np.random.default_rng(seed)
    proteins = {}
    with open(path, "w") as handle:
        for i in range(count):
            sequence = "".join(rng.choice(AMINO, size=rng.integers(min_length, max_length)))
            proteins[f"prot{i}"] = sequence
            handle.write(f">prot{i} synthetic\n")
            for start in range(0, len(sequence), width):
                handle.write(sequence[start:start + width] + "\n")
    return proteins


def read_corpus(output_dir):
    """{split: {id: spaced sequence}} read back with TensorFlow's own TFRecord reader."""
    description = {"id": tf.io.FixedLenFeature([], tf.string),
                   "sequence": tf.io.FixedLenFeature([], tf.string),
                   "length": tf.io.FixedLenFeature([], tf.int64)}
    corpus = {}
    for split in ("train", "validation"):
        files = sorted(tf.io.gfile.glob(f"{output_dir}/{split}.tfrecord-*"))
        corpus[split] = {}
        for raw in tf.data.TFRecordDataset(files):
            ex = tf.io.parse_single_example(raw, description)
            sequence = ex["sequence"].numpy().decode()
            assert len(sequence.split(" ")) == ex["length"].numpy()
            corpus[split][ex["id"].numpy().decode()] = sequence
    return corpus


def file_digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).iterdir()) if p.is_file()}


def test_sample_corpus_holds_every_protein_once_normalised(tmp_path):
    stats = run_build([SAMPLE], tmp_path / "corpus", num_shards=3, validation_fraction=0.1)
    expected = {r.id: " ".join(normalize_sequence(r.sequence)) for r in read_fasta(SAMPLE)}
    corpus = read_corpus(tmp_path / "corpus")
    assert {**corpus["train"], **corpus["validation"]} == expected
    assert stats["records_read"] == 3000 and stats["dropped"] == {}
    assert stats["written"] == {s: len(corpus[s]) for s in corpus}
    assert 200 < stats["written"]["validation"] < 400  # ~10% of 3000
    assert sum(stats["length_histogram"]["counts"]) == 3000
    assert sum(stats["residues"].values()) == 1391911
    assert stats["rare_residues_mapped_to_x"] >= 1
    names = sorted(p.name for p in (tmp_path / "corpus").iterdir())
    assert names == sorted(["stats.json"] + [f"{s}.tfrecord-{i:05d}-of-00003"
                                             for s in ("train", "validation") for i in range(3)])


def test_same_input_gives_byte_identical_output(tmp_path):
    random_fasta(tmp_path / "in.fa", 500)
    run_build([tmp_path / "in.fa"], tmp_path / "a", num_shards=4, validation_fraction=0.2)
    run_build([tmp_path / "in.fa"], tmp_path / "b", num_shards=4, validation_fraction=0.2,
              pipeline_args=["--direct_running_mode=multi_processing",
                             "--direct_num_workers=2"])
    assert file_digests(tmp_path / "a") == file_digests(tmp_path / "b")


def test_identical_sequences_never_straddle_splits(tmp_path):
    proteins = random_fasta(tmp_path / "in.fa", 300, seed=1)
    with open(tmp_path / "in.fa", "a") as handle:  # each sequence again under a second id
        for pid, sequence in proteins.items():
            handle.write(f">copy_{pid}\n{sequence}\n")
    run_build([tmp_path / "in.fa"], tmp_path / "out", num_shards=2, validation_fraction=0.3)
    corpus = read_corpus(tmp_path / "out")
    for split, other in (("train", "validation"), ("validation", "train")):
        for pid in corpus[split]:
            twin = pid[5:] if pid.startswith("copy_") else f"copy_{pid}"
            assert twin in corpus[split] and twin not in corpus[other]
    assert assign_split(sequence_digest("MKT"), 0.3) == assign_split(sequence_digest("MKT"), 0.3)


def test_malformed_input_fails_with_file_and_line_and_leaves_nothing(tmp_path, capsys):
    fasta = tmp_path / "bad.fa"
    fasta.write_text(">P1\nMKT\n>P2\nMK1\n>P3\nAAA\n>P1\nWW\n")
    out = tmp_path / "out"
    code = main(["--input", str(fasta), "--output_dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith(f"error: {fasta}:4: invalid character '1' in record 'P2' (column 3)")
    assert "and 1 more problem(s)" in err and "\n" not in err
    assert list(out.iterdir()) == []  # no shards, no stats.json, no scratch directory


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_a_truncated_or_corrupt_gzip_fails_the_build_naming_the_file(tmp_path, capsys, policy):
    """A cut .gz once built a "complete" corpus of half the proteins, the last one cut short;
    plain text named .gz ended in a zlib traceback. Under any policy: one line, nothing written."""
    random_fasta(tmp_path / "in.fa", 300, seed=3)
    whole = gzip.compress((tmp_path / "in.fa").read_bytes())
    damaged = {"truncated.fa.gz": whole[: len(whole) // 2], "plain.fa.gz": (tmp_path / "in.fa").read_bytes(),
               "corrupt.fa.gz": whole[:200] + bytes(200) + whole[400:]}
    expected = {"truncated.fa.gz": "the compressed stream ends before its end marker: the file is truncated",
                "plain.fa.gz": "cannot decompress", "corrupt.fa.gz": "cannot decompress"}
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
        out = tmp_path / f"out_{name}"
        code = main(["--input", str(tmp_path / name), "--output_dir", str(out), "--policy", policy])
        err = capsys.readouterr().err.strip()
        assert code == 1 and "\n" not in err, err
        assert err.startswith(f"error: {tmp_path / name}:") and expected[name] in err, err
        assert not out.exists() or list(out.iterdir()) == []  # no shards, no stats.json, no scratch


def test_a_directory_input_or_an_output_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    """Both once ended in tracebacks (IsADirectoryError, NotADirectoryError)."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    random_fasta(tmp_path / "in.fa", 3)
    cases = ((["--input", str(tmp_path / "folder"), "--output_dir", str(tmp_path / "o")],
              f"error: --input {tmp_path / 'folder'}: a directory; give its FASTA files"),
             (["--input", str(tmp_path / "in.fa"), "--output_dir", str(tmp_path / "a_file")],
              f"error: --output_dir {tmp_path / 'a_file'}: a file, not a directory"))
    for argv, expected in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(expected) and "\n" not in err, err


def test_the_scratch_of_a_killed_build_is_removed_by_the_next(tmp_path):
    """A killed build's `.build-PID-TIME` folder once stayed beside the corpus for good."""
    random_fasta(tmp_path / "in.fa", 20)
    stale = tmp_path / "out" / ".build-4194000-1796000000"  # a pid no process has
    stale.mkdir(parents=True)
    (stale / "train.tfrecord-00000-of-00001").write_bytes(b"partial")
    live = tmp_path / "out" / f".build-{os.getpid()}-1796000000"  # a build still running
    live.mkdir()
    run_build([tmp_path / "in.fa"], tmp_path / "out", num_shards=1)
    assert not stale.exists() and live.exists()
    assert (tmp_path / "out" / "stats.json").is_file()


def test_an_input_with_no_protein_to_write_is_refused(tmp_path, capsys):
    """An empty FASTA once built an empty "complete" corpus that training then crashed on."""
    (tmp_path / "empty.fa").write_text("")
    (tmp_path / "short.fa").write_text(">P1\nMK\n>P2\nMKT\n")
    for name, extra, expected in (("empty.fa", [], "no protein to write (0 record(s) read)"),
                                  ("short.fa", ["--min_length", "10"],
                                   "no protein to write (2 record(s) read, all dropped: {'too_short': 2})")):
        out = tmp_path / f"out_{name}"
        code = main(["--input", str(tmp_path / name), "--output_dir", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 1 and err == f"error: {tmp_path / name}: {expected}", err
        assert list(out.iterdir()) == []


def test_a_utf8_byte_order_mark_is_accepted_by_the_builder_too(tmp_path):
    """The reader accepted a BOM; the builder's own splitter ended in `KeyError: 1`."""
    for name, opener in (("bom.fa", open), ("bom.fa.gz", gzip.open)):
        with opener(tmp_path / name, "wb") as handle:
            handle.write(b"\xef\xbb\xbf>P1\nMKT\n>P2\nACDEF\n")
        out = tmp_path / f"out_{name}"
        assert main(["--input", str(tmp_path / name), "--output_dir", str(out), "--num_shards", "1",
                     "--validation_fraction", "0"]) == 0
        assert read_corpus(out)["train"] == {"P1": "M K T", "P2": "A C D E F"}


def test_duplicate_ids_are_reported_with_both_lines(tmp_path):
    fasta = tmp_path / "dup.fa"
    fasta.write_text(">P1\nMKT\n>P2\nAAA\n>P1\nWW\n")
    with pytest.raises(FastaError, match=r"dup.fa:5: duplicate id 'P1' \(first seen at .*dup.fa:1\)"):
        run_build([fasta], tmp_path / "out", num_shards=1)


def test_skip_policy_filters_and_dedupe_are_counted(tmp_path):
    fasta = tmp_path / "mixed.fa"
    fasta.write_text(">ok1\nMKTAYIAK\n>bad\nMK1\n>short\nMK\n>long\n" + "A" * 50 + "\n"
                     ">same_as_ok1\nMKTAYIAK\n>empty\n>ok1\nWWWWWW\n>ok2\nmkuzobaa*\n")
    stats = run_build([fasta], tmp_path / "out", num_shards=2, policy="skip", min_length=3,
                      max_length=20, dedupe=True)
    assert stats["dropped"] == {"duplicate_id": 1, "duplicate_sequence": 1, "empty_sequence": 1,
                                "invalid_character": 1, "too_long": 1, "too_short": 1}
    assert stats["records_read"] == 8
    corpus = read_corpus(tmp_path / "out")
    assert {**corpus["train"], **corpus["validation"]} == {
        "ok1": "M K T A Y I A K", "ok2": "M K X X X X A A"}
    assert stats["rare_residues_mapped_to_x"] == 4


def test_text_layout_is_written_too(tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKT\n>b\nWWA\n")
    run_build([fasta], tmp_path / "out", num_shards=1, validation_fraction=0.0, text_layout=True)
    text = (tmp_path / "out" / "train.txt-00000-of-00001").read_text()
    assert sorted(text.split("\n\n")[:-1]) == ["M K T", "W W A"] and text.endswith("\n\n")


def test_inputs_globs_and_several_files(tmp_path):
    for i in range(3):
        random_fasta(tmp_path / f"part{i}.fa", 20, seed=i)
        (tmp_path / f"part{i}.fa").write_text((tmp_path / f"part{i}.fa").read_text().replace(
            ">prot", f">f{i}_prot"))
    gz = tmp_path / "part3.fa.gz"
    gz.write_bytes(gzip.compress(b">gz1\nMKT\n"))
    stats = run_build([tmp_path / "part*.fa", gz], tmp_path / "out", num_shards=2)
    assert stats["records_read"] == 61 and sum(stats["written"].values()) == 61


def test_bad_arguments_are_refused(tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKT\n")
    with pytest.raises(BuildError, match="no files match"):
        run_build([tmp_path / "nothing*.fa"], tmp_path / "out")
    with pytest.raises(BuildError, match="multi_threading is refused"):
        run_build([fasta], tmp_path / "out", pipeline_args=["--direct_running_mode=multi_threading"])
    with pytest.raises(BuildError, match="--num_shards must be >= 1"):
        run_build([fasta], tmp_path / "out", num_shards=0)
    run_build([fasta], tmp_path / "out", num_shards=1)
    with pytest.raises(BuildError, match="already holds a corpus"):
        run_build([fasta], tmp_path / "out", num_shards=1)
    run_build([fasta], tmp_path / "out", num_shards=2, overwrite=True)
    assert len(list((tmp_path / "out").glob("train.tfrecord-*-of-00002"))) == 2
    assert not list((tmp_path / "out").glob("*-of-00001"))  # the old shards are gone


def test_splittable_source_reads_each_record_once_with_exact_lines(tmp_path):
    proteins = random_fasta(tmp_path / "in.fa", 400, seed=3)
    text = (tmp_path / "in.fa").read_text().splitlines()
    bad_line = next(i for i in range(1000, len(text)) if not text[i].startswith(">"))
    text.insert(bad_line, "MKT1")  # an invalid line deep inside the file
    (tmp_path / "in.fa").write_text("\n".join(text) + "\n")
    source = FastaSource(str(tmp_path / "in.fa"))
    bundles = list(source.split(desired_bundle_size=4096))
    assert len(bundles) > 10
    seen, problems = [], []
    for bundle in bundles:
        tracker = bundle.source.get_range_tracker(bundle.start_position, bundle.stop_position)
        for item in bundle.source.read(tracker):
            (seen if item[0] == "record" else problems).append(item)
    ids = [item[3] for item in seen]
    assert len(ids) == len(set(ids)) == 399
    assert all(proteins[item[3]] == item[5] for item in seen)
    assert len(problems) == 1 and problems[0][2] == bad_line + 1  # absolute line of "MKT1"


def test_lost_records_are_detected(tmp_path):
    random_fasta(tmp_path / "in.fa", 50)
    config = BuildConfig(inputs=(str(tmp_path / "in.fa"),), output_dir=str(tmp_path), num_shards=1)
    shard = tmp_path / config.shard_name("train", 0)
    tfrecord_io.write_records(str(shard), [tfrecord_io.protein_example("a", "M K", 2)])
    manifest = [{"split": "train", "shard": 0, "records": 2, "residues": 4}]
    with pytest.raises(BuildError, match="counted 1 records / 2 residues back, the pipeline wrote 2"):
        verify_shards(config, str(tmp_path), manifest)
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(tfrecord_io.CorruptRecordError, match="record 0: truncated data"):
        tfrecord_io.count_records(str(shard))


@pytest.mark.slow
def test_two_hundred_thousand_records_nothing_lost(tmp_path):
    proteins = random_fasta(tmp_path / "big.fa", 200_000, seed=5, min_length=10, max_length=60)
    stats = run_build([tmp_path / "big.fa"], tmp_path / "out", num_shards=8,
                      validation_fraction=0.05)
    assert stats["records_read"] == 200_000
    assert sum(stats["written"].values()) == 200_000
    assert sum(stats["residues"].values()) == sum(len(s) for s in proteins.values())
    counted = sum(tfrecord_io.count_records(str(p))[0]
                  for p in (tmp_path / "out").glob("*.tfrecord-*"))
    assert counted == 200_000
