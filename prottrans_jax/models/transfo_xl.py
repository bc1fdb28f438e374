"""ProtTXL: Transformer-XL (Dai et al. 2019) in Flax Linen, a causal protein LM with
segment-level recurrence.

    config = TransfoXLConfig(hidden_size=32, num_layers=2, num_heads=4, head_dim=8, mem_len=16)
    variables = TransfoXL(config).init(rng, tokens)
    logits, memory = TransfoXL(config).apply(variables, tokens)               # first segment
    logits, memory = TransfoXL(config).apply(variables, next_tokens, memory)  # the next one
    hidden, memory = TransfoXL(config).apply(variables, tokens, method=TransfoXL.encode)

The layer stack is models/relative_attention.py's with "uni" attention: relative positional
attention (sinusoids, per-layer r_w_bias / r_r_bias, the rel-shift) over `memory ++ segment`
under a causal mask, post-LayerNorm, ReLU FFN. The memory of each layer is its input over the
last `mem_len` tokens, without gradient. The output layer is the token embedding (tied, as a
protein vocabulary needs no adaptive softmax) plus a bias.

No ProtTXL weights or config were ever released and transformers 5 has no Transformer-XL
class (families-spec section 6), so the trusted reference is Hugging Face's
`XLNetModel(attn_type="uni", bi_data=False, ff_activation="relu")`, which this model equals
with `scale_embedding=False` and that config's `layer_norm_eps`. Where the original TXL
(kimiyoung / cybertronai `mem_transformer.py`, which ProtTXL was trained with) and XLNet's
"uni" path differ, the difference is a config field:

  - `scale_embedding`: TXL multiplies the token embedding by sqrt(d_model) (its
    AdaptiveEmbedding's `emb_scale`); XLNet does not. The tied output layer uses the
    unscaled table either way.
  - `layer_norm_eps`: TXL's nn.LayerNorm default 1e-5; XLNet's 1e-12.
  - `same_length`: XLNet's `create_mask` (each query sees at most mem_len earlier keys);
    kimiyoung's mask shift for same_length differs in detail and is not reproduced.
  - positions: TXL's pos_seq is klen-1 .. 0, XLNet's klen .. 0 with a shift one further; both
    give each visible key the same distance (checked to 4e-7, families-spec 6.5).

Padding is not masked: a causal model's outputs at real tokens do not see padding after them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from prottrans_jax.models.relative_attention import (RelativeConfig, RelativeStack, TiedLmHead, causal_visibility,
                                                     checked_memory, relative_position_embedding,
                                                     visibility_to_bias, word_embedding)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TransfoXLConfig(RelativeConfig):
    """Hyper-parameters of a Transformer-XL; bound from gin (`TransfoXLConfig.num_layers = 32`).

    The defaults are ProtTXL-BFD's architecture as remembered from the paper's Table 2:
    UNVERIFIED (the table could not be read; families-spec 6.2). 32 layers x 1024, 14 heads x
    128, d_inner 4096 give 562,479,136 parameters with a 32-token vocabulary, which matches the
    paper's "562M"; the vocabulary itself, mem_len 512 and the dropouts are unverified too.
    """

    vocab_size: int = 32  # UNVERIFIED: cybertronai pads its word vocabulary to a multiple of 8
    hidden_size: int = 1024
    num_layers: int = 32  # UNVERIFIED (ProtTXL-BFD; ProtTXL: 30 layers x 16 heads x 64)
    num_heads: int = 14  # UNVERIFIED
    head_dim: int = 128  # UNVERIFIED
    intermediate_size: int = 4096  # UNVERIFIED
    hidden_act: str = "relu"
    dropout_prob: float = 0.1  # UNVERIFIED (kimiyoung wt103: 0.1; cybertronai default 0.0)
    attention_dropout_prob: float = 0.0  # TXL's dropatt; UNVERIFIED
    layer_norm_eps: float = 1e-5  # TXL's nn.LayerNorm default (XLNet's reference: set 1e-12 or its own)
    mem_len: int = 512  # UNVERIFIED (paper extraction: target length 512, memory 512)
    scale_embedding: bool = True  # TXL's sqrt(d_model) on the input embedding; XLNet has none
    pad_id: int = 0

    def __post_init__(self):
        self.check_relative_fields()


class TransfoXL(nn.Module):
    """Transformer-XL. Parameters: word_embedding, stack, lm_head (the output bias)."""

    config: TransfoXLConfig

    def setup(self):
        cfg = self.config
        self.word_embedding = word_embedding(cfg)
        self.stack = RelativeStack(cfg, segments=False)
        self.lm_head = TiedLmHead(cfg, self.word_embedding)
        self.dropout = nn.Dropout(cfg.dropout_prob)

    def encode(self, tokens: jax.Array, memory: jax.Array | None = None,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array | None]:
        """(hidden states (batch, seg_len, d), new memory (num_layers, batch, mem_len, d) or
        None when mem_len is 0). `memory` is the previous call's (None: the first segment)."""
        cfg = self.config
        batch, qlen = tokens.shape
        memory = checked_memory(cfg, memory, batch)
        mlen = memory.shape[2]
        x = self.word_embedding(tokens)
        if cfg.scale_embedding:
            x = x * jnp.asarray(math.sqrt(cfg.hidden_size), x.dtype)
        x = nn.with_logical_constraint(self.dropout(x, deterministic=deterministic), ("batch", "length", "embed"))
        pos_emb = relative_position_embedding(qlen, mlen + qlen, cfg.hidden_size, "uni", cfg.clamp_len)
        pos_emb = self.dropout(pos_emb.astype(cfg.compute_dtype), deterministic=deterministic)
        bias = visibility_to_bias(causal_visibility(qlen, mlen, cfg.same_length))
        h, _, new_memory = self.stack(x, None, memory, pos_emb, bias, None, None, None, deterministic)
        return self.dropout(h, deterministic=deterministic), new_memory

    def __call__(self, tokens: jax.Array, memory: jax.Array | None = None,
                 deterministic: bool = True) -> tuple[jax.Array, jax.Array | None]:
        """(next-token logits (batch, seg_len, vocab) float32, new memory or None)."""
        hidden, new_memory = self.encode(tokens, memory, deterministic)
        return self.lm_head(hidden), new_memory


def init_params(config: TransfoXLConfig, rng: jax.Array) -> Any:
    """Boxed parameters (logical axis names attached)."""
    return TransfoXL(config).init({"params": rng}, jnp.ones((1, 4), jnp.int32))["params"]
