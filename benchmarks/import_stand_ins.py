"""Stand-ins for seqio and tensorflow, so the model code imports where they are absent.

The accelerator image has neither (/work/.library/device/KINDS.md lists its packages), and
TensorFlow cannot travel there (its wheel is several hundred MB; a run carries 64 MiB). The
model modules import both at module level for the data pipeline only: `vocab.py`'s
`ProteinVocabulary` is a `seqio.Vocabulary`, `data/feature_converters.py` declares seqio
feature specs with `tf.int32`. The accelerator suite builds its batches in numpy and never
runs that pipeline, so these stand-ins cover exactly the import-time uses: attribute access
on `tensorflow` works, calling anything from it raises, and `seqio` offers the three base
classes those modules subclass. `install()` must run before `prottrans_jax` is imported.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Iterable, Sequence

NAMES = ("seqio", "tensorflow")


class _Absent:
    """Any tensorflow attribute (tf.int32, tf.data.Dataset, ...): usable in class bodies,
    an error when called."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str) -> "_Absent":
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return _Absent(f"{self._name}.{attribute}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name}: tensorflow is a stand-in here (benchmarks/import_stand_ins.py); "
                           "the data pipeline cannot run in this process")


class Vocabulary:
    """seqio.Vocabulary's interface as ProteinVocabulary uses it (ids in numpy)."""

    def __init__(self, extra_ids: int = 0):
        self._extra_ids = extra_ids

    @property
    def extra_ids(self) -> int:
        return self._extra_ids

    @property
    def vocab_size(self) -> int:
        return self._base_vocab_size + self.extra_ids

    def encode(self, s: str) -> Sequence[int]:
        return self._encode(s)

    def decode(self, ids: Iterable[int]) -> str:
        return self._decode(ids)


class FeatureConverter:
    """Only what subclasses read at class creation: empty feature tables."""

    TASK_FEATURES: dict = {}
    MODEL_FEATURES: dict = {}
    PACKING_FEATURE_DTYPES: dict = {}

    @staticmethod
    def FeatureSpec(**kwargs):  # noqa: N802 (seqio's name)
        return types.SimpleNamespace(**kwargs)

    def __init__(self, *args, **kwargs):
        raise RuntimeError("seqio is a stand-in here (benchmarks/import_stand_ins.py): no feature converter runs")


class EncDecFeatureConverter(FeatureConverter):
    pass


def _module(name: str, attributes: dict) -> types.ModuleType:
    module = types.ModuleType(name, f"stand-in for {name} (benchmarks/import_stand_ins.py)")
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    module.__dict__.update(attributes)
    return module


def install() -> list[str]:
    """Puts the stand-ins in sys.modules (whether or not the real packages exist, so every
    machine runs the same code); returns their names. Refuses once the real ones are loaded."""
    loaded = [name for name in NAMES if name in sys.modules and not getattr(sys.modules[name], "STAND_IN", False)]
    if loaded:
        raise RuntimeError(f"{loaded[0]} is already imported: install the stand-ins first")
    tf = _module("tensorflow", {"STAND_IN": True})
    tf.__getattr__ = _Absent("tensorflow").__getattr__  # dunders (__file__, ...) stay absent
    seqio = _module("seqio", {"STAND_IN": True, "Vocabulary": Vocabulary, "FeatureConverter": FeatureConverter,
                              "EncDecFeatureConverter": EncDecFeatureConverter})
    sys.modules.update({"tensorflow": tf, "seqio": seqio})
    return list(NAMES)
