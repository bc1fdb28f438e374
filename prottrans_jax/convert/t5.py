"""Hugging Face T5 (PyTorch state_dict names) <-> our Flax T5 parameters, both directions.

    config = config_from_hf(load_hf_config(d), state_dict := load_hf_state_dict(d))
    params = hf_to_flax(state_dict, config)          # {'token_embedder', 'encoder', 'decoder'}
    state_dict = flax_to_hf(params, config)           # for save_hf_model / from_pretrained

Linear weights are (out, in) in PyTorch and (in, out) kernels here, so they are transposed;
the relative position table is (buckets, heads) there and (heads, buckets) here, and lives in
layer 0 there but once per stack here. Scanned models stack each layer's arrays along a
leading `layers` axis. An encoder-only checkpoint (`T5EncoderModel`: shared + encoder.*)
converts to the {'token_embedder', 'encoder'} subset, which is all `T5.encode` reads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import flax.linen as nn
import jax
import numpy as np

from prottrans_jax.convert.hf_io import load_hf_config, load_hf_state_dict
from prottrans_jax.models.t5 import T5Config, abstract_variables
from prottrans_jax.partitioning import unbox_shapes

EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
LM_HEAD_KEY = "lm_head.weight"
# Old checkpoints carry a cross-attention position table that T5 never uses (HF ignores it too).
IGNORED_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

_ATTENTION = (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))


# ------------------------------------------------------------------------------ mapping


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One parameter: its Flax path, its HF name, and whether the matrix is transposed."""

    flax_path: tuple[str, ...]
    hf_key: str
    transpose: bool


def _mlp_entries(prefix: tuple[str, ...], hf_prefix: str, config: T5Config) -> list[_Entry]:
    names = ("wi", "wo") if config.feed_forward == "relu" else ("wi_0", "wi_1", "wo")
    return [_Entry(prefix + ("mlp", n, "kernel"), f"{hf_prefix}.DenseReluDense.{n}.weight", True) for n in names]


def _attention_entries(prefix: tuple[str, ...], hf_prefix: str) -> list[_Entry]:
    return [_Entry(prefix + (ours, "kernel"), f"{hf_prefix}.{theirs}.weight", True) for ours, theirs in _ATTENTION]


def _layer_entries(stack: str, config: T5Config) -> list[_Entry]:
    """Entries of layer i with flax paths relative to the layer and `{i}` in the HF names."""
    p = f"{stack}.block.{{i}}.layer"
    if stack == "encoder":
        return [
            _Entry(("pre_attention_layer_norm", "scale"), f"{p}.0.layer_norm.weight", False),
            *_attention_entries(("attention",), f"{p}.0.SelfAttention"),
            _Entry(("pre_mlp_layer_norm", "scale"), f"{p}.1.layer_norm.weight", False),
            *_mlp_entries((), f"{p}.1", config),
        ]
    return [
        _Entry(("pre_self_attention_layer_norm", "scale"), f"{p}.0.layer_norm.weight", False),
        *_attention_entries(("self_attention",), f"{p}.0.SelfAttention"),
        _Entry(("pre_cross_attention_layer_norm", "scale"), f"{p}.1.layer_norm.weight", False),
        *_attention_entries(("encoder_decoder_attention",), f"{p}.1.EncDecAttention"),
        _Entry(("pre_mlp_layer_norm", "scale"), f"{p}.2.layer_norm.weight", False),
        *_mlp_entries((), f"{p}.2", config),
    ]


def _stack_entries(stack: str, config: T5Config) -> list[_Entry]:
    """Per-stack (not per-layer) entries."""
    norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
    entries = [
        _Entry((stack, "relpos_bias", "rel_embedding"), f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True),
        _Entry((stack, norm, "scale"), f"{stack}.final_layer_norm.weight", False),
    ]
    if stack == "decoder" and not config.tie_word_embeddings:
        entries.append(_Entry(("decoder", "logits_dense", "kernel"), LM_HEAD_KEY, True))
    return entries


def _num_layers(stack: str, config: T5Config) -> int:
    return config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers


def _stacks(encoder_only: bool) -> tuple[str, ...]:
    return ("encoder",) if encoder_only else ("encoder", "decoder")


# ------------------------------------------------------------------------------ HF -> ours


