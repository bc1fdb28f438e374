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
  CPU / bfloat16 on GPU, with the commands' persistent compilation cache, timed around the
  call (FASTA read and model load included), with `--attention` as embed's (default auto; the
  implementations used are in the output's summary). Three figures: "cold", the first call in a fresh
  process with an empty cache (every XLA compilation included: what a first-time user sees);
  "second_run", the first call in a fresh process whose cache the cold process filled (what a
  user's next job sees); "warm", a later call in the same process (programs compiled).
- hf: ProtTrans' documented recipe (prott5_embedder.py): T5EncoderModel (BertModel for
  --family bert, AlbertModel for --family albert, [CLS] and [SEP] removed), sequences sorted by length (longest first),
  batches of <= 100 proteins and < 4000 residues, longer than 1000 residues alone, float32
  on CPU and float16 on GPU, embeddings copied to host and written to HDF5. Timed from model
  load to the written file, as ours.

On CPU the model is the T5-small encoder shape (6 layers, d_model 512) or a BERT of the same
width and depth; on a GPU, the ProtT5-XL encoder shape (24 layers, d_model 1024, 32 heads x
128, d_ff 16384) or ProtBert's (30 layers, 1024, 16 heads, 4096), and the fraction of the
device's peak bf16 FLOP/s our run reaches (useful FLOPs: real tokens only).

Protocol (`benchmarks/timing.py`): `--process_pairs` pairs of fresh processes (cold, then
second run); in each, after its first call, `--repeats` rounds of ours warm and the HF route,
interleaved and alternating which goes first; medians with minimums beside, ratios of the
medians, and the 1/5/15-minute load average before and after: on a busy machine the ratio
says little. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import timing  # noqa: E402
from prottrans_jax.inference import ATTENTION_CHOICES  # noqa: E402
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


def worker(spec: dict) -> None:
    """One fresh process (prints one JSON line): our route's first call, `cold` with an empty
    compilation cache or `second_run` with the one a cold process filled, then `repeats`
    interleaved rounds of our route again (`warm`: compiled in this process) and the HF route."""
    from jax import monitoring

    events: dict[str, int] = {}
    monitoring.register_event_listener(lambda event, **_: events.__setitem__(event, events.get(event, 0) + 1))
    from prottrans_jax import compilation_cache, embed

    compilation_cache.enable(spec["cache_dir"])
    work = Path(spec["dir"])
    sample, model_dir = str(work / "sample.fasta"), str(work / "model")
    proteins = sample_proteins(Path(sample), 10**9)
    calls = iter(range(10**9))

    def ours() -> tuple[dict, float]:  # timed like the HF route: from model load to the written file
        output = work / f"ours{os.getpid()}_{next(calls)}.h5"
        summary, seconds = timing.timed(lambda: embed.embed_fasta_to_h5(sample, str(output), hf_model=model_dir,
                                                                         progress=False, attention=spec["attention"]))
        output.unlink()  # XL-shaped embeddings of 4,096 proteins are gigabytes
        return summary, seconds

    def hf() -> float:
        import torch

        output = work / f"hf{os.getpid()}.h5"
        seconds = hf_route(spec["family"], model_dir, proteins, str(output), half=torch.cuda.is_available())
        output.unlink()
        return seconds

    summary, first = ours()
    compiled = dict(events)
    sides = {"ours": lambda: ours()[1], **({"hf": hf} if spec["hf"] else {})}
    if spec["hf_first"]:
        sides = dict(reversed(list(sides.items())))
    times = timing.interleave(sides, spec["repeats"])
    summary = {key: summary[key] for key in ("dtype", "static_shapes", "batches", "long_processed_alone",
                                             "attention", "attention_short", "attention_long")}
    print(json.dumps({"first": first, "warm": times["ours"], "hf": times.get("hf", []), "summary": summary,
                      **{event.rsplit("/", 1)[1]: n for event, n in compiled.items() if "compilation_cache" in event}}))


