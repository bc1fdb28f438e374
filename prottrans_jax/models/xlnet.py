"""The ProtXLNet family's model: XLNet (Yang et al. 2019) in Flax Linen, numerically Hugging
Face's `XLNetModel` / `XLNetLMHeadModel` (transformers 5), batch-major.

    config = XLNetConfig(hidden_size=32, num_layers=2, num_heads=4, head_dim=8, intermediate_size=64)
    variables = XLNet(config).init(rng, tokens)
    logits, memory = XLNet(config).apply(variables, tokens, attention_mask)    # (b, L, vocab)
    logits, memory = XLNet(config).apply(variables, tokens, attention_mask, token_types,
                                         perm_mask, target_mapping)          # (b, m, vocab)
    hidden, memory = XLNet(config).apply(variables, tokens, method=XLNet.encode)

The layer stack is models/relative_attention.py's (shared with Transformer-XL): relative
positional attention with per-layer r_w/r_r/r_s biases, the relative segment term (`seg_embed`
of "same / different segment", memory counted as segment 0), post-LayerNorm, ReLU FFN
(ProtXLNet's `ff_activation`), optional memory with `mem_len` / `reuse_len`.

Two-stream attention (pre-training): with `target_mapping` (b, m, L), the query stream g
starts from `mask_emb` for each of the m predictions and attends to the content stream under
`perm_mask`, which the content stream also uses except that each position sees itself.
`perm_mask[b, i, j] = 1`: i may not attend to j (Hugging Face's convention). The output is
then the query stream's (b, m, d) and the logits those of the m targets.

Inputs follow XLNet's framing (the tokenizer's): `residues <sep> <cls>` at the end, token
types 0 for the residues and <sep>, 2 for <cls>; `attention_mask` 1 on real tokens. XLNet's
tokenizer pads on the LEFT; the pipelines here pad on the right, which computes the same for
every real token (relative positions, padding masked as keys, no memory: objectives.py
`permutation_lm`). The vocabulary (vocab.py `prot_xlnet_vocabulary`; an import reads the
shipped spiece.model): ids 0-8 special (<unk> 0, <s> 1, </s> 2, <cls> 3, <sep> 4, <pad> 5,
<mask> 6, <eod> 7, <eop> 8); X has no piece and encodes to <unk>.

`XLNetPermutationLMModel` is the trainer's `PretrainModel` (XLNet's permutation LM: the
cross-entropy of the query stream's logits at `target_mapping`'s positions, each target seeing
what `perm_mask` lets it see); `XLNetEncoder` embeds with the content stream, no perm mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax import families
from prottrans_jax.data.feature_converters import PermutationLMFeatureConverter
from prottrans_jax.data.objectives import permutation_lm_settings
from prottrans_jax.data.permutation_stream import PermutationStreamFeatureConverter
from prottrans_jax.errors import UserError
from prottrans_jax.models.base import Metrics, Sum, count_sequences, token_metrics
from prottrans_jax.models.relative_attention import (ATTN_TYPES, RelativeConfig, RelativeStack, TiedLmHead,
                                                     checked_memory, memory_carry, memory_of, next_carry,
                                                     relative_position_embedding, word_embedding)
from prottrans_jax.models.relative_scores import RelativeMask
from prottrans_jax.vocab import ProteinVocabulary, prot_xlnet_vocabulary

# zihangdai/xlnet data_utils.py `special_symbols`, hard-coded in the training code.
SPECIAL_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<cls>": 3, "<sep>": 4, "<pad>": 5, "<mask>": 6,
               "<eod>": 7, "<eop>": 8}
SEG_ID_CLS = 2  # token_type of <cls> (the tokenizer's; 0 for A and its <sep>)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class XLNetConfig(RelativeConfig):
    """Hyper-parameters of an XLNet; bound from gin (`XLNetConfig.num_layers = 30`).

    Defaults: Rostlab/prot_xlnet's released config.json (families-spec 5.1), except
    `vocab_size`, which is UNVERIFIED (about 31-33 from the file size; the converter reads it
    from the checkpoint). `mem_len` / `reuse_len` 0 are the released inference values (null);
    pre-training used memory 384 (paper extraction) and reuse 256 (XLNet's recipe, UNVERIFIED).
    """

    vocab_size: int = 32  # UNVERIFIED
    hidden_size: int = 1024
    num_layers: int = 30
    num_heads: int = 16
    head_dim: int = 64
    intermediate_size: int = 4096
    hidden_act: str = "relu"
    dropout_prob: float = 0.1
    attention_dropout_prob: float = 0.1  # Hugging Face's one `dropout` covers both
    layer_norm_eps: float = 1e-12
    attn_type: str = "bi"  # "uni": causal (Transformer-XL's mask)
    bi_data: bool = False  # released config; XLNet's pre-training default is True (ProtXLNet's: UNVERIFIED)
    pad_id: int = SPECIAL_IDS["<pad>"]

    def __post_init__(self):
        self.check_relative_fields()
        if self.attn_type not in ATTN_TYPES:
            raise UserError(f"XLNetConfig.attn_type={self.attn_type!r}; expected one of {ATTN_TYPES}")


class XLNet(nn.Module):
    """XLNet. Parameters: word_embedding, mask_emb, stack, lm_head (the `lm_loss` bias)."""

    config: XLNetConfig

    def setup(self):
        cfg = self.config
        self.word_embedding = word_embedding(cfg)
        self.mask_emb = self.param("mask_emb", nn.with_logical_partitioning(cfg.kernel_init, ("embed",)),
                                   (cfg.hidden_size,), cfg.parameter_dtype)
        self.stack = RelativeStack(cfg, segments=True)
        self.lm_head = TiedLmHead(cfg, self.word_embedding)
        self.dropout = nn.Dropout(cfg.dropout_prob)

    def encode(self, tokens: jax.Array, attention_mask: jax.Array | None = None,
               token_types: jax.Array | None = None, perm_mask: jax.Array | None = None,
               target_mapping: jax.Array | None = None, memory: jax.Array | None = None,
               deterministic: bool = True, memory_valid: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array | None]:
        """(last hidden states, new memory (num_layers, b, mem_len, d) or None when mem_len is 0).

        tokens (b, L); attention_mask (b, L), 1 = real token; token_types (b, L); perm_mask
        (b, L, L), 1 = may not attend; target_mapping (b, m, L) one-hot rows; memory: the
        previous call's; memory_valid (b, mem) bool, if given, hides the memory positions that
        hold no token yet (the trainer's fixed-shape carry, empty at first). The hidden states
        are the content stream's (b, L, d), or with target_mapping the query stream's (b, m, d).
        """
        cfg = self.config
        batch, qlen = tokens.shape
        memory = checked_memory(cfg, memory, batch)
        mlen = memory.shape[2]
        mask_h, mask_g = self._attention_masks(batch, qlen, mlen, attention_mask, perm_mask, memory_valid)

        h = self.dropout(self.word_embedding(tokens), deterministic=deterministic)
        g = None
        if target_mapping is not None:
            mask_emb = jnp.asarray(self.mask_emb, cfg.compute_dtype)
            g = jnp.broadcast_to(mask_emb, (batch, target_mapping.shape[1], cfg.hidden_size))
            g = self.dropout(g, deterministic=deterministic)
        segment_types = None
        if token_types is not None:  # memory counts as segment 0
            key_types = jnp.concatenate([jnp.zeros((batch, mlen), token_types.dtype), token_types], axis=1)
            segment_types = (token_types, key_types)
        pos_emb = relative_position_embedding(qlen, mlen + qlen, cfg.hidden_size, cfg.attn_type, cfg.clamp_len,
                                              cfg.bi_data, batch)
        pos_emb = self.dropout(pos_emb.astype(cfg.compute_dtype), deterministic=deterministic)
        h, g, new_memory = self.stack(h, g, memory, pos_emb, mask_h, mask_g, segment_types, target_mapping,
                                      deterministic)
        out = self.dropout(h if g is None else g, deterministic=deterministic)
        return nn.with_logical_constraint(out, ("batch", "length", "embed")), new_memory

    def _attention_masks(self, batch: int, qlen: int, mlen: int, attention_mask: jax.Array | None,
                         perm_mask: jax.Array | None, memory_valid: jax.Array | None = None
                         ) -> tuple[RelativeMask, RelativeMask]:
        """(content stream mask, query stream mask), described per query and per key (the
        perm mask aside), so that `chunked` attention never builds one of L x L.

        Masked (XLNet): the causal mask ("uni"), padding keys, perm_mask; memory only where
        `memory_valid` says it holds no token yet. The content stream may always see its own
        position; the query stream may not when perm_mask says so (a target must not see itself).
        """
        key_visible = None
        if attention_mask is not None or memory_valid is not None:
            memory_part = jnp.ones((batch, mlen), bool) if memory_valid is None else memory_valid.astype(bool)
            segment_part = jnp.ones((batch, qlen), bool) if attention_mask is None else attention_mask.astype(bool)
            key_visible = jnp.concatenate([memory_part, segment_part], axis=1)
        hidden = None
        if perm_mask is not None:  # the memory is never hidden by it
            hidden = jnp.concatenate([jnp.zeros((batch, qlen, mlen), bool), perm_mask.astype(bool)], axis=2)
        query_stream = RelativeMask(memory_length=mlen, causal=self.config.attn_type == "uni",
                                    same_length=self.config.same_length, key_visible=key_visible, hidden=hidden)
        return query_stream.replace(sees_itself=True), query_stream

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array | None = None,
                 token_types: jax.Array | None = None, perm_mask: jax.Array | None = None,
                 target_mapping: jax.Array | None = None, memory: jax.Array | None = None,
                 deterministic: bool = True, memory_valid: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array | None]:
        """(LM logits float32: (b, L, vocab), or (b, m, vocab) with target_mapping; new memory)."""
        hidden, new_memory = self.encode(tokens, attention_mask, token_types, perm_mask, target_mapping, memory,
                                         deterministic, memory_valid)
        return self.lm_head(hidden), new_memory


def init_params(config: XLNetConfig, rng: jax.Array) -> Any:
    """Boxed parameters (logical axis names attached): every one, the query stream's included."""
    tokens = jnp.ones((2, 4), jnp.int32)
    return XLNet(config).init({"params": rng}, tokens, None, jnp.zeros_like(tokens), None,
                              jnp.eye(4, dtype=jnp.float32)[None, :2].repeat(2, 0))["params"]


# -------------------------------------------------------------------------------- pre-training


@gin.configurable
@dataclasses.dataclass(frozen=True)
class XLNetPermutationLMModel:
    """ProtXLNet's pre-training as the trainer sees it: XLNet's permutation LM, the
    cross-entropy of the query stream's logits at the targets.

    Two inputs, chosen by `config.mem_len`:
    - mem_len 0: one protein per row (`objectives.permutation_lm`, PermutationLMFeatureConverter).
    - mem_len > 0: XLNet's recipe with memory, rows cut from a stream of proteins
      (`permutation_lm_stream`, data/permutation_stream.py). The carry (models/base.py,
      relative_attention.memory_carry) holds each layer's input over the reused part of the
      row's previous examples, the last mem_len positions (XLNet's `cache_mem` with
      reuse_len), empty at the start of a run and of every evaluation. `config.reuse_len` must
      be `permutation_lm_settings.reuse_len` (bind both from one gin macro).

    Every target is hidden from the model (a target never sees itself), so `accuracy` counts
    every prediction; `masked_accuracy` those that are residues (in a stream, not <eod>).
    """

    config: XLNetConfig = dataclasses.field(default_factory=XLNetConfig)
    label_smoothing: float = 0.0
    z_loss: float = 0.0

    family = "prot_xlnet"
    headline_metrics = ("loss", "accuracy")
    masked_label = "permuted-residue"  # what the demo calls its "masked" positions

    @property
    def feature_converter_cls(self) -> type:
        return PermutationStreamFeatureConverter if self.config.mem_len > 0 else PermutationLMFeatureConverter

    @property
    def module(self) -> XLNet:
        return XLNet(self.config)

    def init_params(self, rng: jax.Array) -> Any:
        return init_params(self.config, rng)

    def init_carry(self, batch_size: int) -> dict | None:
        """The empty memory of `batch_size` rows (None when mem_len is 0), after checking that
        the model caches what the stream reuses."""
        cfg = self.config
        if cfg.mem_len > 0:
            reuse_len = permutation_lm_settings()["reuse_len"]
            if cfg.reuse_len != reuse_len:
                raise UserError(f"XLNetConfig.reuse_len={cfg.reuse_len} but permutation_lm_settings.reuse_len="
                                f"{reuse_len}: with memory (mem_len {cfg.mem_len}) the model must cache the "
                                "reused part the stream repeats; bind both to one value")
            if cfg.bi_data:
                raise UserError("XLNetConfig.bi_data=True with memory: the stream has no backward half "
                                "(data/permutation_stream.py); set bi_data=False or mem_len=0")
        return memory_carry(cfg, batch_size)

    def logits(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None = None,
               train: bool = False) -> jax.Array:
        """(b, num_predict, vocab) float32: the query stream's logits at the targets, no memory."""
        return self._forward(params, batch, rng, train, None)[0]

    def _forward(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None,
                 train: bool, carry: Mapping[str, jax.Array] | None) -> tuple[jax.Array, jax.Array | None]:
        """(the logits at the targets, the new memory or None)."""
        memory, valid = memory_of(carry)
        return self.module.apply(
            {"params": params}, batch["encoder_input_tokens"], batch["attention_mask"], batch["token_types"],
            batch["perm_mask"], batch["target_mapping"], memory, not train, valid,
            rngs={"dropout": rng} if train else None)

    def loss_and_metrics(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, train: bool,
                         carry: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, Metrics, dict | None]:
        """(loss_sum, metrics, the next carry); with no carry, the example alone (no memory)."""
        logits, new_memory = self._forward(params, batch, rng, train, carry)
        weights = batch["target_weights"]
        loss_sum, metrics = token_metrics(logits, batch["target_tokens"], weights,
                                          batch.get("target_masked_weights", weights),
                                          self.label_smoothing, self.z_loss)
        metrics["sequences"] = Sum(count_sequences(batch["attention_mask"], None))
        return loss_sum, metrics, next_carry(self.config, carry, new_memory, batch["encoder_input_tokens"].shape[1])

    def masked_targets(self, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return batch["target_tokens"], batch.get("target_masked_weights", batch["target_weights"])

    def flops_per_batch(self, batch: Mapping[str, Any]) -> float:
        """Model FLOPs of one training step (3x the forward: forward + 2x backward):

            3 * (rows * (2 * (L * layers * (4 d a + 2 d f) + M * layers * 2 d a
                              + m * layers * (2 d a + 2 d f) + m d V)
                         + layers * (4 a L (2 K + P) + 4 a m L))
                 + layers * 2 * P * d a)

        a = heads * head_dim, L the length, m = num_predict, M = mem_len (0 without a carry),
        K = M + L keys, P = K + L relative distances. The content stream runs every projection
        and the FFN over L tokens, k and v over the memory too (it holds layer inputs); the
        query stream only q, o and the FFN over its m predictions, but its attention, moved to
        the target positions as XLNet does, scores all L queries: per stream and layer 2 a L K
        each for the content scores (ac) and the weighted values, 2 a L P for the position
        scores (bd); 4 a m L moves q and the output between the m predictions and L positions.
        The LM head sees the m targets; the relative-position projection runs once per batch.
        Attention is counted dense (masked entries included), as it is computed.
        """
        cfg = self.config
        rows, length = batch["encoder_input_tokens"].shape
        predictions = batch["target_mapping"].shape[1]
        d, f, a, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, cfg.num_layers
        memory = cfg.mem_len  # > 0: the stream's carried memory
        keys, distances = memory + length, memory + 2 * length
        dense = (length * layers * (4 * d * a + 2 * d * f) + memory * layers * 2 * d * a
                 + predictions * layers * (2 * d * a + 2 * d * f) + predictions * d * cfg.vocab_size)
        attention = layers * (4 * a * length * (2 * keys + distances) + 4 * a * predictions * length)
        positions = layers * 2 * distances * d * a
        return float(3 * (rows * (2 * dense + attention) + positions))


# -------------------------------------------------------------------------------- embedding


@dataclasses.dataclass(frozen=True)
class XLNetEncoder:
    """ProtXLNet embeddings: the content stream's last hidden states over `residues <sep> <cls>`,
    no perm mask and no token types, as ProtTrans' notebook and `model(**tokenizer(...))` in
    transformers 5 (whose XLNetTokenizer returns no token_type_ids) compute them; pre-training
    passes XLNet's token types (objectives.permutation_lm). Proteins are padded on the right
    (inference.py): the same outputs as XLNet's left padding.
    """

    config: XLNetConfig
    part: str = "encoder"

    PARTS: ClassVar[tuple[str, ...]] = ("encoder",)
    param_keys = ("word_embedding", "mask_emb", "stack")  # the converter's "encoder" part (XLNetModel)

    @property
    def width(self) -> int:
        return self.config.hidden_size

    def framing(self, vocabulary: ProteinVocabulary) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (), (vocabulary.pieces.index("<sep>"), vocabulary.pieces.index("<cls>"))

    def hidden_states(self, params: Any, tokens: jax.Array, valid: jax.Array) -> jax.Array:
        hidden, _ = XLNet(self.config).apply({"params": params}, tokens, valid.astype(jnp.int32), method="encode")
        return hidden

    def token_embedding(self, params: Any) -> np.ndarray:
        return np.asarray(params["word_embedding"]["embedding"], np.float32)


families.register(families.Family(
    name=XLNetPermutationLMModel.family,
    config_cls=XLNetConfig,
    hf_model_types=("xlnet",),
    pretrain_model=lambda config: XLNetPermutationLMModel(config),
    encoder=XLNetEncoder,
    converter_module="prottrans_jax.convert.xlnet",
    default_vocabulary=prot_xlnet_vocabulary,
    paper_model="ProtXLNet",
))