def hf_to_flax(
    state_dict: dict[str, Any], config: T5Config, encoder_only: bool | None = None
) -> dict[str, Any]:
    """Hugging Face T5 weights -> our params tree (numpy arrays in config.param_dtype).

    encoder_only=None detects a `T5EncoderModel` checkpoint (no decoder.* weights).
    Every HF weight must be used and every parameter filled, else ValueError naming the key.
    """
    state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
    if encoder_only is None:
        encoder_only = not any(k.startswith("decoder.") for k in state_dict)
    dtype = np.dtype(config.param_dtype)
    used: set[str] = set(k for k in IGNORED_KEYS if k in state_dict)
    if encoder_only:  # the encoder of a full checkpoint: its decoder is not needed
        used.update(k for k in state_dict if k.startswith("decoder.") or k == LM_HEAD_KEY)
    params: dict[str, Any] = {}

    def take(key: str, transpose: bool) -> np.ndarray:
        if key not in state_dict:
            raise ValueError(f"missing Hugging Face weight {key!r} for T5 config {_short(config)}")
        used.add(key)
        array = state_dict[key]
        return np.asarray(array.T if transpose else array, dtype)

    embedding_key = next((k for k in EMBEDDING_KEYS if k in state_dict), None)
    if embedding_key is None:
        raise ValueError(f"missing Hugging Face weight 'shared.weight' (nor any alias {EMBEDDING_KEYS[1:]})")
    _set(params, ("token_embedder", "embedding"), take(embedding_key, False))
    tied_copies = EMBEDDING_KEYS + ((LM_HEAD_KEY,) if config.tie_word_embeddings else ())
    for key in tied_copies:  # other names of the same table must hold the same values
        if key in state_dict and key not in used and key != embedding_key:
            _check_tied_copy(state_dict, key, embedding_key)
            used.add(key)

    for stack in _stacks(encoder_only):
        for entry in _stack_entries(stack, config):
            _set(params, entry.flax_path, take(entry.hf_key, entry.transpose))
        n = _num_layers(stack, config)
        for entry in _layer_entries(stack, config):
            per_layer = [take(entry.hf_key.format(i=i), entry.transpose) for i in range(n)]
            if config.scan_layers:
                _set(params, (stack, "layers") + entry.flax_path, np.stack(per_layer, axis=0))
            else:
                for i, array in enumerate(per_layer):
                    _set(params, (stack, f"layers_{i}") + entry.flax_path, array)

    unused = sorted(k for k in state_dict if k not in used)
    if unused:
        raise ValueError(f"Hugging Face weight {unused[0]!r} has no place in T5 config {_short(config)} ({len(unused)} unused)")
    _check_shapes(params, config, encoder_only)
    return params


def _check_tied_copy(state_dict: dict[str, np.ndarray], key: str, embedding_key: str) -> None:
    if state_dict[key].shape != state_dict[embedding_key].shape or not np.array_equal(
        state_dict[key], state_dict[embedding_key]
    ):
        raise ValueError(
            f"Hugging Face weight {key!r} differs from {embedding_key!r} but the config ties them; "
            "use tie_word_embeddings=False (config_from_hf(..., state_dict) detects this)"
        )


def _check_shapes(params: dict[str, Any], config: T5Config, encoder_only: bool) -> None:
    """Every parameter the model declares is present with the declared shape, and no other."""
    expected = unbox_shapes(abstract_variables(config, encoder_only=encoder_only))["params"]
    expected_flat = dict(_flatten(expected))
    got_flat = dict(_flatten(params))
    for path, abstract in expected_flat.items():
        if path not in got_flat:
            raise ValueError(f"no Hugging Face weight maps to parameter {'/'.join(path)}")
        if tuple(got_flat[path].shape) != tuple(abstract.shape):
            raise ValueError(
                f"shape mismatch for parameter {'/'.join(path)}: converted {tuple(got_flat[path].shape)}, "
                f"model expects {tuple(abstract.shape)} (check the config against the checkpoint)"
            )
    for path in got_flat:
        if path not in expected_flat:
            raise ValueError(f"converted parameter {'/'.join(path)} is not declared by the model")


# ------------------------------------------------------------------------------ ours -> HF


def flax_to_hf(params: Any, config: T5Config, encoder_only: bool | None = None) -> dict[str, np.ndarray]:
    """Our params (boxed or plain, scanned or not) -> Hugging Face T5 state_dict of numpy arrays.

    Writes each tensor once under its canonical name (`shared.weight`; `lm_head.weight` only
    when untied); `from_pretrained` ties the embedding aliases itself.
    """
    params = jax.tree.map(np.asarray, nn.unbox(params))
    if "params" in params and "token_embedder" not in params:
        params = params["params"]
    if encoder_only is None:
        encoder_only = "decoder" not in params
    state_dict = {"shared.weight": _get(params, ("token_embedder", "embedding"))}
    for stack in _stacks(encoder_only):
        for entry in _stack_entries(stack, config):
            state_dict[entry.hf_key] = _to_hf(_get(params, entry.flax_path), entry)
        for entry in _layer_entries(stack, config):
            for i in range(_num_layers(stack, config)):
                if config.scan_layers:
                    array = _get(params, (stack, "layers") + entry.flax_path)[i]
                else:
                    array = _get(params, (stack, f"layers_{i}") + entry.flax_path)
                state_dict[entry.hf_key.format(i=i)] = _to_hf(array, entry)
    return state_dict


def _to_hf(array: np.ndarray, entry: _Entry) -> np.ndarray:
    return np.ascontiguousarray(array.T if entry.transpose else array)


# ------------------------------------------------------------------------------ configs


