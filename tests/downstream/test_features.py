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


def test_embed_on_the_fly_without_embed_module_fails_clearly(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "prottrans_jax.embed", None)  # import fails
    with pytest.raises(features.FeatureError, match="need the embedding command"):
        features.embed_with_model(["p"], ["MKV"], tmp_path / "x.h5", model_dir="m")


def test_embed_on_the_fly_calls_the_embedding_command(tmp_path, monkeypatch):
    """The benchmark's sequences reach embed_fasta_to_h5 as FASTA; its HDF5 is read back."""
    import sys
    import types

    seen = {}

    def embed_fasta_to_h5(
        fasta_path, output_path, model_dir=None, hf_model=None, per_residue=True, per_protein=False
    ):
        text = open(fasta_path).read()
        seen.update(fasta=text, model_dir=model_dir, per_residue=per_residue)
        records = [r.split("\n") for r in text.strip().lstrip(">").split("\n>")]
        _write_h5(
            output_path,
            {r[0]: np.full((len(r[1]), 4), i, np.float32) for i, r in enumerate(records)},
        )

    monkeypatch.setitem(
        sys.modules,
        "prottrans_jax.embed",
        types.SimpleNamespace(embed_fasta_to_h5=embed_fasta_to_h5),
    )
    out = features.embed_with_model(["p1", "p2"], ["MKV", "AC"], tmp_path / "e.h5", model_dir="m")
    assert seen == {"fasta": ">p1\nMKV\n>p2\nAC\n", "model_dir": "m", "per_residue": True}
    pooled = features.read_h5(out, ["p2", "p1"], ["AC", "MKV"], per_residue=False)
    np.testing.assert_allclose(pooled[:, 0], [1, 0])
