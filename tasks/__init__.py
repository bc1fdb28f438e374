"""SeqIO task registrations, imported by module name (T5X's MIXTURE_OR_TASK_MODULE convention).

Importing `tasks` registers the bundled UniProtKB sample as corpus `sample`
(`sample_prott5_denoise`, `sample_t5_span_corruption`, `sample_bert_mlm`). Its directory is
`$PROTTRANS_SAMPLE_CORPUS_DIR`, by default `runs/demo/corpus` in the repository, where
`make demo` builds it. Register your own corpora with `tasks.register_corpus(name, dir)`.
"""

import os
from pathlib import Path

import prottrans_jax  # noqa: F401  (first: it quiets TensorFlow's CUDA noise on CPU machines)
from tasks.corpus import OBJECTIVES, CorpusSource, register_corpus

DEFAULT_SAMPLE_CORPUS_DIR = Path(__file__).resolve().parents[1] / "runs" / "demo" / "corpus"
SAMPLE_CORPUS_DIR = os.environ.get("PROTTRANS_SAMPLE_CORPUS_DIR", str(DEFAULT_SAMPLE_CORPUS_DIR))

register_corpus("sample", SAMPLE_CORPUS_DIR)

__all__ = ["OBJECTIVES", "CorpusSource", "register_corpus", "SAMPLE_CORPUS_DIR"]
