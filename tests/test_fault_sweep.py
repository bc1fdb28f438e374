"""scripts/fault_sweep.py keeps working: a few of its builder cases, classified as expected."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_sweep.py"


def test_the_sweep_classifies_builder_cases(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("fault_sweep", SCRIPT)
    sweep = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fault_sweep", sweep)  # its dataclasses look themselves up
    spec.loader.exec_module(sweep)
    cases = "build/bom,build/truncated_gz,build/num_shards_0,build/good"
    code = sweep.main(["--work", str(tmp_path / "work"), "--only", "build", "--cases", cases, "--trials", "0",
                       "--json", str(tmp_path / "sweep.json")])
    assert code == 0, capsys.readouterr().out
    outcomes = {case["name"]: case for case in json.loads((tmp_path / "sweep.json").read_text())["cases"]}
    assert {name: case["ending"] for name, case in outcomes.items()} == {
        "bom": "accepted", "truncated_gz": "one-line", "num_shards_0": "one-line", "good": "accepted"}
    assert "cut.fasta.gz" in outcomes["truncated_gz"]["detail"]
    assert all(case["as_expected"] for case in outcomes.values())
