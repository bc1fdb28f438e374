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
from prottrans_jax.errors import UserError

ONEHOT_ALPHABET = datasets.STANDARD_RESIDUES + "X"
BUILTIN_FEATURES = ("onehot",) + tuple(unirep.VARIANTS)


class FeatureError(UserError):
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


def _cache_path(kind, ids, sequences, per_residue, cache_dir):
    """Where features of `kind` for this exact dataset are cached (None: no cache)."""
    if cache_dir is None:
        return None
    level = "residue" if per_residue else "protein"
    return Path(cache_dir) / f"{kind}_{level}_{len(ids)}_{_fingerprint(ids, sequences)}.npz"


def _save_npz(path, features, per_residue, **extra):
    """Writes features atomically (a temporary file, then a rename): never a torn cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name[: -len(".npz")] + ".tmp.npz")
    if per_residue:
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in features])])
        np.savez(tmp, flat=np.concatenate(features), offsets=offsets, **extra)
    else:
        np.savez(tmp, features=np.asarray(features), **extra)
    os.replace(tmp, path)


def _load_npz(path, per_residue):
    with np.load(path) as data:
        extra = {key: data[key] for key in data.files if key not in ("flat", "offsets", "features")}
        if per_residue:
            flat, offsets = data["flat"], data["offsets"]
            return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)], extra
        return data["features"], extra


def _cached(kind, ids, sequences, per_residue, cache_dir, compute):
    """Loads features from `cache_dir` when present; computes and stores them otherwise."""
    path = _cache_path(kind, ids, sequences, per_residue, cache_dir)
    if path is None:
        return compute()
    if path.exists():
        return _load_npz(path, per_residue)[0]
    features = compute()
    _save_npz(path, features, per_residue)
    return features


class PartialFeatures:
    """The proteins already embedded for a cache entry still being computed, so that an
    interrupted evaluation (Ctrl-C, a killed job) resumes where it stopped.

    `PATH.partial/` beside the cache file `PATH` holds one atomically written .npz per batch
    (its protein indices and features); the complete cache file replaces the folder at the end.
    A chunk that cannot be read is dropped, and its proteins are embedded again.
    """

    def __init__(self, cache_path, per_residue):
        self.directory = cache_path.with_name(cache_path.name + ".partial")
        self.per_residue = per_residue

    def load(self, log=print):
        done = {}
        for chunk in sorted(self.directory.glob("chunk-*.npz")):
            if chunk.name.endswith(".tmp.npz"):
                continue
            try:
                features, extra = _load_npz(chunk, self.per_residue)
            except (OSError, ValueError, KeyError) as err:
                log(f"  dropping unreadable {chunk} ({type(err).__name__}); its proteins are embedded again")
                continue
            done.update(zip((int(i) for i in extra["indices"]), features))
        return done

    def add(self, embedded):
        """Stores {protein index: features} of one batch."""
        indices = sorted(embedded)
        _save_npz(self.directory / f"chunk-{indices[0]:08d}-{len(indices)}.npz",
                  [embedded[i] for i in indices], self.per_residue, indices=np.array(indices))

    def remove(self):
        if self.directory.is_dir():
            for chunk in self.directory.iterdir():
                chunk.unlink()
            self.directory.rmdir()


def model_features(model, ids, sequences, per_residue, cache_dir=None, log=print):
    """A model's embeddings of the sequences (`prottrans_jax.inference`), cached by fingerprint.

    `model` is an `InferenceModel`; per residue: float16 (L, D) arrays; per protein: the
    float32 mean over residues, as the embedding command writes them. With `cache_dir`, each
    batch is kept as it completes (`PartialFeatures`): a second run embeds only what is left.
    """
    from prottrans_jax.inference import Protein, embed_sequences
    from prottrans_jax.vocab import normalize_sequence

    kind = f"{model.family.name}-{model.fingerprint}-{model.dtype}"
    path = _cache_path(kind, ids, sequences, per_residue, cache_dir)
    if path is not None and path.exists():
        return _load_npz(path, per_residue)[0]
    partial = PartialFeatures(path, per_residue) if path is not None else None
    done = partial.load(log) if partial is not None else {}
    if done:
        log(f"  resuming: {len(done)} of {len(ids)} proteins already embedded in {partial.directory}")
    proteins = [Protein(str(i), normalize_sequence(s)) for i, s in enumerate(sequences) if i not in done]
    summary = {}
    for result in embed_sequences(model, proteins, per_residue=per_residue, summary=summary):
        embedded = {int(protein.id): (result.per_residue[k].astype(np.float16) if per_residue else result.means[k])
                    for k, protein in enumerate(result.batch.proteins)}
        done.update(embedded)
        if partial is not None:
            partial.add(embedded)
    if summary.get("out_of_memory_ids"):
        raise FeatureError(f"{len(summary['out_of_memory_ids'])} proteins did not fit in device "
                           "memory: evaluate them on a larger device")
    features = [done[i] for i in range(len(ids))]
    features = features if per_residue else np.stack(features).astype(np.float32)
    if path is not None:
        _save_npz(path, features, per_residue)
        partial.remove()
    return features


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
