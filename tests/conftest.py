"""Test-wide setup that must happen before any test module imports jax."""

import os

# Eight CPU devices, so mesh tests can build (8, 1), (4, 2) and (2, 4) meshes on one host.
_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}".strip()

import gin  # noqa: E402  (after XLA_FLAGS: gin does not import jax)
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_gin_config():
    """gin bindings are process-global: a test that runs the trainer must not leak its
    bindings (e.g. loss settings) into the defaults of configurables another test builds."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="session")
def tiny_t5_hf_dir(tmp_path_factory):
    """make(seed) -> a local Hugging Face directory of a random tiny ProtT5-shaped T5 (weights,
    config and ProtT5's tokenizer files), built once per seed and session."""
    made = {}

    def make(seed: int = 0) -> str:
        if seed not in made:
            import torch
            import transformers

            from prottrans_jax.convert import t5 as t5_convert

            torch.manual_seed(seed)
            config = transformers.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                           num_decoder_layers=2, num_heads=4, dropout_rate=0.0,
                                           decoder_start_token_id=0, feed_forward_proj="relu")
            path = tmp_path_factory.mktemp(f"tiny_t5_{seed}")
            transformers.T5ForConditionalGeneration(config).eval().save_pretrained(path)
            t5_convert.write_tokenizer(str(path))
            made[seed] = str(path)
        return made[seed]

    return make
