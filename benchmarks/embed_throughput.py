"""Embedding throughput against the Hugging Face route, same model, same proteins, same run.

    python benchmarks/embed_throughput.py                      # CPU: T5-small encoder shape, float32
    python benchmarks/embed_throughput.py --num_proteins 512   # more proteins, steadier figures

Proteins: a fixed random sample of Swiss-Prot 2014_01 (runs/corpora/swissprot_2014_01.fasta.gz,
from scripts/build_swissprot_corpus.sh) when present, else the bundled UniProtKB sample: a
real length distribution, long tail included. Weights are random (speed does not depend on
them), saved as a local Hugging Face directory that both routes read.

- ours: `prottrans_jax.embed.embed_fasta_to_h5`, per residue, default batching, float32 on
  CPU / bfloat16 on GPU, timed around the call (FASTA read and model load included). "cold" is
  the first call (XLA compilation included, what a user sees); "warm" is a second call on a
  new output (programs already compiled).
- hf: ProtTrans' documented recipe (prott5_embedder.py): T5EncoderModel, sequences sorted by
  length (longest first), batches of <= 100 proteins and < 4000 residues, longer than 1000
  residues alone, float32 on CPU and float16 on GPU, embeddings copied to host and written to
  HDF5. Timed from model load to the written file, as ours.

On CPU the model is the T5-small encoder shape (6 layers, d_model 512); on a GPU, the
ProtT5-XL encoder shape (24 layers, d_model 1024, 32 heads x 128, d_ff 16384), and the
fraction of the device's peak bf16 FLOP/s our run reaches (useful FLOPs: real tokens only).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SWISSPROT = REPO / "runs" / "corpora" / "swissprot_2014_01.fasta.gz"
SAMPLE = REPO / "data" / "sample" / "uniprot_sample.fasta.gz"
SHAPES = {  # Hugging Face T5Config fields of the encoder
    "small": dict(d_model=512, num_heads=8, d_kv=64, d_ff=2048, num_layers=6),
    "xl": dict(d_model=1024, num_heads=32, d_kv=128, d_ff=16384, num_layers=24),
}


def sample_proteins(path: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n proteins drawn uniformly (reservoir sampling, fixed seed) from a FASTA file."""
    from prottrans_jax.fasta import read_fasta

    rng = random.Random(seed)
    reservoir: list[tuple[str, str]] = []
    for i, record in enumerate(read_fasta(path, policy="skip")):
        if len(reservoir) < n:
            reservoir.append((record.id, record.sequence))
        elif (j := rng.randrange(i + 1)) < n:
            reservoir[j] = (record.id, record.sequence)
    return reservoir


def save_random_model(shape: str, directory: str) -> None:
    import torch
    import transformers

    from prottrans_jax.convert.t5 import write_tokenizer

    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=128, feed_forward_proj="relu", dropout_rate=0.0,
                                   num_decoder_layers=0, **SHAPES[shape])
    transformers.T5EncoderModel(config).save_pretrained(directory)
    write_tokenizer(directory)


def hf_route(model_dir: str, proteins: list[tuple[str, str]], output: str, half: bool) -> float:
    """prott5_embedder.py's loop; returns seconds from model load to the written file."""
    import h5py
    import torch
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    tokenizer = transformers.T5Tokenizer.from_pretrained(model_dir)
    model = transformers.T5EncoderModel.from_pretrained(model_dir).to(device).eval()
    if half:
        model = model.half()
    ordered = sorted(proteins, key=lambda p: len(p[1]), reverse=True)
    results, batch = {}, []
    for index, (protein_id, sequence) in enumerate(ordered, start=1):
        sequence = sequence.upper().replace("U", "X").replace("Z", "X").replace("O", "X").replace("B", "X")
        batch.append((protein_id, " ".join(sequence), len(sequence)))
        residues = sum(n for _, _, n in batch) + len(sequence)
        if len(batch) >= 100 or residues >= 4000 or index == len(ordered) or len(sequence) > 1000:
            ids, texts, lengths = zip(*batch)
            batch = []
            encoding = tokenizer(list(texts), add_special_tokens=True, padding="longest", return_tensors="pt")
            with torch.no_grad():
                hidden = model(encoding.input_ids.to(device), attention_mask=encoding.attention_mask.to(device))
            for row, protein_id_ in enumerate(ids):
                results[protein_id_] = hidden.last_hidden_state[row, : lengths[row]].float().cpu().numpy()
    with h5py.File(output, "w") as f:
        for protein_id, array in results.items():
            f.create_dataset(protein_id.replace("/", "_"), data=array)
    return time.perf_counter() - start