def run_worker(spec: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(spec)],
                            stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fasta", default=None, help="FASTA to sample (default: Swiss-Prot if built, else the sample)")
    parser.add_argument("--num_proteins", type=int, default=None, help="default: 128 on CPU, 4096 on GPU")
    parser.add_argument("--shape", choices=("small", "xl"), default=None, help="default: small on CPU, xl on GPU")
    parser.add_argument("--family", choices=sorted(SHAPES), default="t5")
    parser.add_argument("--process_pairs", type=int, default=2,
                        help="pairs of fresh processes (cold: empty compilation cache; second run: filled)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="interleaved warm and HF rounds in each process, after its first call")
    parser.add_argument("--skip_hf", action="store_true", help="only our route")
    parser.add_argument("--attention", choices=ATTENTION_CHOICES, default="auto",
                        help="our route's attention (embed's --attention; default: auto, as embed)")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._worker:
        return worker(json.loads(args._worker))

    # This process only plans and reports: it must not hold the accelerator the workers need.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import numpy as np

    from prottrans_jax.trainer import peak_flops_per_device

    on_cpu = jax.default_backend() == "cpu"
    shape = args.shape or ("small" if on_cpu else "xl")
    n = args.num_proteins or (128 if on_cpu else 4096)
    fasta = Path(args.fasta) if args.fasta else (SWISSPROT if SWISSPROT.exists() else SAMPLE)
    proteins = sample_proteins(fasta, n)
    lengths = [len(s) for _, s in proteins]
    residues = sum(lengths)

    load_before = timing.load_average()
    cold, second_run, warm, hf = [], [], [], []
    workers = []
    with tempfile.TemporaryDirectory() as tmp:
        save_random_model(args.family, shape, os.path.join(tmp, "model"))
        with open(os.path.join(tmp, "sample.fasta"), "w") as f:
            for protein_id, sequence in proteins:
                f.write(f">{protein_id}\n{sequence}\n")
        for pair in range(args.process_pairs):
            cache_dir = os.path.join(tmp, f"xla{pair}")  # empty for the pair's first process
            for kind, firsts in (("cold", cold), ("second_run", second_run)):
                out = run_worker({"dir": tmp, "cache_dir": cache_dir, "family": args.family, "hf": not args.skip_hf,
                                  "repeats": args.repeats, "hf_first": len(workers) % 2 == 1,
                                  "attention": args.attention})
                firsts.append(out["first"])
                warm += out["warm"]
                hf += out["hf"]
                workers.append({"kind": kind, **{k: v for k, v in out.items() if k != "summary"}})
        cache_entries = len(os.listdir(os.path.join(tmp, "xla0")))

    def rates(seconds):
        return {"seconds": round(seconds, 2), "proteins_per_second": round(n / seconds, 2),
                "residues_per_second": round(residues / seconds, 1)}

    def spread(times):
        return {**rates(statistics.median(times)), "seconds_min": round(min(times), 2), "runs": len(times)}

    summary = out["summary"]
    result = {
        "benchmark": "embed_throughput",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {jax.devices()[0].device_kind}",
        "load_average": timing.load_report(load_before),
        "measured": f"{args.process_pairs} pairs of fresh processes (cold: empty compilation cache, then "
                    "second run: the cache the cold one filled); in each, after its first call, "
                    f"{args.repeats} interleaved round(s) of ours warm and HF; seconds from model load to "
                    "the written file, medians (min beside)",
        "fasta": str(fasta.relative_to(REPO) if fasta.is_relative_to(REPO) else fasta),
        "proteins": n, "residues": residues, "length_median": int(np.median(lengths)), "length_max": max(lengths),
        "family": args.family, "model_shape": {"encoder": shape, **SHAPES[args.family][shape]},
        "ours": {**summary, "cold": spread(cold), "second_run": spread(second_run), "warm": spread(warm),
                 "compilation_cache_entries": cache_entries},
        "workers": workers,
    }
    if hf:
        result["hf"] = {"dtype": "float32" if on_cpu else "float16", **spread(hf)}
        for name, times in (("cold", cold), ("warm", warm), ("second_run", second_run)):
            result[f"speedup_vs_hf_{name}"] = timing.ratio(hf, times)["median"]  # of the medians
    peak = None if on_cpu else peak_flops_per_device()
    if peak:
        result["fraction_of_peak_flops_warm"] = round(
            encoder_flops(args.family, shape, lengths) / statistics.median(warm) / peak, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
