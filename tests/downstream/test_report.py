"""The report sets a run beside the paper's figure of its family's released model."""

from prottrans_jax import families
from prottrans_jax.downstream.report import PAPER_BY_MODEL, Report


def test_each_family_is_set_beside_its_own_released_model():
    for family in families.all_families().values():
        for part in family.encoder.PARTS:  # ProtElectra: one paper row per tower
            assert ("Q3", "CB513") in PAPER_BY_MODEL[family.paper_model_for(part)], (family.name, part)
    entry = {"value": 0.8, "ci95": [0.79, 0.81], "stderr": 0.005, "n_proteins": 511}
    report = Report({"features": "embedded on the fly"}, families.get("prot_bert").paper_model)
    report.add("Q3", "CB513", entry, "CNN on NetSurfP-2.0 train", paper_protocol=True)
    table = report.comparison_table()
    assert "paper ProtBert-BFD" in table and "| Q3 | CB513 | 80.0 [79.0, 81.0] | 83.0 |" in table
