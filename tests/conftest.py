"""Test-wide setup that must happen before any test module imports jax."""

import atexit
import os
import shutil
import tempfile

# Eight CPU devices, so mesh tests can build (8, 1), (4, 2) and (2, 4) meshes on one host.
_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}".strip()

# One persistent XLA compilation cache for the session, shared with the subprocesses the
# tests start (environment variables): a resumed or repeated run compiles the program its
# first run compiled, and reads it back instead (the train tests' resumes took ~2x longer).
# Fresh per session, so nothing outlives it; a cache the caller set is left alone.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE_DIR = tempfile.mkdtemp(prefix="prottrans_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE_DIR,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
# The commands' own cache (prottrans_jax.compilation_cache) uses the same folder, never the
# user's ~/.cache: in-process calls and every subprocess that inherits the environment.
os.environ.setdefault("PROTTRANS_JAX_COMPILATION_CACHE", os.environ["JAX_COMPILATION_CACHE_DIR"])

import dataclasses  # noqa: E402
import gzip  # noqa: E402
from pathlib import Path  # noqa: E402

import gin  # noqa: E402  (after XLA_FLAGS: gin does not import jax)
import pytest  # noqa: E402

# Runs that test learning, not sharding: one device is ~2.5x faster than the 8 above.
ONE_DEVICE = ["--gin.Partitioner.devices=@first_devices()", "--gin.first_devices.count=1"]

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "uniprot_sample.fasta.gz"


def numpy_state_dict(model) -> dict:
    """A PyTorch model's state_dict as numpy arrays (what the converters read)."""
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def framed_tokens(length: int, lengths, vocab_size: int = 30, seed: int = 0):
    """Padded rows of `[CLS] random residues [SEP]` (ids 2 and 3, residues from 5) of the given
    lengths: inputs for the BERT-like families' parity tests."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), length), np.int32)
    for row, n in enumerate(lengths):
        tokens[row, :n] = [2, *rng.integers(5, vocab_size, n - 2), 3]
    return tokens


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


# A tiny BERT in ProtBert's layout: 30-token vocabulary, GELU, post-LayerNorm, dropout off.
TINY_BERT = dict(vocab_size=30, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, hidden_act="gelu")


def random_hf_bert(head: str = "pretraining", seed: int = 0, **overrides):
    """A random Hugging Face BERT (`pretraining`: BertForPreTraining, `mlm`: BertForMaskedLM,
    `model`: BertModel) with non-trivial LayerNorm parameters, in eval mode."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**TINY_BERT, **overrides}, attn_implementation="eager")
    cls = {"pretraining": transformers.BertForPreTraining, "mlm": transformers.BertForMaskedLM,
           "model": transformers.BertModel}[head]
    model = cls(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="session")
def tiny_bert_hf_dir(tmp_path_factory):
    """make(head, seed) -> a local HF directory of `random_hf_bert(head, seed)` with ProtBert's
    vocab.txt, built once per (head, seed) and session."""
    made = {}

    def make(head: str = "pretraining", seed: int = 0) -> str:
        if (head, seed) not in made:
            from prottrans_jax.convert import bert as bert_convert

            path = tmp_path_factory.mktemp(f"tiny_bert_{head}_{seed}")
            random_hf_bert(head, seed).save_pretrained(path)
            bert_convert.write_tokenizer(str(path))
            made[head, seed] = str(path)
        return made[head, seed]

    return make


@pytest.fixture(scope="session")
def antiberty_dir():
    """The real AntiBERTy weights (pip antiberty==0.1.3): config.json, pytorch_model.bin and
    the package's vocab.txt, or a skip when the package is not installed."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("antiberty")
    if spec is None:
        pytest.skip("antiberty==0.1.3 (real BERT weights) is not installed")
    root = Path(spec.submodule_search_locations[0]) / "trained_models"
    return root / "AntiBERTy_md_smooth", root / "vocab.txt"


# ------------------------------------------------------------------ corpora


def run_build(inputs, output_dir, **kwargs):
    overwrite = kwargs.pop("overwrite", False)
    pipeline_args = kwargs.pop("pipeline_args", None)
    from tfrecords_builder.build import build
    from tfrecords_builder.pipeline import BuildConfig

    config = BuildConfig(inputs=tuple(str(i) for i in inputs), output_dir=str(output_dir), **kwargs)
    return build(config, pipeline_args, overwrite=overwrite, log=lambda *_: None)


def short_protein_corpus(tmp_path_factory, count=32, max_length=50):
    """A corpus of the first `count` real sample proteins shorter than max_length residues,
    all in the train split; built once per test session (shared with test_train_cli)."""
    from prottrans_jax.fasta import read_fasta

    root = tmp_path_factory.getbasetemp() / f"short_proteins_{count}_{max_length}"
    if not (root / "corpus" / "stats.json").exists():
        root.mkdir(exist_ok=True)
        records = [r for r in read_fasta(SAMPLE) if len(r.sequence) < max_length][:count]
        assert len(records) == count
        with gzip.open(root / "short.fasta.gz", "wt") as handle:
            for r in records:
                handle.write(f">{r.id}\n{r.sequence}\n")
        run_build([root / "short.fasta.gz"], root / "corpus", num_shards=1,
                  validation_fraction=0.0)
    return root / "corpus"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """`short_protein_corpus` registered as the seqio corpus "short" (tasks short_<objective>),
    for the training modules; a module may define its own `corpus` instead (test_tasks)."""
    import tasks

    path = short_protein_corpus(tmp_path_factory)
    tasks.register_corpus("short", path)
    return path


# ------------------------------------------------------------------ ProtT5 directories


# ProtT5's shape in miniature: 128 ids, ReLU, untied lm_head, relative buckets as released.
HF_TINY = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
               dropout_rate=0.0, decoder_start_token_id=0, feed_forward_proj="relu", tie_word_embeddings=False)


def random_hf_model(seed: int = 0):
    """A random full ProtT5-like model; the untied lm_head gets its own random values."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_TINY))
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    return model.eval()