_HF_TO_OURS = {
    "vocab_size": "vocab_size",
    "d_model": "d_model",
    "num_heads": "num_heads",
    "d_kv": "head_dim",
    "d_ff": "d_ff",
    "num_layers": "num_encoder_layers",
    "relative_attention_num_buckets": "relative_attention_num_buckets",
    "relative_attention_max_distance": "relative_attention_max_distance",
    "dropout_rate": "dropout_rate",
    "layer_norm_epsilon": "layer_norm_epsilon",
    "pad_token_id": "pad_id",
    "eos_token_id": "eos_id",
    "decoder_start_token_id": "decoder_start_id",
}


def config_from_hf(
    hf_config: dict[str, Any], state_dict: dict[str, Any] | None = None, **overrides: Any
) -> T5Config:
    """A Hugging Face T5 `config.json` dict -> T5Config (overrides: e.g. dtype, scan_layers).

    Follows transformers 5: decoder outputs are scaled by d_model**-0.5 as `scale_decoder_outputs`
    says, or when absent (configs from transformers 4 and older, e.g. the released ProtT5) unless
    `tie_word_embeddings` is false; the output layer is a separate lm_head only when the
    checkpoint holds an `lm_head.weight` that differs from `shared.weight` (pass state_dict to
    detect it; without it, tying follows the scaling as in T5 1.0 / 1.1).
    """
    if hf_config.get("model_type", "t5") != "t5":
        raise ValueError(f"not a T5 config: model_type={hf_config.get('model_type')!r}")
    feed_forward = hf_config.get("feed_forward_proj", "relu")
    if feed_forward not in ("relu", "gated-gelu"):
        raise ValueError(f"unsupported T5 feed_forward_proj {feed_forward!r}; expected 'relu' or 'gated-gelu'")
    kwargs: dict[str, Any] = {ours: hf_config[theirs] for theirs, ours in _HF_TO_OURS.items() if hf_config.get(theirs) is not None}
    if isinstance(kwargs.get("eos_id"), list):
        kwargs["eos_id"] = kwargs["eos_id"][0]
    kwargs["num_decoder_layers"] = hf_config.get("num_decoder_layers") or hf_config.get("num_layers", 6)
    kwargs["feed_forward"] = feed_forward
    if hf_config.get("scale_decoder_outputs") is not None:  # written by transformers >= 5
        scale = bool(hf_config["scale_decoder_outputs"])
    else:
        scale = hf_config.get("tie_word_embeddings", True) is not False
    tied = scale
    if state_dict is not None:
        embedding_key = next((k for k in EMBEDDING_KEYS if k in state_dict), None)
        lm_head = state_dict.get(LM_HEAD_KEY)
        tied = lm_head is None or (
            embedding_key is not None
            and np.shape(lm_head) == np.shape(state_dict[embedding_key])
            and np.array_equal(np.asarray(lm_head), np.asarray(state_dict[embedding_key]))
        )
    kwargs["tie_word_embeddings"] = tied
    kwargs["scale_decoder_outputs"] = None if scale == tied else scale  # None: T5's convention
    kwargs.update(overrides)
    return T5Config(**kwargs)


def hf_config_from(config: T5Config, encoder_only: bool = False) -> dict[str, Any]:
    """T5Config -> a Hugging Face `config.json` dict that transformers 5 loads equivalently."""
    return {
        "architectures": ["T5EncoderModel" if encoder_only else "T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "num_heads": config.num_heads,
        "d_kv": config.head_dim,
        "d_ff": config.d_ff,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "feed_forward_proj": config.feed_forward,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_factor": 1.0,
        # transformers 5 ties lm_head to shared unless the weights hold a different
        # lm_head.weight, and scales by `scale_decoder_outputs`; older versions read the
        # scaling from `tie_word_embeddings`.
        "scale_decoder_outputs": config.scales_decoder_outputs,
        "tie_word_embeddings": config.scales_decoder_outputs,
        "pad_token_id": config.pad_id,
        "eos_token_id": config.eos_id,
        "decoder_start_token_id": config.decoder_start_id,
    }


def load_hf_t5(model_dir: str, **overrides: Any) -> tuple[T5Config, dict[str, Any]]:
    """Config and params of a local Hugging Face T5 directory (full or encoder-only)."""
    state_dict = load_hf_state_dict(model_dir)
    config = config_from_hf(load_hf_config(model_dir), state_dict, **overrides)
    return config, hf_to_flax(state_dict, config)


# ------------------------------------------------------------------------------ tree utils


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    node = tree
    for name in path:
        if not isinstance(node, dict) or name not in node:
            raise ValueError(f"params have no entry {'/'.join(path)} (config does not match the params)")
        node = node[name]
    return node


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, dict):
        for name, sub in tree.items():
            yield from _flatten(sub, prefix + (name,))
    else:
        yield prefix, tree


def _short(config: T5Config) -> str:
    return (
        f"(d_model={config.d_model}, layers={config.num_encoder_layers}+{config.num_decoder_layers}, "
        f"feed_forward={config.feed_forward}, tied={config.tie_word_embeddings})"
    )
