"""The evaluation command end to end: full CB513 with one-hot features (Q8 cross-validation),
DeepLoc localisation on a subset, and clear failures on bad input."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from prottrans_jax.downstream import evaluate
from tests.downstream.conftest import REPO_ROOT


def test_grouped_folds_keep_duplicates_together():
    keys = ["a", "b", "a", "c", "b", "d", "e", "a"]
    folds = evaluate.grouped_folds(keys, 3, seed=0)
    for key in set(keys):
        assert len({f for k, f in zip(keys, folds) if k == key}) == 1
    assert set(folds) == {0, 1, 2}


def test_full_cb513_onehot_run(shared_data, tmp_path):
    """All 511 CB513 chains; 5-fold CV keeps the run within CI time (~1-2 min on 2 cores)."""
    data_dir = tmp_path / "data"
    (data_dir / "netsurfp2").mkdir(parents=True)
    shutil.copy(shared_data / "netsurfp2" / "CB513_HHblits.csv", data_dir / "netsurfp2")
    report_dir = tmp_path / "report"
    assert 0 == evaluate.main(
        [
            "--benchmark",
            "secondary_structure",
            "--features",
            "onehot",
            "--data_dir",
            str(data_dir),
            "--report",
            str(report_dir),
            "--cv_folds",
            "5",
            "--max_epochs",
            "8",
            "--patience",
            "2",
        ]
    )
    report = json.loads((report_dir / "report.json").read_text())
    q8 = report["Q8"]["CB513"]
    # Every scored residue; 2 of the 511 chains have no residue with mask 1.
    assert q8["n_proteins"] == 509 and q8["n_residues"] == 83991
    # One-hot residues without context carry little: well above chance (~1/8, or the 0.3-0.4 of
    # always predicting the majority class), well below an embedding's 0.7.
    assert 0.42 < q8["value"] < 0.65, q8
    assert q8["ci95"][0] < q8["value"] < q8["ci95"][1]
    matrix = np.array(report["details"]["confusion_matrix"]["Q8/CB513"]["matrix"])
    assert matrix.shape == (8, 8) and matrix.sum() == 83991
    assert "cross-validation" in q8["protocol"]
    assert (report_dir / "report.md").read_text().count("| Q8 | CB513 |") == 2
    assert (report_dir / "training_curves.png").stat().st_size > 10_000


def test_localisation_subset(shared_data, tmp_path):
    lines = (shared_data / "deeploc" / "deeploc_la_val_set.fasta").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(">")] + [len(lines)]
    # Every 4th protein (the file is grouped by location): 400 proteins, all classes.
    subset = sum((lines[starts[i] : starts[i + 1]] for i in range(0, 1600, 4)), [])
    data_dir = tmp_path / "data"
    (data_dir / "deeploc").mkdir(parents=True)
    (data_dir / "deeploc" / "subset.fasta").write_text("\n".join(subset) + "\n")
    report_dir = tmp_path / "report"
    assert 0 == evaluate.main(
        [
            "--benchmark",
            "localisation",
            "--features",
            "onehot",
            "--data_dir",
            str(data_dir),
            "--report",
            str(report_dir),
            "--cv_folds",
            "3",
            "--skip_scl2205",
        ]
    )
    report = json.loads((report_dir / "report.json").read_text())
    assert report["Q10"]["DeepLoc"]["n_proteins"] == 400
    q2 = report["Q2"]["DeepLoc"]
    assert 0 < q2["n_proteins"] < 400  # unknown M/S labels excluded from Q2
    assert 0.2 < report["Q10"]["DeepLoc"]["value"] < 0.7
    assert -1 <= report["MCC"]["DeepLoc"]["value"] <= 1
    rows = {(r["metric"], r["test_set"]): r for r in report["paper_comparison"]}
    assert rows[("Q10", "DeepLoc")]["paper"] == 81.0
    assert "different protocol" in rows[("Q10", "DeepLoc")]["note"]
    assert (report_dir / "confusion_Q10_DeepLoc.png").is_file()


def test_cli_malformed_input_fails_with_one_line(tmp_path):
    (tmp_path / "deeploc").mkdir()
    (tmp_path / "deeploc" / "bad.fasta").write_text(">P1 Nucleus-U\nMKA\n>P2 Nucleus-Q\nMK\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prottrans_jax.downstream.evaluate",
            "--benchmark",
            "localisation",
            "--data_dir",
            str(tmp_path),
            "--report",
            str(tmp_path / "r"),
            "--skip_scl2205",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path}/deeploc/bad.fasta:3: membrane code 'Q' is not M, S or U"
    )


def test_folds_epochs_and_patience_that_cannot_train_are_refused(capsys):
    """--cv_folds 0 and 1 ended in tracebacks; --max_epochs 0 reported untrained heads."""
    base = ["--benchmark", "secondary_structure", "--features", "onehot", "--data_dir", "d", "--report", "r"]
    for flag, value, least in (("--cv_folds", "1", 2), ("--cv_folds", "0", 2), ("--max_epochs", "0", 1),
                               ("--patience", "0", 1), ("--max_train", "-1", 0)):
        with pytest.raises(SystemExit) as exit_info:
            evaluate.parse_args([*base, flag, value])
        assert exit_info.value.code == 2
        assert f"{flag} must be at least {least}, got {value}" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a missing --data_dir once skipped DeepLoc and exited 0
        evaluate.parse_args(base)
    assert "--data_dir d: no such directory" in capsys.readouterr().err


def test_the_report_describes_the_training_that_runs(tmp_path):
    """The per-protein head trained up to 200 epochs (patience 20) while the report said
    "<= 40 epochs, patience 5"; the flags now reach it, and the report says what ran."""
    base = ["--features", "onehot", "--data_dir", str(tmp_path), "--report", "r"]
    localisation = evaluate.training_config(evaluate.parse_args(["--benchmark", "localisation", *base]))
    assert (localisation.max_epochs, localisation.patience) == (200, 20)
    assert "<= 200 epochs" in localisation.describe() and "patience 20" in localisation.describe()
    chosen = evaluate.training_config(evaluate.parse_args(["--benchmark", "localisation", *base,
                                                           "--max_epochs", "7", "--patience", "2"]))
    assert (chosen.max_epochs, chosen.patience) == (7, 2)
    structure = evaluate.training_config(evaluate.parse_args(["--benchmark", "secondary_structure", *base]))
    assert (structure.max_epochs, structure.patience) == (40, 5)
