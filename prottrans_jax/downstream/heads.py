"""Prediction heads on frozen embeddings, as in the ProtTrans paper (Flax Linen).

Per-residue heads map (batch, length, dim) features to 3-state and 8-state logits, trained
multi-task (losses summed); heads whose data only has 3-state labels train that output alone.
Every per-residue head zeroes padded positions so padding never leaks into real residues.
"""

import flax.linen as nn
import jax.numpy as jnp

DROPOUT = 0.25


class CNNHead(nn.Module):
    """The paper's head: conv(7) -> 32, ReLU, dropout 0.25, then conv(7) to 3 and to 8 states."""

    hidden: int = 32
    window: int = 7

    @nn.compact
    def __call__(self, x, mask, train=False):
        mask = mask[..., None].astype(x.dtype)
        h = nn.relu(nn.Conv(self.hidden, (self.window,), padding="SAME")(x * mask))
        h = nn.Dropout(DROPOUT, deterministic=not train)(h) * mask
        return {
            "ss3": nn.Conv(3, (self.window,), padding="SAME", name="ss3")(h),
            "ss8": nn.Conv(8, (self.window,), padding="SAME", name="ss8")(h),
        }


class LogisticRegressionHead(nn.Module):
    """One linear layer per residue (no context): how much the embedding alone carries."""

    @nn.compact
    def __call__(self, x, mask, train=False):
        return {"ss3": nn.Dense(3, name="ss3")(x), "ss8": nn.Dense(8, name="ss8")(x)}


class FNNHead(nn.Module):
    """Two-layer per-residue network: dense 32, ReLU, dropout, then 3- and 8-state outputs."""

    hidden: int = 32

    @nn.compact
    def __call__(self, x, mask, train=False):
        h = nn.relu(nn.Dense(self.hidden)(x))
        h = nn.Dropout(DROPOUT, deterministic=not train)(h)
        return {"ss3": nn.Dense(3, name="ss3")(h), "ss8": nn.Dense(8, name="ss8")(h)}


class BiLSTMHead(nn.Module):
    """Bidirectional LSTM (16 units per direction) followed by the two-layer FNN."""

    units: int = 16
    hidden: int = 32

    @nn.compact
    def __call__(self, x, mask, train=False):
        lengths = mask.sum(axis=-1).astype(jnp.int32)
        h = nn.Bidirectional(
            nn.RNN(nn.OptimizedLSTMCell(self.units)), nn.RNN(nn.OptimizedLSTMCell(self.units))
        )(x, seq_lengths=lengths)
        return FNNHead(self.hidden, name="fnn")(h, mask, train)


class ProteinHead(nn.Module):
    """Per protein: mean-pooled embedding -> dense 32 -> dropout 0.25 -> location and membrane."""

    num_locations: int = 10
    hidden: int = 32

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.relu(nn.Dense(self.hidden)(x))
        h = nn.Dropout(DROPOUT, deterministic=not train)(h)
        return {
            "location": nn.Dense(self.num_locations, name="location")(h),
            "membrane": nn.Dense(2, name="membrane")(h),
        }


RESIDUE_HEADS = {"cnn": CNNHead, "lr": LogisticRegressionHead, "fnn": FNNHead, "lstm": BiLSTMHead}
