"""Embedding throughput against the Hugging Face route, same model, same proteins, same run.

    python benchmarks/embed_throughput.py                      # CPU: T5-small encoder shape, float32
    python benchmarks/embed_throughput.py --family bert        # ProtBert-shaped: BertModel
    python benchmarks/embed_throughput.py --family albert      # ProtAlbert-shaped: AlbertModel
    python benchmarks/embed_throughput.py --family electra     # ProtElectra's discriminator: ElectraModel
    python benchmarks/embed_throughput.py --num_proteins 512   # more proteins, steadier figures

Proteins: a fixed random sample of Swiss-Prot 2014_01 (runs/corpora/swissprot_2014_01.fasta.gz,
from scripts/build_swissprot_corpus.sh) when present, else the bundled UniProtKB sample: a
real length distribution, long tail included. Weights are random (speed does not depend on
them), saved as a local Hugging Face directory that both routes read.

- ours: `prottrans_jax.embed.embed_fasta_to_h5`, per residue, default batching, float32 on
  CPU / bfloat16 on GPU, timed around the call (FASTA read and model load included). "cold" is
  the first call (XLA compilation included, what a user sees); "warm" is a second call on a
  new output (programs already compiled).
- hf: ProtTrans' documented recipe (prott5_embedder.py): T5EncoderModel (BertModel for
  --family bert, AlbertModel for --family albert, [CLS] and [SEP] removed), sequences sorted by length (longest first),
  batches of <= 100 proteins and < 4000 residues, longer than 1000 residues alone, float32
  on CPU and float16 on GPU, embeddings copied to host and written to HDF5. Timed from model
  load to the written file, as ours.

On CPU the model is the T5-small encoder shape (6 layers, d_model 512) or a BERT of the same
width and depth; on a GPU, the ProtT5-XL encoder shape (24 layers, d_model 1024, 32 heads x
128, d_ff 16384) or ProtBert's (30 layers, 1024, 16 heads, 4096), and the fraction of the
device's peak bf16 FLOP/s our run reaches (useful FLOPs: real tokens only). Warm runs and
the HF route are repeated (`--repeats`, interleaved; min and median reported) and the load
average is printed: on a busy machine the ratio says little. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SWISSPROT = REPO / "runs" / "corpora" / "swissprot_2014_01.fasta.gz"
SAMPLE = REPO / "data" / "sample" / "uniprot_sample.fasta.gz"
SHAPES = {  # Hugging Face config fields of the encoder, per family
    "t5": {"small": dict(d_model=512, num_heads=8, d_kv=64, d_ff=2048, num_layers=6),
           "xl": dict(d_model=1024, num_heads=32, d_kv=128, d_ff=16384, num_layers=24)},
    "bert": {"small": dict(hidden_size=512, num_attention_heads=8, intermediate_size=2048, num_hidden_layers=6),
             "xl": dict(hidden_size=1024, num_attention_heads=16, intermediate_size=4096, num_hidden_layers=30)},
    "albert": {"small": dict(embedding_size=128, hidden_size=512, num_attention_heads=8, intermediate_size=2048,
                             num_hidden_layers=6),  # one layer shared by the 6
               "xl": dict(embedding_size=128, hidden_size=4096, num_attention_heads=64, intermediate_size=16384,
                          num_hidden_layers=12)},  # ProtAlbert's
    "electra": {"small": dict(embedding_size=512, hidden_size=512, num_attention_heads=8, intermediate_size=2048,
                              num_hidden_layers=6),  # the discriminator, embedding as wide
                "xl": dict(embedding_size=1024, hidden_size=1024, num_attention_heads=16, intermediate_size=4096,
                           num_hidden_layers=30)},  # ProtElectra's discriminator
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


def save_random_model(family: str, shape: str, directory: str) -> None:
    import torch
    import transformers

    from prottrans_jax.convert import albert as albert_convert, bert as bert_convert, electra as electra_convert
    from prottrans_jax.convert import t5 as t5_convert

    torch.manual_seed(0)
    if family == "t5":
        config = transformers.T5Config(vocab_size=128, feed_forward_proj="relu", dropout_rate=0.0,
                                       num_decoder_layers=0, **SHAPES["t5"][shape])
        transformers.T5EncoderModel(config).save_pretrained(directory)
        t5_convert.write_tokenizer(directory)
    elif family == "albert":
        config = transformers.AlbertConfig(vocab_size=34, max_position_embeddings=40000, hidden_act="gelu",
                                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                           **SHAPES["albert"][shape])
        transformers.AlbertModel(config, add_pooling_layer=False).save_pretrained(directory)
        albert_convert.write_tokenizer(directory)
    elif family == "electra":  # a discriminator directory, as released (its head is not timed)
        config = transformers.ElectraConfig(vocab_size=30, max_position_embeddings=40000, hidden_dropout_prob=0.0,
                                            attention_probs_dropout_prob=0.0, **SHAPES["electra"][shape])
        transformers.ElectraForPreTraining(config).save_pretrained(directory)
        electra_convert.write_tokenizer(directory)
    else:
        config = transformers.BertConfig(vocab_size=30, max_position_embeddings=40000, hidden_dropout_prob=0.0,
                                         attention_probs_dropout_prob=0.0, **SHAPES["bert"][shape])
        transformers.BertModel(config, add_pooling_layer=False).save_pretrained(directory)
        bert_convert.write_tokenizer(directory)


def hf_route(family: str, model_dir: str, proteins: list[tuple[str, str]], output: str, half: bool) -> float:
    """prott5_embedder.py's loop; returns seconds from model load to the written file."""
    import h5py
    import torch
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    if family == "t5":
        tokenizer = transformers.T5Tokenizer.from_pretrained(model_dir)
        model = transformers.T5EncoderModel.from_pretrained(model_dir).to(device).eval()
        first = 0  # residues, then </s>
    else:
        tokenizer_cls, model_cls, extra = {
            "albert": (transformers.AlbertTokenizer, transformers.AlbertModel, dict(add_pooling_layer=False)),
            "electra": (transformers.ElectraTokenizer, transformers.ElectraModel, {}),
            "bert": (transformers.BertTokenizer, transformers.BertModel, dict(add_pooling_layer=False))}[family]
        tokenizer = tokenizer_cls.from_pretrained(model_dir)
        model = model_cls.from_pretrained(model_dir, **extra).to(device).eval()
        first = 1  # [CLS], residues, [SEP]
    if half:
        model = model.half()
    results = hf_embed(model, tokenizer, proteins, first, device)
    with h5py.File(output, "w") as f:
        for protein_id, array in results.items():
            f.create_dataset(protein_id.replace("/", "_"), data=array)
    return time.perf_counter() - start