def encoder_flops(shape: str, lengths: list[int]) -> float:
    """Useful forward FLOPs: matmuls (2 x params per token) and attention over real tokens."""
    s = SHAPES[shape]
    inner = s["num_heads"] * s["d_kv"]
    per_token = 2 * (4 * s["d_model"] * inner + 2 * s["d_model"] * s["d_ff"])
    total = 0.0
    for n in lengths:
        tokens = n + 1  # </s>
        total += s["num_layers"] * (tokens * per_token + 4 * tokens * tokens * inner)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fasta", default=None, help="FASTA to sample (default: Swiss-Prot if built, else the sample)")
    parser.add_argument("--num_proteins", type=int, default=None, help="default: 128 on CPU, 4096 on GPU")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: small on CPU, xl on GPU")
    parser.add_argument("--skip_hf", action="store_true", help="only our route")
    args = parser.parse_args()

    import jax
    import numpy as np

    from prottrans_jax import embed
    from prottrans_jax.trainer import peak_flops_per_device

    on_cpu = jax.default_backend() == "cpu"
    shape = args.shape or ("small" if on_cpu else "xl")
    n = args.num_proteins or (128 if on_cpu else 4096)
    fasta = Path(args.fasta) if args.fasta else (SWISSPROT if SWISSPROT.exists() else SAMPLE)
    proteins = sample_proteins(fasta, n)
    lengths = [len(s) for _, s in proteins]
    residues = sum(lengths)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        save_random_model(shape, model_dir)
        sample = os.path.join(tmp, "sample.fasta")
        with open(sample, "w") as f:
            for protein_id, sequence in proteins:
                f.write(f">{protein_id}\n{sequence}\n")
        runs = []
        for name in ("cold", "warm"):  # timed like the HF route: from model load to the written file
            start = time.perf_counter()
            summary = embed.embed_fasta_to_h5(sample, os.path.join(tmp, f"{name}.h5"), hf_model=model_dir)
            runs.append((summary, time.perf_counter() - start))
        (cold, cold_seconds), (_, warm_seconds) = runs
        hf_seconds = None
        if not args.skip_hf:
            import torch

            hf_seconds = hf_route(model_dir, proteins, os.path.join(tmp, "hf.h5"), half=torch.cuda.is_available())

    def rates(seconds):
        return {"seconds": round(seconds, 2), "proteins_per_second": round(n / seconds, 2),
                "residues_per_second": round(residues / seconds, 1)}

    result = {
        "benchmark": "embed_throughput",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {jax.devices()[0].device_kind}",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "fasta": str(fasta.relative_to(REPO) if fasta.is_relative_to(REPO) else fasta),
        "proteins": n, "residues": residues, "length_median": int(np.median(lengths)), "length_max": max(lengths),
        "model_shape": {"encoder": shape, **SHAPES[shape]},
        "ours": {"dtype": cold["dtype"], "static_shapes": cold["static_shapes"], "batches": cold["batches"],
                 "long_processed_alone": cold["long_processed_alone"],
                 "cold": rates(cold_seconds), "warm": rates(warm_seconds)},
    }
    if hf_seconds is not None:
        result["hf"] = {"dtype": "float32" if on_cpu else "float16", **rates(hf_seconds)}
        result["speedup_vs_hf_cold"] = round(hf_seconds / cold_seconds, 2)
        result["speedup_vs_hf_warm"] = round(hf_seconds / warm_seconds, 2)
    peak = None if on_cpu else peak_flops_per_device()
    if peak:
        result["fraction_of_peak_flops_warm"] = round(encoder_flops(shape, lengths) / warm_seconds / peak, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
