"""The ProtT5 family: its pre-training model, its inference encoder and its registration.

`EncoderDecoderModel` is the trainer's `PretrainModel` (models/base.py), T5X's idea kept small:
a T5 module plus the loss settings. Batches come from `EncDecMaskedFeatureConverter`, whose
`decoder_masked_weights` say which target positions the objective hid (ProtT5's denoiser: the
residues replaced by a sentinel; span corruption: the residues of the target spans):
masked-token accuracy and loss are measured there. `T5Encoder` is what embedding needs: the
encoder's last hidden state, with `</s>` after the residues.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Mapping

import gin
import jax
import numpy as np

from prottrans_jax import families
from prottrans_jax.data.feature_converters import EncDecMaskedFeatureConverter
from prottrans_jax.errors import UserError
from prottrans_jax.models.base import Metrics, Sum, count_sequences, token_metrics
from prottrans_jax.models.t5 import T5, T5Config, dummy_inputs
from prottrans_jax.partitioning import unbox_shapes
from prottrans_jax.vocab import ProteinVocabulary, prot_t5_vocabulary

LOSS_ON = ("targets", "masked")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel:
    """A T5 module plus the loss settings; hashable, so jitted steps may close over it.

    label_smoothing and z_loss follow T5X (`EncoderDecoderModel.label_smoothing`, `.z_loss`).
    loss_on: "targets" scores every target token (ProtT5: the whole sequence); "masked" only
    the hidden positions (ProtT5-EvoTuning, with `prott5_denoise.single_mask_token = True`).
    """

    config: T5Config = dataclasses.field(default_factory=T5Config)
    label_smoothing: float = 0.0
    z_loss: float = 1e-4
    loss_on: str = "targets"

    family = "prot_t5"
    feature_converter_cls = EncDecMaskedFeatureConverter
    headline_metrics = ("loss", "accuracy", "masked_accuracy")

    def __post_init__(self):
        if self.loss_on not in LOSS_ON:
            raise UserError(f"EncoderDecoderModel.loss_on={self.loss_on!r}; expected one of {LOSS_ON}")

    @property
    def module(self) -> T5:
        return T5(self.config)

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

    def loss_and_metrics(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
                         train: bool) -> tuple[jax.Array, Metrics]:
        """(loss_sum, metrics) for one (micro)batch; differentiate loss_sum."""
        logits = self.logits(params, batch, rng, train)
        masked = batch["decoder_masked_weights"]
        weights = masked if self.loss_on == "masked" else batch["decoder_loss_weights"]
        loss_sum, metrics = token_metrics(logits, batch["decoder_target_tokens"], weights,
                                          masked, self.label_smoothing, self.z_loss)
        metrics["sequences"] = Sum(count_sequences(batch["decoder_loss_weights"],
                                                   batch.get("decoder_segment_ids")))
        return loss_sum, metrics

    def masked_targets(self, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(targets, hidden-position weights) of a batch, on the host."""
        return batch["decoder_target_tokens"], batch["decoder_masked_weights"]

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


@dataclasses.dataclass(frozen=True)
class T5Encoder:
    """ProtT5 embeddings: the encoder's last hidden state over `residues </s>`."""

    config: T5Config
    part: str = "encoder"

    PARTS: ClassVar[tuple[str, ...]] = ("encoder",)
    param_keys = ("token_embedder", "encoder")

    @property
    def width(self) -> int:
        return self.config.d_model

    def framing(self, vocabulary: ProteinVocabulary) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (), (vocabulary.eos_id,)

    def hidden_states(self, params: Any, tokens: jax.Array, valid: jax.Array) -> jax.Array:
        del valid  # T5 reads padding from the token ids (pad = 0)
        return T5(self.config).apply({"params": params}, tokens, method=T5.encode)

    def token_embedding(self, params: Any) -> np.ndarray:
        return np.asarray(params["token_embedder"]["embedding"], np.float32)


families.register(families.Family(
    name=EncoderDecoderModel.family,
    config_cls=T5Config,
    hf_model_types=("t5",),
    pretrain_model=lambda config: EncoderDecoderModel(config),
    encoder=T5Encoder,
    converter_module="prottrans_jax.convert.t5",
    default_vocabulary=prot_t5_vocabulary,
    paper_model="ProtT5-XL-U50",
))
