"""Train-step throughput: our jitted step vs the Hugging Face (PyTorch) model, same config, one run.

    python benchmarks/train_throughput.py [--family t5|bert|albert|electra|xlnet|txl|all] [--steps 10] \
        [--repeats 3] [--size auto|cpu|base] [--torch_threads N]

For each family, the same config on both sides (no dropout), the same batch (unpacked rows),
AdamW (lr 1e-4, weight decay 0.01: the optimizer both libraries ship):
- t5: our ProtT5 (`EncoderDecoderModel`, T5 1.0 ReLU, untied output layer) vs
  `T5ForConditionalGeneration`; every decoder token a target; tokens = encoder + decoder.
- bert: our ProtBert (`BertMLMModel`) vs `BertForMaskedLM`; 15% of the tokens scored (labels
  -100 elsewhere), as `bert_mlm`; tokens = input tokens.
- albert: our ProtAlbert (`AlbertMLMModel`: factorised embedding, one layer shared across
  depth) vs `AlbertForMaskedLM`, the same config, batch and scoring as bert.
- electra: our ProtElectra (`ElectraPretrainModel`: generator MLM, samples, discriminator) vs
  the same step written with `ElectraForMaskedLM` and `ElectraForPreTraining` sharing their
  embeddings (transformers has no ELECTRA pre-training class): MLM + 50 x replaced-token BCE.
- xlnet: our ProtXLNet (`XLNetPermutationLMModel`: two-stream attention, permutation-LM loss)
  vs `XLNetLMHeadModel`, the same perm_mask / target_mapping batch (`objectives.
  permutation_lm_example` per row: full rows, `permutation_lm_num_predict` targets, labels
  -100 on padding targets); no memory; tokens = input tokens.
- txl: our ProtTXL (`TransfoXLCausalLMModel`, memory of `mem_len` tokens carried step to
  step in the train state) vs its trusted reference, `XLNetLMHeadModel(attn_type="uni",
  bi_data=False, ff_activation="relu", untie_r=True)` (XLNetModel plus the tied LM head)
  with `use_mems_train` and each step's `mems` fed to the next; both without the sqrt(d)
  embedding scale, as the parity tests; the batch is `stream.stream_rows`' first; tokens =
  segment tokens. Both sides attend to a full memory from the second warm-up step on.
CPU: a small config in float32. GPU (when JAX and torch both see one): base size (T5-base,
BERT-base), 512 tokens, bfloat16 compute (ours: float32 params + bf16 compute; HF:
torch.autocast bf16), plus MFU from each model's own FLOPs formula (`flops_per_batch`).

The two sides run interleaved, `--repeats` rounds of `--steps` steps each (after compiling
and a warm-up), and the JSON reports each side's min and median step time, the ratio of the
medians (and of the minimums), and the machine's 1/5/15-minute load average before and
after (`benchmarks/timing.py`): a ratio measured on a busy machine says little (PyTorch's
threads suffer more from contention than XLA's; on a loaded 2-core machine `taskset -c 1`
with `--torch_threads 1` puts both sides on one core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from prottrans_jax import partitioning  # noqa: E402
from prottrans_jax.data import objectives  # noqa: E402
from prottrans_jax.data.stream import stream_rows  # noqa: E402
from prottrans_jax.models.albert import AlbertConfig, AlbertMLMModel  # noqa: E402
from prottrans_jax.models.bert import BertConfig, BertMLMModel  # noqa: E402
from prottrans_jax.models.electra import ElectraConfig, ElectraPretrainModel  # noqa: E402
from prottrans_jax.models.encoder_decoder import EncoderDecoderModel  # noqa: E402
from prottrans_jax.models.t5 import T5Config  # noqa: E402
from prottrans_jax.models.transfo_xl import TransfoXLCausalLMModel, TransfoXLConfig  # noqa: E402
from prottrans_jax.models.xlnet import SPECIAL_IDS, XLNetConfig, XLNetPermutationLMModel  # noqa: E402
from prottrans_jax.trainer import Trainer, peak_flops_per_device  # noqa: E402

from benchmarks import timing  # noqa: E402

SIZES = {
    "t5": {
        "cpu": dict(d_model=128, num_heads=4, head_dim=32, d_ff=512, num_encoder_layers=2,
                    num_decoder_layers=2, dtype="float32", batch=8, length=128),
        "base": dict(d_model=768, num_heads=12, head_dim=64, d_ff=3072, num_encoder_layers=12,
                     num_decoder_layers=12, dtype="bfloat16", batch=32, length=512),
    },
    "bert": {
        "cpu": dict(hidden_size=128, num_heads=4, intermediate_size=512, num_layers=2,
                    dtype="float32", batch=8, length=256),
        "base": dict(hidden_size=768, num_heads=12, intermediate_size=3072, num_layers=12,
                     dtype="bfloat16", batch=32, length=512),
    },
    "albert": {  # BERT's sizes with ALBERT's factorised embedding (base: albert-base-v2)
        "cpu": dict(embedding_size=64, hidden_size=128, num_heads=4, intermediate_size=512, num_layers=2,
                    dtype="float32", batch=8, length=256),
        "base": dict(embedding_size=128, hidden_size=768, num_heads=12, intermediate_size=3072, num_layers=12,
                     dtype="bfloat16", batch=32, length=512),
    },
    "electra": {  # ELECTRA-small-like at CPU size; ELECTRA-base (generator 1/3 wide) on GPUs
        "cpu": dict(embedding_size=128, hidden_size=128, num_heads=4, intermediate_size=512, num_layers=2,
                    generator_hidden_size=64, generator_num_heads=2, generator_intermediate_size=256,
                    generator_num_layers=2, dtype="float32", batch=8, length=256),
        "base": dict(embedding_size=768, hidden_size=768, num_heads=12, intermediate_size=3072, num_layers=12,
                     generator_hidden_size=256, generator_num_heads=4, generator_intermediate_size=1024,
                     generator_num_layers=12, dtype="bfloat16", batch=32, length=512),
    },
    "xlnet": {  # BERT's CPU sizes (head_dim = hidden / heads, as XLNetConfig requires); XLNet-base
        "cpu": dict(hidden_size=128, num_heads=4, head_dim=32, intermediate_size=512, num_layers=2,
                    dtype="float32", batch=8, length=256),
        "base": dict(hidden_size=768, num_heads=12, head_dim=64, intermediate_size=3072, num_layers=12,
                     dtype="bfloat16", batch=32, length=512),
    },
    "txl": {  # the same sizes; memory: the tiny gin's 32 tokens on CPU, base.gin's 512 on GPUs
        "cpu": dict(hidden_size=128, num_heads=4, head_dim=32, intermediate_size=512, num_layers=2,
                    mem_len=32, dtype="float32", batch=8, length=256),
        "base": dict(hidden_size=768, num_heads=12, head_dim=64, intermediate_size=3072, num_layers=12,
                     mem_len=512, dtype="bfloat16", batch=32, length=512),
    },
}
XLNET_VOCAB = TXL_VOCAB = 32  # the gin files' vocab_size (UNVERIFIED there; any size times the same)


# ------------------------------------------------------------------------------ batches


def t5_batch(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(3, 28, (batch, length)).astype(np.int32)
    masked = rng.random((batch, length)) < 0.15
    inputs = np.where(masked, 127, targets).astype(np.int32)
    decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    return {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
            "decoder_target_tokens": targets, "decoder_loss_weights": np.ones_like(targets),
            "decoder_masked_weights": masked.astype(np.int32)}


def bert_batch(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(5, 30, (batch, length)).astype(np.int32)
    chosen = rng.random((batch, length)) < 0.15
    inputs = np.where(chosen, 4, targets).astype(np.int32)  # [MASK]
    return {"encoder_input_tokens": inputs, "encoder_target_tokens": targets,
            "encoder_loss_weights": chosen.astype(np.int32), "encoder_masked_weights": chosen.astype(np.int32)}


def xlnet_batch(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full rows (`residues <sep> <cls>`) with XLNet's permutation-LM features, as the
    PermutationLMFeatureConverter names them."""
    rng = np.random.default_rng(seed)
    num_predict = objectives.permutation_lm_num_predict(length)
    rows = [objectives.permutation_lm_example(rng.integers(9, 29, length - 2), length, num_predict, rng,
                                              sep_id=SPECIAL_IDS["<sep>"], cls_id=SPECIAL_IDS["<cls>"],
                                              pad_id=SPECIAL_IDS["<pad>"]) for _ in range(batch)]
    names = {"inputs": "encoder_input_tokens", "input_mask": "attention_mask", "token_types": "token_types",
             "perm_mask": "perm_mask", "target_mapping": "target_mapping", "targets": "target_tokens",
             "target_weights": "target_weights"}
    return {model_name: np.stack([row[name] for row in rows]) for name, model_name in names.items()}