def hf_embed(model, tokenizer, proteins: list[tuple[str, str]], first: int, device) -> dict[str, np.ndarray]:
    """prott5_embedder.py's batching: sorted longest first, <= 100 proteins and < 4000 residues
    per batch, longer than 1000 alone; per-residue states copied to host. `first`: how many
    framing ids precede the residues."""
    import torch

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
                results[protein_id_] = hidden.last_hidden_state[row, first:first + lengths[row]].float().cpu().numpy()
    return results


def encoder_flops(family: str, shape: str | dict, lengths: list[int]) -> float:
    """Useful forward FLOPs: matmuls (2 x params per token) and attention over real tokens.
    `shape`: a name of SHAPES[family] or such a dict of Hugging Face config fields."""
    s = SHAPES[family][shape] if isinstance(shape, str) else shape
    if family == "t5":
        d, inner, ff, layers, special = s["d_model"], s["num_heads"] * s["d_kv"], s["d_ff"], s["num_layers"], 1
    else:
        d, ff, layers, special = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], 2
        inner = d
    per_token = 2 * (4 * d * inner + 2 * d * ff)
    width = s.get("embedding_size", d)
    projection = 2 * width * d if width != d else 0  # ALBERT's E -> hidden (ELECTRA's when narrower)
    total = 0.0
    for n in lengths:
        tokens = n + special  # </s>, or [CLS] and [SEP]
        total += layers * (tokens * per_token + 4 * tokens * tokens * inner) + tokens * projection
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fasta", default=None, help="FASTA to sample (default: Swiss-Prot if built, else the sample)")
    parser.add_argument("--num_proteins", type=int, default=None, help="default: 128 on CPU, 4096 on GPU")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: small on CPU, xl on GPU")
    parser.add_argument("--family", choices=sorted(SHAPES), default="t5")
    parser.add_argument("--repeats", type=int, default=2, help="warm runs and HF runs, interleaved")
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

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        save_random_model(args.family, shape, model_dir)
        sample = os.path.join(tmp, "sample.fasta")
        with open(sample, "w") as f:
            for protein_id, sequence in proteins:
                f.write(f">{protein_id}\n{sequence}\n")

        def ours(name):  # timed like the HF route: from model load to the written file
            start = time.perf_counter()
            summary = embed.embed_fasta_to_h5(sample, os.path.join(tmp, f"{name}.h5"), hf_model=model_dir)
            return summary, time.perf_counter() - start

        cold, cold_seconds = ours("cold")
        warm_seconds, hf_seconds = [], []
        for round_ in range(args.repeats):
            warm_seconds.append(ours(f"warm{round_}")[1])
            if not args.skip_hf:
                import torch

                hf_seconds.append(hf_route(args.family, model_dir, proteins, os.path.join(tmp, f"hf{round_}.h5"),
                                           half=torch.cuda.is_available()))

    def rates(seconds):
        return {"seconds": round(seconds, 2), "proteins_per_second": round(n / seconds, 2),
                "residues_per_second": round(residues / seconds, 1)}

    def spread(times):
        return {**rates(statistics.median(times)), "seconds_min": round(min(times), 2)}

    result = {
        "benchmark": "embed_throughput",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {jax.devices()[0].device_kind}",
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "fasta": str(fasta.relative_to(REPO) if fasta.is_relative_to(REPO) else fasta),
        "proteins": n, "residues": residues, "length_median": int(np.median(lengths)), "length_max": max(lengths),
        "family": args.family, "model_shape": {"encoder": shape, **SHAPES[args.family][shape]},
        "ours": {"dtype": cold["dtype"], "static_shapes": cold["static_shapes"], "batches": cold["batches"],
                 "long_processed_alone": cold["long_processed_alone"],
                 "cold": rates(cold_seconds), "warm": spread(warm_seconds)},
    }
    warm = statistics.median(warm_seconds)
    if hf_seconds:
        hf = statistics.median(hf_seconds)
        result["hf"] = {"dtype": "float32" if on_cpu else "float16", **spread(hf_seconds)}
        result["speedup_vs_hf_cold"] = round(hf / cold_seconds, 2)
        result["speedup_vs_hf_warm"] = round(hf / warm, 2)
    peak = None if on_cpu else peak_flops_per_device()
    if peak:
        result["fraction_of_peak_flops_warm"] = round(encoder_flops(args.family, shape, lengths) / warm / peak, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
