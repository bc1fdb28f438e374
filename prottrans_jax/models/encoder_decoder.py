"""The encoder-decoder model as the trainer sees it: init, loss and metrics, FLOPs.

T5X's `EncoderDecoderModel` idea, kept small. The trainer talks only to this interface, so
the encoder-only families (ProtBert, ProtAlbert, ProtElectra) add a sibling class with the
same four members and the trainer does not change:

    init_params(rng)                          -> boxed params (logical axis names attached)
    loss_and_metrics(params, batch, rng, train) -> (loss_sum, aux)   aux: sums, see below
    flops_per_batch(batch)                     -> model FLOPs of one training step on it
    for_task(task_name)                        -> the model with task-dependent choices made

`aux` holds only sums (weight_sum, correct, masked_correct, masked_count, z_loss,
num_sequences), so microbatches and devices add up exactly; the trainer divides at the end.

Masked-token accuracy depends on the objective:
- "sentinel_inputs" (ProtT5's denoiser, inputs and targets position-aligned): decoder
  position i is masked when encoder input i is a sentinel / mask token (id >= 28).
- "residue_targets" (T5 span corruption, targets = sentinel + span): target tokens that are
  residues (ids 3..27), i.e. the hidden residues themselves, not sentinels or EOS.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp

from prottrans_jax import losses
from prottrans_jax.partitioning import unbox_shapes
from prottrans_jax.models.t5 import T5, T5Config, dummy_inputs
from prottrans_jax.vocab import prot_t5_residue_ids

MASKED_POSITION_RULES = ("auto", "sentinel_inputs", "residue_targets")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel:
    """A T5 module plus the loss settings; hashable, so jitted steps may close over it.

    label_smoothing and z_loss follow T5X (`EncoderDecoderModel.label_smoothing`, `.z_loss`).
    masked_positions="auto" is resolved from the task name by `for_task`.
    """

    config: T5Config = dataclasses.field(default_factory=T5Config)
    label_smoothing: float = 0.0
    z_loss: float = 1e-4
    masked_positions: str = "auto"

    def __post_init__(self):
        if self.masked_positions not in MASKED_POSITION_RULES:
            raise ValueError(f"masked_positions={self.masked_positions!r}; "
                             f"expected one of {MASKED_POSITION_RULES}")

    @property
    def module(self) -> T5:
        return T5(self.config)

    def for_task(self, task_name: str) -> "EncoderDecoderModel":
        """Resolves masked_positions="auto": the aligned denoiser or span corruption."""
        if self.masked_positions != "auto":
            return self
        rule = "sentinel_inputs" if task_name.endswith("prott5_denoise") else "residue_targets"
        return dataclasses.replace(self, masked_positions=rule)

    # ------------------------------------------------------------------ parameters

    def init_params(self, rng: jax.Array) -> Any:
        """Boxed parameters (nn.LogicallyPartitioned): what Partitioner's init expects."""
        return self.module.init(rng, **dummy_inputs(self.config))["params"]

    def abstract_params(self) -> Any:
        return jax.eval_shape(self.init_params, jax.random.key(0))

    # ------------------------------------------------------------------ loss

    def logits(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None = None,
               train: bool = False) -> jax.Array:
        rngs = {"dropout": rng} if train else None
        return self.module.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch["decoder_target_tokens"],
            encoder_segment_ids=batch.get("encoder_segment_ids"),
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            encoder_positions=batch.get("encoder_positions"),
            decoder_positions=batch.get("decoder_positions"),
            enable_dropout=train,
            rngs=rngs,
        )

    def masked_weights(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """Per-target-token weight of the positions that were hidden from the encoder."""
        weights = batch["decoder_loss_weights"].astype(jnp.float32)
        first_residue, first_sentinel = prot_t5_residue_ids()
        if self.masked_positions == "sentinel_inputs":
            inputs = batch["encoder_input_tokens"]
            if inputs.shape != weights.shape:
                raise ValueError("masked_positions='sentinel_inputs' needs position-aligned "
                                 f"inputs and targets, got {inputs.shape} and {weights.shape}")
            return weights * (inputs >= first_sentinel)
        if self.masked_positions == "residue_targets":
            targets = batch["decoder_target_tokens"]
            return weights * ((targets >= first_residue) & (targets < first_sentinel))
        raise ValueError("masked_positions is 'auto': call model.for_task(task_name) first")

    def loss_and_metrics(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
                         train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(loss_sum, aux sums) for one (micro)batch; differentiate loss_sum."""
        logits = self.logits(params, batch, rng, train)
        targets = batch["decoder_target_tokens"]
        weights = batch["decoder_loss_weights"]
        loss_sum, z_loss_sum, weight_sum = losses.weighted_cross_entropy(
            logits, targets, weights, self.label_smoothing, self.z_loss)
        masked = self.masked_weights(batch)
        segments = batch.get("decoder_segment_ids")
        if segments is None:  # unpacked: one sequence per row that has any target
            num_sequences = jnp.sum(jnp.any(weights > 0, axis=-1))
        else:  # packed: segment ids run 1..n in each row
            num_sequences = jnp.sum(jnp.max(segments, axis=-1))
        aux = {
            "weight_sum": weight_sum,
            "correct": losses.weighted_correct(logits, targets, weights),
            "masked_correct": losses.weighted_correct(logits, targets, masked),
            "masked_count": jnp.sum(masked),
            # Cross-entropy of the hidden residues alone (no smoothing): the number to set
            # against the residue distribution's entropy, about 2.9 nats on UniProtKB.
            "masked_loss": losses.weighted_cross_entropy(logits, targets, masked)[0],
            "z_loss": z_loss_sum,
            "num_sequences": num_sequences.astype(jnp.float32),
        }
        return loss_sum, aux

    # ------------------------------------------------------------------ FLOPs

    def flops_per_batch(self, batch: Mapping[str, Any]) -> float:
        """Model FLOPs of one training step (forward + backward) on a batch of this shape.

        Counted on padded rows (the work the step does), without rematerialisation (MFU's
        convention: recomputation is overhead, not model work):

            6 * (N_enc * L_enc + N_dec * L_dec + N_kv * L_enc)           weight matmuls
          + 12 * d_attn * (n_enc * L_enc^2 + n_dec * (L_dec^2 + L_dec * L_enc))   attention

        per row, times the rows. N_enc / N_dec: the weight-matrix parameters of the encoder
        and decoder layers (the decoder's include the output layer, and the tied embedding
        when it serves as one); the cross-attention key/value projections (N_kv) run on the
        encoder's L_enc tokens, not the decoder's. Embedding lookups, norms and the relative
        position tables do no matmul and are left out. d_attn = heads * head_dim; 12 = 3
        (forward + 2x backward) * 2 (multiply-add) * 2 (QK^T and attention x V).
        """
        cfg = self.config
        rows, enc_len = batch["encoder_input_tokens"].shape
        dec_len = batch["decoder_target_tokens"].shape[1]
        enc, dec, cross_kv = self.matmul_params
        d_attn = cfg.num_heads * cfg.head_dim
        weight_flops = 6 * (enc * enc_len + dec * dec_len + cross_kv * enc_len)
        attention_flops = 12 * d_attn * (cfg.num_encoder_layers * enc_len ** 2
                                         + cfg.num_decoder_layers * (dec_len ** 2 + dec_len * enc_len))
        return float(rows * (weight_flops + attention_flops))

    @functools.cached_property
    def matmul_params(self) -> tuple[int, int, int]:
        """(encoder, decoder incl. output layer, decoder cross-attention key+value) matrix
        parameter counts."""
        abstract = unbox_shapes(self.abstract_params())
        enc = dec = cross_kv = 0
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
            names = [str(getattr(k, "key", k)) for k in path]
            if leaf.ndim < 2 or "relpos_bias" in names or names[0] == "token_embedder":
                continue
            size = int(leaf.size)
            if names[0] == "encoder":
                enc += size
            elif "encoder_decoder_attention" in names and names[-2] in ("key", "value"):
                cross_kv += size
            else:
                dec += size
        if self.config.tie_word_embeddings:  # the embedding doubles as the output layer
            dec += self.config.vocab_size * self.config.d_model
        return enc, dec, cross_kv