def txl_batch(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The first rows x length segment of a stream of random proteins, each ended by <eos> (2, prot_txl_vocabulary)."""
    rng = np.random.default_rng(seed)

    def proteins():
        while True:
            residues = rng.integers(3, 28, int(rng.integers(50, 500))).astype(np.int32)
            yield {"targets": np.append(residues, 2),
                   "targets_masked": np.append(np.full(len(residues), objectives.CHOSEN), 0)}

    return next(stream_rows(proteins(), batch, length))


# ------------------------------------------------------------------------------ ours


class Ours:
    """Our compiled train step on one device; `time(steps)` -> seconds per step."""

    def __init__(self, model, batch: dict):
        self.partitioner = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
        self.trainer = Trainer(model, optax.adamw(1e-4, weight_decay=0.01), self.partitioner,
                               batch_size=len(next(iter(batch.values()))))  # sizes a carry (txl's memory)
        self.state = self.trainer.init_state()
        self.flops = model.flops_per_batch(batch)
        with self.partitioner.context():
            self.batch = self.partitioner.host_local_batch_to_global(batch)
            self.metrics = self.trainer.new_metrics(self.batch)
        self.time(2)  # compile + warm-up
        self.compile_seconds = self.trainer.compile_seconds

    def time(self, steps: int) -> float:
        with self.partitioner.context():
            jax.block_until_ready(self.state)
            start = time.perf_counter()
            for _ in range(steps):
                self.state, self.metrics = self.trainer.train_step(self.state, self.batch, self.metrics)
            jax.block_until_ready(self.metrics)
        return (time.perf_counter() - start) / steps


# ------------------------------------------------------------------------------ Hugging Face


class HF:
    """The same step in PyTorch: forward, backward, AdamW; `time(steps)` -> seconds per step.
    For txl each step's `mems` (detached by transformers) feed the next."""

    def __init__(self, family: str, config, batch: dict, device: str):
        import torch
        import transformers

        self.torch, self.device = torch, device
        self.carry = {} if family == "txl" else None
        if family in ("xlnet", "txl"):
            self.model = transformers.XLNetLMHeadModel(transformers.XLNetConfig(
                vocab_size=config.vocab_size, d_model=config.hidden_size, n_layer=config.num_layers,
                n_head=config.num_heads, d_inner=config.intermediate_size, ff_activation="relu", untie_r=True,
                dropout=0.0, layer_norm_eps=config.layer_norm_eps, bi_data=False, clamp_len=-1,
                attn_type="uni" if family == "txl" else "bi", mem_len=config.mem_len or None, reuse_len=None,
                use_mems_train=family == "txl"))
            if family == "txl":
                self.inputs = dict(input_ids=torch.as_tensor(batch["decoder_input_tokens"], dtype=torch.long),
                                   labels=torch.as_tensor(batch["decoder_target_tokens"], dtype=torch.long))
            else:
                labels = np.where(batch["target_weights"] > 0, batch["target_tokens"], -100)
                self.inputs = dict(
                    input_ids=torch.as_tensor(batch["encoder_input_tokens"], dtype=torch.long),
                    attention_mask=torch.as_tensor(batch["attention_mask"], dtype=torch.float32),
                    token_type_ids=torch.as_tensor(batch["token_types"], dtype=torch.long),
                    perm_mask=torch.as_tensor(batch["perm_mask"], dtype=torch.float32),
                    target_mapping=torch.as_tensor(batch["target_mapping"], dtype=torch.float32),
                    labels=torch.as_tensor(labels, dtype=torch.long))
        elif family == "electra":
            self.model = torch_electra(config)
            targets = torch.as_tensor(batch["encoder_target_tokens"], dtype=torch.long)
            self.inputs = dict(input_ids=torch.as_tensor(batch["encoder_input_tokens"], dtype=torch.long),
                               labels=torch.as_tensor(np.where(batch["encoder_loss_weights"] > 0, targets, -100),
                                                      dtype=torch.long), original=targets)
        elif family == "t5":
            hf_config = transformers.T5Config(
                vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.head_dim,
                d_ff=config.d_ff, num_layers=config.num_encoder_layers,
                num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
                feed_forward_proj="relu", dropout_rate=0.0, tie_word_embeddings=False,
                decoder_start_token_id=0, pad_token_id=0)
            self.model = transformers.T5ForConditionalGeneration(hf_config)
            tensors = {k: torch.as_tensor(v, dtype=torch.long) for k, v in batch.items()}
            self.inputs = dict(input_ids=tensors["encoder_input_tokens"],
                               decoder_input_ids=tensors["decoder_input_tokens"],
                               labels=tensors["decoder_target_tokens"])
        else:
            common = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                          num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                          intermediate_size=config.intermediate_size,
                          max_position_embeddings=config.max_position_embeddings,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            if family == "albert":
                self.model = transformers.AlbertForMaskedLM(transformers.AlbertConfig(
                    embedding_size=config.embedding_size, hidden_act="gelu", **common))
            else:
                self.model = transformers.BertForMaskedLM(transformers.BertConfig(**common))
            tokens = torch.as_tensor(batch["encoder_input_tokens"], dtype=torch.long)
            labels = torch.as_tensor(np.where(batch["encoder_loss_weights"] > 0, batch["encoder_target_tokens"], -100),
                                     dtype=torch.long)
            self.inputs = dict(input_ids=tokens, labels=labels)
        self.model = self.model.to(device).train()
        self.inputs = {k: v.to(device) for k, v in self.inputs.items()}
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.autocast = torch.autocast(device_type=device, dtype=torch.bfloat16,
                                       enabled=config.dtype == "bfloat16")
        self.time(2)  # warm-up

    def step(self) -> None:
        with self.autocast:
            out = self.model(**self.inputs, **(self.carry or {}))
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.carry is not None:
            self.carry = {"mems": out.mems}

    def time(self, steps: int) -> float:
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps


def torch_electra(config: ElectraConfig):
    """ELECTRA's pre-training step in PyTorch, from transformers' two towers: the generator's
    MLM loss, Gumbel-max samples at the chosen positions (no gradient), the discriminator's
    replaced-token BCE over every token; the towers share one embeddings module."""
    import torch
    import transformers

    def tower(prefix: str, cls):
        return cls(transformers.ElectraConfig(
            vocab_size=config.vocab_size, embedding_size=config.embedding_size,
            hidden_size=getattr(config, f"{prefix}hidden_size"), num_hidden_layers=getattr(config, f"{prefix}num_layers"),
            num_attention_heads=getattr(config, f"{prefix}num_heads"),
            intermediate_size=getattr(config, f"{prefix}intermediate_size"),
            max_position_embeddings=config.max_position_embeddings, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0))

    class ElectraStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.generator = tower("generator_", transformers.ElectraForMaskedLM)
            self.discriminator = tower("", transformers.ElectraForPreTraining)
            self.generator.electra.embeddings = self.discriminator.electra.embeddings
            self.generator.generator_lm_head.weight = self.discriminator.electra.embeddings.word_embeddings.weight

        def forward(self, input_ids, labels, original):
            generated = self.generator(input_ids=input_ids, labels=labels)
            with torch.no_grad():
                uniform = torch.rand_like(generated.logits, dtype=torch.float32).clamp_(1e-9, 1.0)
                sampled = (generated.logits.float() - torch.log(-torch.log(uniform))).argmax(-1)
            corrupted = torch.where(labels != -100, sampled, original)
            logits = self.discriminator(input_ids=corrupted).logits
            replaced = (corrupted != original).to(logits.dtype)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, replaced)
            return types.SimpleNamespace(loss=generated.loss + 50.0 * bce)

    return ElectraStep()