def save_hf_dir(model, path) -> str:
    """A local HF directory as released: weights, config and ProtT5 tokenizer files."""
    from prottrans_jax.convert import t5 as t5_convert

    model.save_pretrained(path)
    t5_convert.write_tokenizer(str(path))
    return str(path)


def write_model_dir(path, state_dict: dict, step: int = 7):
    """A MODEL_DIR as the trainer wrote it before model.json: operative_config.gin binding
    T5Config (and importing modules, which readers must not execute), and an orbax
    checkpoint whose `state` item holds step, params and an optimizer state."""
    import jax
    import jax.numpy as jnp

    from prottrans_jax.checkpoints import Checkpointer
    from prottrans_jax.convert.t5 import config_from_hf, hf_to_flax

    config = config_from_hf(HF_TINY, state_dict, dtype="float32")
    params = jax.tree.map(jnp.asarray, hf_to_flax(state_dict, config))
    os.makedirs(path, exist_ok=True)
    lines = ["import prottrans_jax.models.t5", "import prottrans_jax.train", "import this",
             "MODEL_DIR = 'somewhere'", "train.batch_size = 8"]  # other configurables are skipped
    lines += [f"T5Config.{f.name} = {getattr(config, f.name)!r}" for f in dataclasses.fields(config)]
    with open(os.path.join(path, "operative_config.gin"), "w") as f:
        f.write("\n".join(lines) + "\n")
    opt_state = {"mu": jax.tree.map(jnp.ones_like, params), "count": jnp.asarray(step)}
    with Checkpointer(str(path), save_interval_steps=1, async_save=False) as checkpointer:
        checkpointer.save_now(step, {"step": jnp.asarray(step), "params": params, "opt_state": opt_state},
                              {"batches_consumed": step})
    return config


def write_family_model_dir(path, params, config, family_name="prot_bert", step=5):
    """A MODEL_DIR of a family as the trainer writes it: model.json (with the family's default
    vocabulary) and an orbax checkpoint."""
    import jax
    import jax.numpy as jnp

    from prottrans_jax import model_dir as model_dir_lib
    from prottrans_jax.checkpoints import Checkpointer
    from prottrans_jax.families import get as get_family

    family = get_family(family_name)
    model_dir_lib.write_model_json(str(path), model_dir_lib.describe_model(family, config,
                                                                           family.default_vocabulary()))
    params = jax.tree.map(jnp.asarray, params)
    with Checkpointer(str(path), save_interval_steps=1, async_save=False) as checkpointer:
        checkpointer.save_now(step, {"step": jnp.asarray(step), "params": params,
                                     "opt_state": {"mu": jax.tree.map(jnp.zeros_like, params)}},
                              {"batches_consumed": step})


# ------------------------------------------------------------------ ProtAlbert directories


# A tiny ALBERT in ProtAlbert's layout: 34-piece vocabulary, factorised embedding, one shared
# layer group, GELU, post-LayerNorm, dropout off (families-spec.md section 3.5).
TINY_ALBERT = dict(vocab_size=34, embedding_size=16, hidden_size=64, num_hidden_layers=3, num_hidden_groups=1,
                   inner_group_num=1, num_attention_heads=4, intermediate_size=128, max_position_embeddings=128,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_act="gelu")


def random_hf_albert(head: str = "pretraining", seed: int = 0, **overrides):
    """A random Hugging Face ALBERT (`pretraining`: AlbertForPreTraining, `mlm`:
    AlbertForMaskedLM, `model`: AlbertModel) with non-trivial LayerNorm parameters, eval mode."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.AlbertConfig(**{**TINY_ALBERT, **overrides}, attn_implementation="eager")
    cls = {"pretraining": transformers.AlbertForPreTraining, "mlm": transformers.AlbertForMaskedLM,
           "model": transformers.AlbertModel}[head]
    model = cls(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="session")
def tiny_albert_hf_dir(tmp_path_factory):
    """make(head, seed) -> a local HF directory of `random_hf_albert(head, seed)` with the
    project's ProtAlbert spiece.model, built once per (head, seed) and session."""
    made = {}

    def make(head: str = "pretraining", seed: int = 0) -> str:
        if (head, seed) not in made:
            from prottrans_jax.convert import albert as albert_convert

            path = tmp_path_factory.mktemp(f"tiny_albert_{head}_{seed}")
            random_hf_albert(head, seed).save_pretrained(path)
            albert_convert.write_tokenizer(str(path))
            made[head, seed] = str(path)
        return made[head, seed]

    return make


