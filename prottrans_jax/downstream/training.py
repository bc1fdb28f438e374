"""Training loops for the heads: Adam, fixed seeds, early stopping on the validation split.

Per-residue batches are bucketed by length (powers of two from 64) with a token budget per
batch, and the jitted steps are cached per head type: XLA:CPU takes seconds per compile, which
otherwise dominates (measured: 85 s of compiles against 2 s per CB513 epoch with 14 shapes). The best
parameters by validation accuracy (Q3 / Q10) are kept; training stops after `patience` epochs
without improvement.
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prottrans_jax.downstream import heads as heads_lib


@dataclasses.dataclass
class TrainConfig:
    learning_rate: float = 1e-3
    max_epochs: int = 40
    patience: int = 5
    tokens_per_batch: int = 2048  # per-residue heads (smaller batches converge in fewer epochs)
    batch_size: int = 64  # per-protein head
    seed: int = 0

    def describe(self):
        return (
            f"Adam lr={self.learning_rate}, <= {self.max_epochs} epochs, early stopping on "
            f"validation accuracy (patience {self.patience}), seed {self.seed}"
        )


@dataclasses.dataclass
class TrainResult:
    params: dict
    history: list  # one dict per epoch: epoch, train_loss, val_accuracy
    best_epoch: int
    seconds: float


def _masked_cross_entropy(logits, labels, weights):
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


# ---------------------------------------------------------------------------------------------
# Per-residue.


def _bucket(length):
    return max(64, 1 << int(np.ceil(np.log2(length))))


def residue_batches(features, labels, rng=None, tokens_per_batch=8192):
    """Yields (indices, x, mask, ss3, ss8) with labels -1 where unscored; shuffled if `rng`."""
    lengths = np.array([len(f) for f in features])
    buckets = {}
    for index in np.argsort(lengths, kind="stable"):
        buckets.setdefault(_bucket(lengths[index]), []).append(index)
    plan = []
    for length, members in buckets.items():
        members = np.array(members)
        if rng is not None:
            members = rng.permutation(members)
        size = max(1, tokens_per_batch // length)
        plan += [(length, size, members[i : i + size]) for i in range(0, len(members), size)]
    if rng is not None:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    dim = features[0].shape[1]
    for length, size, members in plan:
        x = np.zeros((size, length, dim), np.float32)  # fixed batch size per bucket: one compile
        mask = np.zeros((size, length), bool)
        ss3 = np.full((size, length), -1, np.int32)
        ss8 = np.full((size, length), -1, np.int32)
        for row, index in enumerate(members):
            n = lengths[index]
            x[row, :n] = features[index]
            scored = labels["mask"][index]
            mask[row, :n] = True
            ss3[row, :n] = np.where(scored, labels["ss3"][index], -1)
            if labels.get("ss8") is not None:
                ss8[row, :n] = np.where(scored, labels["ss8"][index], -1)
        yield members, x, mask, ss3, ss8


def _residue_labels(dataset):
    return {"ss3": dataset.ss3, "ss8": dataset.ss8, "mask": dataset.mask}


def predict_residues(head_name, params, features, tokens_per_batch=8192):
    """Per-protein arrays of predicted 3-state and 8-state classes (all residues)."""
    predict = _compiled_residue_steps(head_name, False, 0.0)[3]
    n = len(features)
    dummy = {
        "ss3": [np.zeros(len(f), np.int8) for f in features],
        "ss8": None,
        "mask": [np.ones(len(f), bool) for f in features],
    }
    pred3, pred8 = [None] * n, [None] * n
    for members, x, mask, _, _ in residue_batches(features, dummy, None, tokens_per_batch):
        out = predict(params, jnp.asarray(x), jnp.asarray(mask))
        p3, p8 = np.asarray(out["ss3"].argmax(-1)), np.asarray(out["ss8"].argmax(-1))
        for row, index in enumerate(members):
            length = len(features[index])
            pred3[index], pred8[index] = p3[row, :length], p8[row, :length]
    return pred3, pred8


@functools.lru_cache(maxsize=None)
def _compiled_residue_steps(head_name, use_ss8, learning_rate):
    """(model, optimizer, train_step, predict) shared by every run of one head type."""
    model = heads_lib.RESIDUE_HEADS[head_name]()
    optimizer = optax.adam(learning_rate)

    def loss_fn(p, x, mask, ss3, ss8, dropout_key):
        out = model.apply(p, x, mask, train=True, rngs={"dropout": dropout_key})
        loss = _masked_cross_entropy(out["ss3"], ss3, ss3 >= 0)
        if use_ss8:
            loss += _masked_cross_entropy(out["ss8"], ss8, ss8 >= 0)
        return loss

    @jax.jit
    def train_step(p, state, x, mask, ss3, ss8, dropout_key):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, mask, ss3, ss8, dropout_key)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    predict = _compiled_predict(head_name)
    return model, optimizer, train_step, predict


@functools.lru_cache(maxsize=None)
def _compiled_predict(head_name):
    model = heads_lib.RESIDUE_HEADS[head_name]()
    return jax.jit(lambda p, x, m: model.apply(p, x, m, train=False))


def _accuracy(predictions, labels, masks):
    correct = sum(int(((p == y) & m).sum()) for p, y, m in zip(predictions, labels, masks))
    return correct / max(1, sum(int(m.sum()) for m in masks))


def train_residue_head(
    head_name,
    train_set,
    train_features,
    val_set,
    val_features,
    config=TrainConfig(),
    primary="ss3",
    log=print,
):
    """Trains one per-residue head; early stopping on validation accuracy of `primary`."""
    use_ss8 = train_set.ss8 is not None
    model, optimizer, train_step, _ = _compiled_residue_steps(
        head_name, use_ss8, config.learning_rate
    )
    rng = np.random.default_rng(config.seed)
    key = jax.random.PRNGKey(config.seed)
    dim = train_features[0].shape[1]
    params = model.init(key, jnp.zeros((1, 64, dim)), jnp.ones((1, 64), bool))
    opt_state = optimizer.init(params)

    val_labels = val_set.ss8 if primary == "ss8" else val_set.ss3
    best = (-1.0, params, 0)
    history, started = [], time.time()
    labels = _residue_labels(train_set)
    for epoch in range(1, config.max_epochs + 1):
        losses = []
        for _, x, mask, ss3, ss8 in residue_batches(
            train_features, labels, rng, config.tokens_per_batch
        ):
            key, dropout_key = jax.random.split(key)
            params, opt_state, loss = train_step(
                params,
                opt_state,
                jnp.asarray(x),
                jnp.asarray(mask),
                jnp.asarray(ss3),
                jnp.asarray(ss8),
                dropout_key,
            )
            losses.append(float(loss))
        pred3, pred8 = predict_residues(head_name, params, val_features, config.tokens_per_batch)
        predictions = pred8 if primary == "ss8" else pred3
        val_accuracy = _accuracy(predictions, val_labels, val_set.mask)
        history.append(
            {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_accuracy": val_accuracy}
        )
        if log:
            log(
                f"    epoch {epoch:2d}  train loss {np.mean(losses):.4f}  "
                f"validation {primary} accuracy {val_accuracy:.4f}"
            )
        if val_accuracy > best[0]:
            best = (val_accuracy, params, epoch)
        elif epoch - best[2] >= config.patience:
            break
    return TrainResult(best[1], history, best[2], time.time() - started)


# ---------------------------------------------------------------------------------------------
# Per-protein.


# The per-protein head is small and its epochs are cheap: it trains longer by default
# (`evaluate --max_epochs/--patience` override it, and the report says what ran).
PROTEIN_HEAD_TRAINING = TrainConfig(max_epochs=200, patience=20)


def train_protein_head(train_x, train_set, val_x, val_set, config=PROTEIN_HEAD_TRAINING, log=print):
    """Trains the multi-task location/membrane head on mean-pooled embeddings."""
    model = heads_lib.ProteinHead(num_locations=len(train_set.classes))
    rng = np.random.default_rng(config.seed)
    key = jax.random.PRNGKey(config.seed)
    params = model.init(key, jnp.zeros((1, train_x.shape[1])))
    optimizer = optax.adam(config.learning_rate)
    opt_state = optimizer.init(params)
    # Standardise with training statistics: one-hot frequencies and LM states differ in scale.
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    normalise = lambda x: jnp.asarray((x - mean) / std, jnp.float32)

    @jax.jit
    def train_step(p, state, x, location, membrane, dropout_key):
        def loss_fn(p):
            out = model.apply(p, x, train=True, rngs={"dropout": dropout_key})
            loss = _masked_cross_entropy(out["location"], location, location >= 0)
            return loss + _masked_cross_entropy(out["membrane"], membrane, membrane >= 0)

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    predict = jax.jit(lambda p, x: model.apply(p, x, train=False))
    val_inputs = normalise(val_x)
    best = (-1.0, params, 0)
    history, started = [], time.time()
    n, size = len(train_x), config.batch_size
    for epoch in range(1, config.max_epochs + 1):
        order = rng.permutation(n)
        order = np.concatenate([order, order[: (-n) % size]])  # fixed batch shape: one compile
        losses = []
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            key, dropout_key = jax.random.split(key)
            params, opt_state, loss = train_step(
                params,
                opt_state,
                normalise(train_x[batch]),
                jnp.asarray(train_set.location[batch]),
                jnp.asarray(train_set.membrane[batch]),
                dropout_key,
            )
            losses.append(float(loss))
        val_pred = np.asarray(predict(params, val_inputs)["location"].argmax(-1))
        val_accuracy = float((val_pred == val_set.location).mean())
        history.append(
            {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_accuracy": val_accuracy}
        )
        if val_accuracy > best[0]:
            best = (val_accuracy, params, epoch)
        elif epoch - best[2] >= config.patience:
            break
    if log:
        log(
            f"    {len(history)} epochs, best validation Q{len(train_set.classes)} "
            f"{best[0]:.4f} at epoch {best[2]}"
        )

    def predictor(x):
        out = predict(best[1], normalise(x))
        return np.asarray(out["location"].argmax(-1)), np.asarray(out["membrane"].argmax(-1))

    return predictor, TrainResult(best[1], history, best[2], time.time() - started)
