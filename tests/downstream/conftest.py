"""Shared fixtures: the real benchmark data in ../shared/data (skip cleanly when absent)."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_FASTA = REPO_ROOT / "data" / "sample" / "uniprot_sample.fasta.gz"


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "netsurfp2" / "CB513_HHblits.csv").is_file():
        pytest.skip(f"{SHARED_DATA} not available")
    return SHARED_DATA
