"""Feature readers: one-hot, the embedding command's HDF5 layout (both kinds), clear errors."""

import h5py
import numpy as np
import pytest

from prottrans_jax.downstream import features


def test_onehot():
    x = features.onehot("ACX")
    assert x.shape == (3, 21)
    assert x.argmax(1).tolist() == [0, 1, 20] and x.sum() == 3
    pooled = features.compute_features("onehot", ["p"], ["AAC"], per_residue=False)
    assert pooled.shape == (1, 21) and pooled[0, 0] == pytest.approx(2 / 3)


def _write_h5(path, arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
            f[key].attrs["length"] = len(value)


def test_h5_per_residue_and_pooling(tmp_path):
    path = tmp_path / "emb.h5"
    residue = np.arange(12, dtype=np.float32).reshape(3, 4)
    _write_h5(path, {"p1": residue, "p2": np.ones(4, np.float32)})
    per_residue = features.read_h5(path, ["p1"], ["MKV"], per_residue=True)
    np.testing.assert_allclose(per_residue[0], residue)
    pooled = features.read_h5(path, ["p1", "p2"], ["MKV", "MK"], per_residue=False)
    np.testing.assert_allclose(pooled, [residue.mean(0), np.ones(4)])


def test_h5_errors_name_the_protein(tmp_path):
    path = tmp_path / "emb.h5"
    _write_h5(path, {"p1": np.zeros((3, 4)), "p2": np.ones(4)})
    with pytest.raises(features.FeatureError, match="protein 'p9' of the benchmark is missing"):
        features.read_h5(path, ["p9"], ["MKV"], per_residue=False)
    with pytest.raises(
        features.FeatureError, match="'p1' has 3 embedding rows but its sequence has 4 residues"
    ):
        features.read_h5(path, ["p1"], ["MKVA"], per_residue=True)
    with pytest.raises(features.FeatureError, match="'p2' has only a per-protein embedding"):
        features.read_h5(path, ["p2"], ["MK"], per_residue=True)
    with pytest.raises(features.FeatureError, match="unknown features"):
        features.compute_features("bogus", ["p"], ["M"], per_residue=True)


def test_cache_round_trip(tmp_path):
    calls = []
    compute = lambda: calls.append(1) or [np.ones((2, 3), np.float16), np.zeros((1, 3), np.float16)]
    first = features._cached("x", ["a", "b"], ["MK", "V"], True, tmp_path, compute)
    second = features._cached("x", ["a", "b"], ["MK", "V"], True, tmp_path, compute)
    assert len(calls) == 1 and [s.shape for s in second] == [(2, 3), (1, 3)]
    np.testing.assert_array_equal(first[0], second[0])


def test_model_features_come_from_the_model_and_are_cached_by_its_weights(tiny_t5_hf_dir, tmp_path):
    from prottrans_jax.inference import Protein, embed_sequences, load_for_inference

    ids, sequences = ["p1", "p2", "p3"], ["MKVLAAGII", "ac", "GSHMW"]
    first_model = load_for_inference(hf_model=tiny_t5_hf_dir(0))
    per_residue = features.model_features(first_model, ids, sequences, True)
    direct = {d.batch.proteins[k].id: d.per_residue[k] for d in embed_sequences(
        first_model, [Protein(i, s.upper()) for i, s in zip(ids, sequences)]) for k in range(len(d.batch.proteins))}
    for protein_id, rows in zip(ids, per_residue):
        assert rows.dtype == np.float16
        np.testing.assert_allclose(rows, direct[protein_id], rtol=1e-3, atol=1e-3)

    cached = features.model_features(first_model, ids, sequences, False, cache_dir=tmp_path)
    np.testing.assert_allclose(cached, np.stack([direct[i].mean(0) for i in ids]), rtol=1e-5, atol=1e-6)
    second_model = load_for_inference(hf_model=tiny_t5_hf_dir(1))
    assert second_model.fingerprint != first_model.fingerprint
    other = features.model_features(second_model, ids, sequences, False, cache_dir=tmp_path)
    assert not np.allclose(other, cached)  # another model's features are never reused
    assert len(list(tmp_path.glob("*.npz"))) == 2
    again = features.model_features(first_model, ids, sequences, False, cache_dir=tmp_path)
    np.testing.assert_array_equal(again, cached)


def test_the_evaluation_reads_a_bert_directory_like_any_other(tiny_bert_hf_dir):
    """`evaluate --hf_model` with a ProtBert-shaped directory: per-protein means of the residues."""
    from prottrans_jax.downstream.evaluate import FeatureSource
    from prottrans_jax.inference import Protein, embed_sequences

    source = FeatureSource("unused", hf_model=tiny_bert_hf_dir("pretraining", 0))
    assert source.model.family.name == "prot_bert" and source.model.family.paper_model == "ProtBert-BFD"
    dataset = type("Dataset", (), {"ids": ["a", "b"], "sequences": ["MKTAYIAK", "GSHMW"], "name": "toy",
                                   "__len__": lambda self: 2})()
    means = source(dataset, per_residue=False)
    (done,) = list(embed_sequences(source.model, [Protein("a", "MKTAYIAK"), Protein("b", "GSHMW")]))
    expected = {p.id: rows.mean(0) for p, rows in zip(done.batch.proteins, done.per_residue)}
    assert means.shape == (2, 32)
    np.testing.assert_allclose(means, np.stack([expected["a"], expected["b"]]), rtol=1e-5, atol=1e-6)


def test_the_evaluation_reads_either_electra_tower_on_request(tiny_electra_hf_dir):
    """`evaluate --hf_model DIR [--part generator]`: the discriminator by default, each tower
    compared with its own paper row, and each cached under its own weights' fingerprint."""
    from prottrans_jax.downstream.evaluate import FeatureSource

    sources = {part: FeatureSource("unused", hf_model=tiny_electra_hf_dir(0), part=part)
               for part in (None, "generator")}
    default, generator = sources[None].model, sources["generator"].model
    assert default.encoder.part == "discriminator" and generator.encoder.part == "generator"
    assert default.family.paper_model_for(default.encoder.part) == "ProtElectra-Discriminator"
    assert generator.family.paper_model_for(generator.encoder.part) == "ProtElectra-Generator"
    assert default.d_model == 32 and generator.d_model == 16  # each tower's width
    assert default.fingerprint != generator.fingerprint
    dataset = type("Dataset", (), {"ids": ["a"], "sequences": ["MKTAYIAK"], "name": "toy",
                                   "__len__": lambda self: 1})()
    assert sources[None](dataset, per_residue=False).shape == (1, 32)
    assert sources["generator"](dataset, per_residue=False).shape == (1, 16)


def test_a_features_file_that_is_not_hdf5_is_a_one_line_error_naming_it(tmp_path):
    """Once h5py's bare "file signature not found", without the file."""
    path = tmp_path / "notes.h5"
    path.write_text("not an HDF5 file\n")
    with pytest.raises(features.FeatureError, match=f"{path}: not an HDF5 embeddings file"):
        features.read_h5(path, ["a"], ["MKT"], per_residue=False)


def test_an_interrupted_model_embedding_resumes_from_the_cache(tiny_t5_hf_dir, tmp_path, monkeypatch):
    """Ctrl-C during an on-the-fly embedding in --cache_dir once lost all of it: the batches
    that completed are kept, and the next run embeds only the rest, to the same features."""
    from prottrans_jax import inference
    from prottrans_jax.inference import load_for_inference

    ids = [f"p{i}" for i in range(6)]
    sequences = ["MKVLAAGIIW" * 3, "ACDEFGHIK" * 2, "GSHMW", "LLLKKKVVV", "MPQRSTV", "WYWYWYA" * 4]
    model = load_for_inference(hf_model=tiny_t5_hf_dir(0))
    straight = features.model_features(model, ids, sequences, True)

    real = inference.embed_sequences
    embedded = []

    def interrupted_after_one_batch(model, proteins, **kwargs):
        for n, result in enumerate(real(model, proteins, max_tokens=40, **kwargs)):
            if n == 1:
                raise KeyboardInterrupt
            embedded.extend(p.id for p in result.batch.proteins)
            yield result

    monkeypatch.setattr(inference, "embed_sequences", interrupted_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        features.model_features(model, ids, sequences, True, cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.npz"))  # nothing looks complete
    first_batch = list(embedded)
    assert 0 < len(first_batch) < len(ids)

    def counting(model, proteins, **kwargs):
        embedded.extend(p.id for p in proteins)
        return real(model, proteins, **kwargs)

    embedded.clear()
    monkeypatch.setattr(inference, "embed_sequences", counting)
    lines = []
    resumed = features.model_features(model, ids, sequences, True, cache_dir=tmp_path, log=lines.append)
    assert sorted(embedded) == sorted(set(str(i) for i in range(6)) - set(first_batch))
    assert any(f"resuming: {len(first_batch)} of 6 proteins" in line for line in lines)
    for a, b in zip(straight, resumed):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-2, atol=1e-3)
    assert len(list(tmp_path.glob("*.npz"))) == 1 and not list(tmp_path.glob("*.partial"))
