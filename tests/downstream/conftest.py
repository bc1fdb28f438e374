"""Shared fixtures: the real benchmark data in ../shared/data (skip cleanly when absent)."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_FASTA = REPO_ROOT / "data" / "sample" / "uniprot_sample.fasta.gz"


def assert_png_is_nontrivial(path, min_bytes=20_000):
    """A plot, not a blank or one-colour canvas."""
    import matplotlib.image
    import numpy as np

    assert path.stat().st_size > min_bytes
    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.05  # not a blank canvas
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50  # several colours


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "netsurfp2" / "CB513_HHblits.csv").is_file():
        pytest.skip(f"{SHARED_DATA} not available")
    return SHARED_DATA


# Tiny ProtTXL and ProtXLNet MODEL_DIRs, trained two steps by the train command on the short
# real proteins (tests/conftest.py `corpus`): the evaluation and t-SNE commands read a
# checkpoint as a user's run leaves it. 32 wide, 2 layers.
TRAINED_FAMILIES = {
    "prot_txl": ("--gin_file=gin/experiments/prot_txl_tiny_sample.gin", "short_causal_lm",
                 ["--gin.TransfoXLConfig.hidden_size=32", "--gin.TransfoXLConfig.head_dim=8",
                  "--gin.TransfoXLConfig.intermediate_size=64", "--gin.TransfoXLConfig.mem_len=16"]),
    "prot_xlnet": ("--gin_file=gin/experiments/prot_xlnet_tiny_sample.gin", "short_permutation_lm",
                   ["--gin.XLNetConfig.hidden_size=32", "--gin.XLNetConfig.head_dim=8",
                    "--gin.XLNetConfig.intermediate_size=64"]),
}


@pytest.fixture(scope="module", params=sorted(TRAINED_FAMILIES))
def trained_xl_model_dir(request, corpus, tmp_path_factory):
    """(family, MODEL_DIR) of a two-step run; each family's directory is built once per module."""
    from tests.conftest import ONE_DEVICE, run_training, train_flags

    family = request.param
    gin_file, task, sizes = TRAINED_FAMILIES[family]
    model_dir = tmp_path_factory.mktemp(family)
    run_training(train_flags(gin_file, model_dir, 2, task, *sizes, *ONE_DEVICE, batch=4, length=32))
    return family, model_dir