# ------------------------------------------------------------------------------ one family


def build(family: str, spec: dict) -> tuple:
    """(config, model, batch, tokens per step) of one family at one size (a `SIZES` entry or
    its like: the config's fields plus `batch` and `length`), dropout off."""
    spec = dict(spec)
    batch_size, length = spec.pop("batch"), spec.pop("length")
    if family == "t5":
        config = T5Config(vocab_size=128, feed_forward="relu", dropout_rate=0.0,
                          tie_word_embeddings=False, scale_decoder_outputs=False, **spec)
        model, batch, tokens = EncoderDecoderModel(config, z_loss=0.0), t5_batch(batch_size, length), 2 * length
    elif family == "xlnet":
        config = XLNetConfig(vocab_size=XLNET_VOCAB, dropout_prob=0.0, attention_dropout_prob=0.0, **spec)
        model, batch, tokens = XLNetPermutationLMModel(config), xlnet_batch(batch_size, length), length
    elif family == "txl":
        config = TransfoXLConfig(vocab_size=TXL_VOCAB, dropout_prob=0.0, attention_dropout_prob=0.0,
                                 scale_embedding=False, **spec)
        model, batch, tokens = TransfoXLCausalLMModel(config), txl_batch(batch_size, length), length
    elif family == "electra":
        config = ElectraConfig(vocab_size=30, max_position_embeddings=length, hidden_dropout_prob=0.0,
                               attention_dropout_prob=0.0, **spec)
        model, batch, tokens = ElectraPretrainModel(config), bert_batch(batch_size, length), length
    else:
        config_cls, model_cls, vocab_size = ((AlbertConfig, AlbertMLMModel, 34) if family == "albert"
                                             else (BertConfig, BertMLMModel, 30))
        config = config_cls(vocab_size=vocab_size, max_position_embeddings=length, hidden_dropout_prob=0.0,
                            attention_dropout_prob=0.0, pretraining_heads=False, **spec)
        model, batch, tokens = model_cls(config), bert_batch(batch_size, length), length
    return config, model, batch, tokens * batch_size