# ------------------------------------------------------------------ ProtElectra directories


# A tiny ELECTRA pair in ProtElectra's layout: shared embeddings 32 wide, a discriminator as
# wide (no projection) and a narrower generator (projected: `embeddings_project`).
TINY_ELECTRA = dict(vocab_size=30, embedding_size=32, max_position_embeddings=128, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, hidden_act="gelu")
TINY_ELECTRA_TOWERS = {
    "discriminator": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "generator": dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32),
}


def random_hf_electra(seed: int = 0, **overrides):
    """{"discriminator": ElectraForPreTraining, "generator": ElectraForMaskedLM}: random, in
    eval mode, with non-trivial LayerNorms, the generator's embeddings the discriminator's."""
    import torch
    import transformers

    torch.manual_seed(seed)
    models = {}
    for tower, cls in (("discriminator", transformers.ElectraForPreTraining),
                       ("generator", transformers.ElectraForMaskedLM)):
        config = transformers.ElectraConfig(**{**TINY_ELECTRA, **TINY_ELECTRA_TOWERS[tower], **overrides},
                                            attn_implementation="eager")
        models[tower] = cls(config).eval()
        with torch.no_grad():
            for name, parameter in models[tower].named_parameters():
                if "LayerNorm" in name:
                    parameter.uniform_(0.5, 1.5)
    models["generator"].electra.embeddings.load_state_dict(models["discriminator"].electra.embeddings.state_dict())
    return models


@pytest.fixture(scope="session")
def tiny_electra_hf_dir(tmp_path_factory):
    """make(seed) -> a directory holding `discriminator/` and `generator/`, each a Hugging Face
    directory of `random_hf_electra(seed)` with ProtBert's vocab.txt (as export_hf writes a
    whole ProtElectra); built once per seed and session."""
    made = {}

    def make(seed: int = 0) -> str:
        if seed not in made:
            from prottrans_jax.convert import electra as electra_convert

            path = tmp_path_factory.mktemp(f"tiny_electra_{seed}")
            for tower, model in random_hf_electra(seed).items():
                model.save_pretrained(path / tower)
                electra_convert.write_tokenizer(str(path / tower))
            made[seed] = str(path)
        return made[seed]

    return make


# ------------------------------------------------------------------ XLNet / Transformer-XL


# A tiny XLNet in ProtXLNet's layout (ReLU FFN, per-layer biases), dropout off, memory off.
TINY_XLNET = dict(vocab_size=30, d_model=32, n_layer=2, n_head=4, d_inner=64, ff_activation="relu",
                  dropout=0.0, mem_len=None, reuse_len=None, bi_data=False, clamp_len=-1)


def random_hf_xlnet(head: str = "lm", seed: int = 0, **overrides):
    """A random Hugging Face XLNet (`lm`: XLNetLMHeadModel, `model`: XLNetModel) in eval mode,
    with weights large enough that attention is far from uniform (HF's init, std 0.02, would
    make every score ~0 and hide layout errors) and non-trivial LayerNorms."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.XLNetConfig(**{**TINY_XLNET, **overrides})
    cls = {"lm": transformers.XLNetLMHeadModel, "model": transformers.XLNetModel}[head]
    model = cls(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm.weight" in name:
                parameter.uniform_(0.5, 1.5)
            elif name.endswith("bias") and "layer_norm" in name:
                parameter.normal_(0.0, 0.1)
            else:
                parameter.normal_(0.0, 0.2)
    return model


def train_flags(gin_file, model_dir, steps, task, *extra, batch=8, length=64):
    """`train` flags for a short run of `task` from `gin_file`: no evaluation, a line every 2 steps."""
    return [gin_file, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
            f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--gin.BATCH_SIZE={batch}",
            f"--gin.INPUTS_LENGTH={length}", "--gin.train.eval_split='train'",
            "--gin.train.eval_interval=None", "--gin.train.log_every=2", *extra]


def one_line_error(capsys):
    """The one stderr line of a command that failed on a user's mistake."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def run_training(argv):
    """`train.run(argv)`'s result, asserting that it exited 0 (the trainer tests' runs)."""
    from prottrans_jax import train as train_lib

    code, result = train_lib.run(argv)
    assert code == 0
    return result


def assert_trees_equal(a, b):
    """Bit-identical pytrees: same structure, every leaf equal (resume, round trips)."""
    import jax
    import numpy as np

    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))
