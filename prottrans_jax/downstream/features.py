"""Frozen features for the heads: one-hot residues, UniRep, a model's embeddings, or an HDF5 file.

Per-residue features are a list of (L, D) arrays (one per protein, float16 to halve memory);
per-protein features are an (N, D) float32 matrix. Features can be cached to a directory
(`cache_dir`) as .npz files keyed by what computed them (the feature name, or a model's family,
weight fingerprint and dtype) and the dataset's content hash, because UniRep or a large model on
a 2-core CPU takes minutes to hours; features of one model are never served for another.
"""

import hashlib
import os
from pathlib import Path

import numpy as np

from prottrans_jax.downstream import datasets, unirep

ONEHOT_ALPHABET = datasets.STANDARD_RESIDUES + "X"
BUILTIN_FEATURES = ("onehot",) + tuple(unirep.VARIANTS)


class FeatureError(ValueError):
    """Features that do not match the benchmark (missing protein, wrong length, wrong kind)."""


def onehot(sequence):
    """(L, 21) one-hot over the 20 standard amino acids plus X."""
    index = np.frombuffer(sequence.encode(), dtype=np.uint8)
    lookup = np.full(256, -1, dtype=np.int64)
    lookup[np.frombuffer(ONEHOT_ALPHABET.encode(), dtype=np.uint8)] = np.arange(21)
    codes = lookup[index]
    if (codes < 0).any():
        raise FeatureError(f"cannot one-hot encode {sequence[:20]!r}...: non-amino-acid letter")
    return np.eye(21, dtype=np.float16)[codes]


def read_h5(path, ids, sequences, per_residue):
    """Reads embeddings for `ids` from the embedding command's HDF5 layout.

    Root datasets named by protein id: (L, D) per residue or (D,) per protein. Per-protein tasks
    mean-pool per-residue arrays; per-residue tasks refuse per-protein-only files.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FeatureError(f"{path}: no such embeddings file")
    out = []
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise FeatureError(f"{path}: not an HDF5 embeddings file ({err})") from None
    with handle as f:
        for protein_id, sequence in zip(ids, sequences):
            if protein_id not in f and protein_id.replace("/", "_") in f:
                protein_id = protein_id.replace("/", "_")  # the embed command's dataset names
            if protein_id not in f:
                raise FeatureError(
                    f"{path}: protein {protein_id!r} of the benchmark is missing "
                    f"({len(f)} proteins in the file)"
                )
            array = f[protein_id][()]
            if array.ndim == 2 and array.shape[0] != len(sequence):
                raise FeatureError(
                    f"{path}: protein {protein_id!r} has {array.shape[0]} embedding rows "
                    f"but its sequence has {len(sequence)} residues"
                )
            if array.ndim not in (1, 2):
                raise FeatureError(f"{path}: protein {protein_id!r} has a {array.ndim}-D array")
            if per_residue:
                if array.ndim == 1:
                    raise FeatureError(
                        f"{path}: protein {protein_id!r} has only a per-protein embedding; "
                        "per-residue tasks need (L, D) arrays (embed with per_residue)"
                    )
                out.append(array.astype(np.float16))
            else:
                out.append(
                    array.astype(np.float32)
                    if array.ndim == 1
                    else array.astype(np.float32).mean(axis=0)
                )
    return out if per_residue else np.stack(out)


def _fingerprint(ids, sequences):
    digest = hashlib.sha1()
    for protein_id, sequence in zip(ids, sequences):
        digest.update(f"{protein_id}\t{sequence}\n".encode())
    return digest.hexdigest()[:16]


def _cached(kind, ids, sequences, per_residue, cache_dir, compute):
    """Loads features from `cache_dir` when present; computes and stores them otherwise."""
    if cache_dir is None:
        return compute()
    level = "residue" if per_residue else "protein"
    path = Path(cache_dir) / f"{kind}_{level}_{len(ids)}_{_fingerprint(ids, sequences)}.npz"
    if path.exists():
        with np.load(path) as data:
            if per_residue:
                flat, offsets = data["flat"], data["offsets"]
                return [flat[offsets[i] : offsets[i + 1]] for i in range(len(ids))]
            return data["features"]
    features = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    if per_residue:
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in features])])
        np.savez(tmp, flat=np.concatenate(features), offsets=offsets)
    else:
        np.savez(tmp, features=features)
    os.replace(tmp, path)
    return features


def model_features(model, ids, sequences, per_residue, cache_dir=None):
    """A model's embeddings of the sequences (`prottrans_jax.inference`), cached by fingerprint.

    `model` is an `InferenceModel`; per residue: float16 (L, D) arrays; per protein: the
    float32 mean over residues, as the embedding command writes them.
    """
    from prottrans_jax.inference import Protein, embed_sequences
    from prottrans_jax.vocab import normalize_sequence

    def compute():
        proteins = [Protein(str(i), normalize_sequence(s)) for i, s in enumerate(sequences)]
        rows, means = [None] * len(proteins), np.zeros((len(proteins), model.d_model), np.float32)
        summary = {}
        for done in embed_sequences(model, proteins, per_residue=per_residue, summary=summary):
            for k, protein in enumerate(done.batch.proteins):
                index = int(protein.id)
                means[index] = done.means[k]
                if per_residue:
                    rows[index] = done.per_residue[k].astype(np.float16)
        if summary["out_of_memory_ids"]:
            raise FeatureError(f"{len(summary['out_of_memory_ids'])} proteins did not fit in device "
                               "memory: evaluate them on a larger device")
        return rows if per_residue else means

    kind = f"{model.family.name}-{model.fingerprint}-{model.dtype}"
    return _cached(kind, ids, sequences, per_residue, cache_dir, compute)


def compute_features(spec, ids, sequences, per_residue, cache_dir=None, log=print):
    """Features for one dataset. `spec`: onehot | unirep1900 | unirep256 | unirep64 | PATH.h5."""
    if spec == "onehot":
        per_protein = lambda: np.stack([onehot(s).astype(np.float32).mean(0) for s in sequences])
        return [onehot(s) for s in sequences] if per_residue else per_protein()
    if spec in unirep.VARIANTS:
        compute = lambda: unirep.embed_sequences(spec, sequences, per_residue=per_residue, log=log)
        return _cached(spec, ids, sequences, per_residue, cache_dir, compute)
    if str(spec).endswith((".h5", ".hdf5")) or Path(spec).is_file():
        return read_h5(spec, ids, sequences, per_residue)
    raise FeatureError(f"unknown features {spec!r}: expected one of {BUILTIN_FEATURES} or a .h5")