def measure(family: str, size: str, steps: int, repeats: int, device: str) -> dict:
    spec = dict(SIZES[family][size])
    config, model, batch, tokens = build(family, spec)
    batch_size, length = spec.pop("batch"), spec.pop("length")
    load_before = timing.load_average()
    ours, hf = Ours(model, batch), HF(family, config, batch, device)
    # Interleaved rounds (ours, hf / hf, ours / ...), so that a change in load hits both sides.
    times = timing.interleave({"ours": lambda: ours.time(steps), "hf": lambda: hf.time(steps)}, repeats)
    ours_median, hf_median = (timing.summary(times[side])["median"] for side in ("ours", "hf"))
    result = {
        "config": {**spec, "batch": batch_size, "length": length},
        "measured": f"{repeats} interleaved rounds of {steps} steps per side, after compiling and "
                    "2 warm-up steps; seconds per step (each round's mean)",
        "steps_per_round": steps, "rounds": repeats,
        "ours_step_seconds": timing.summary(times["ours"]),
        "hf_step_seconds": timing.summary(times["hf"]),
        "ours_tokens_per_second": round(tokens / ours_median, 1),
        "hf_tokens_per_second": round(tokens / hf_median, 1),
        "ratio_ours_over_hf": timing.ratio(times["hf"], times["ours"])["median"],  # of the medians
        "ratio_ours_over_hf_of_minimums": timing.ratio(times["hf"], times["ours"])["min"],
        "ours_compile_seconds": round(ours.compile_seconds, 2),
        "model_flops_per_step": ours.flops,
        "load_average": timing.load_report(load_before),
    }
    peak = peak_flops_per_device()
    if peak:
        result["ours_mfu"] = round(ours.flops / ours_median / peak, 4)
        result["hf_mfu"] = round(ours.flops / hf_median / peak, 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=[*SIZES, "all"], default="all")
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per side")
    parser.add_argument("--size", choices=["auto", "cpu", "base"], default="auto")
    parser.add_argument("--torch_threads", type=int, default=None,
                        help="CPU: PyTorch's threads (default: os.cpu_count(); 1 with `taskset -c 1` pins both "
                             "sides to one core, so that contention hits them alike)")
    args = parser.parse_args()
    import torch

    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    size = args.size if args.size != "auto" else ("base" if on_gpu else "cpu")
    if not on_gpu:
        torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    families = list(SIZES) if args.family == "all" else [args.family]
    result = {
        "benchmark": "train_throughput",
        "device": jax.devices()[0].device_kind,
        "host": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "size": size,
        "optimizer": "AdamW lr 1e-4 wd 0.01 (optax.adamw / torch.optim.AdamW)",
        **{family: measure(family, size, args.steps, args.repeats, "cuda" if on_gpu else "cpu")
           for family in families},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
