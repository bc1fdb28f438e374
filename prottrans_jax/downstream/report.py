"""Collects metrics of one evaluation run and writes report.json, report.md and PNG plots.

report.json: {metric: {test_set: {value, ci95, stderr, n_proteins, [n_residues], protocol}},
              "setup": ..., "details": {per-class accuracy, confusion matrices, training curves},
              "paper_comparison": [rows]}.
"""

import json
from pathlib import Path

import numpy as np

from prottrans_jax.downstream import metrics as metrics_lib

# The paper's figures (Elnaggar et al. 2021; the ProtTrans README's "Original downstream
# predictions" table, rounded %; NEW364 from the paper for ProtT5-XL-U50 only) and how they
# were obtained, per model: a run is set beside the released model of its family.
_PROTOCOLS = {
    ("Q3", "CB513"): "CNN on NetSurfP-2.0 train, tested on CB513",
    ("Q3", "NEW364"): "CNN on NetSurfP-2.0 train, tested on NEW364",
    ("Q8", "CB513"): "CNN on NetSurfP-2.0 train (8-state), tested on CB513",
    ("Q10", "DeepLoc"): "FNN on DeepLoc train, tested on DeepLoc test",
    ("Q2", "DeepLoc"): "FNN on DeepLoc train, tested on DeepLoc test",
}
_COLUMNS = (("Q3", "CB513"), ("Q8", "CB513"), ("Q10", "DeepLoc"), ("Q2", "DeepLoc"), ("Q3", "NEW364"))
_FIGURES = {  # one value per column of _COLUMNS; None: not reported for that model
    "ProtT5-XL-U50": (86.0, 74.0, 81.0, 91.0, 84.8),
    "ProtT5-XL-BFD": (84.0, 71.0, 77.0, 91.0, None),
    "ProtBert-BFD": (83.0, 70.0, 74.0, 89.0, None),
    "ProtBert": (81.0, 66.0, 74.0, 89.0, None),
    "ProtAlbert": (79.0, 65.0, 74.0, 88.0, None),
    "ProtXLNet": (78.0, 63.0, 68.0, 87.0, None),
    "ProtElectra-Discriminator": (79.0, 65.0, 70.0, 86.0, None),
    "ProtElectra-Generator": (76.0, 61.0, 59.0, 85.0, None),
    "ProtTXL": (74.0, 59.0, 66.0, 85.0, None),
    "ProtTXL-BFD": (77.0, 60.0, 65.0, 86.0, None),
}
PAPER_BY_MODEL = {
    model: {key: (value, _PROTOCOLS[key]) for key, value in zip(_COLUMNS, figures) if value is not None}
    for model, figures in _FIGURES.items()
}
PAPER_MODEL = "ProtT5-XL-U50"  # beside features that are no family's model (UniRep, one-hot)
METRICS = ("Q3", "Q8", "Q10", "Q13", "Q2", "MCC")


class Report:
    """Accumulates metric entries, details and training curves of one run."""

    def __init__(self, setup, paper_model=PAPER_MODEL):
        self.setup = dict(setup)
        self.paper_model = paper_model
        self.paper = PAPER_BY_MODEL[paper_model]
        self.results = {}
        self.details = {"per_class_accuracy": {}, "confusion_matrix": {}, "training": {}}

    def add(self, metric, test_set, entry, protocol, paper_protocol=False):
        """`paper_protocol`: True when training/test data and head match the paper's setup."""
        self.results.setdefault(metric, {})[test_set] = dict(
            entry, protocol=protocol, paper_protocol=paper_protocol
        )

    def add_confusion(self, metric, test_set, matrix, class_names):
        key = f"{metric}/{test_set}"
        self.details["confusion_matrix"][key] = {
            "classes": list(class_names),
            "matrix": np.asarray(matrix).tolist(),
        }
        self.details["per_class_accuracy"][key] = metrics_lib.per_class_accuracy(
            matrix, class_names
        )

    def add_training(self, name, result):
        self.details["training"][name] = {
            "best_epoch": result.best_epoch,
            "seconds": round(result.seconds, 1),
            "history": result.history,
        }

    # -------------------------------------------------------------------------------------------

    def paper_comparison(self):
        """Rows setting our numbers beside the paper's, labelled where model/protocol differ."""
        rows = []
        for metric in METRICS:
            for test_set, entry in self.results.get(metric, {}).items():
                paper = self.paper.get((metric, test_set.split(" ")[0]))
                notes = [f"different model ({self.setup.get('features')})"]
                if paper and not entry.get("paper_protocol"):
                    notes.append(f"different protocol: ours={entry['protocol']}; paper={paper[1]}")
                scale, digits = (1, 3) if metric == "MCC" else (100, 1)
                rows.append(
                    {
                        "metric": metric,
                        "test_set": test_set,
                        "ours": round(entry["value"] * scale, digits),
                        "ours_ci95": [round(v * scale, digits) for v in entry["ci95"]],
                        "paper": paper[0] if paper else None,
                        "note": "; ".join(notes) if paper else "no paper figure",
                    }
                )
        return rows

    def comparison_table(self):
        header = (
            f"| metric | test set | ours (95% CI) | paper {self.paper_model} | note |\n"
            "|---|---|---|---|---|\n"
        )
        lines = []
        for row in self.paper_comparison():
            paper = "-" if row["paper"] is None else f"{row['paper']:.1f}"
            lines.append(
                f"| {row['metric']} | {row['test_set']} | {row['ours']} "
                f"[{row['ours_ci95'][0]}, {row['ours_ci95'][1]}] | {paper} | "
                f"{row['note']} |"
            )
        return header + "\n".join(lines)

    def write(self, report_dir):
        report_dir = Path(report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        payload = {m: self.results[m] for m in METRICS if m in self.results}
        payload.update(
            setup=self.setup, details=self.details, paper_comparison=self.paper_comparison()
        )
        (report_dir / "report.json").write_text(json.dumps(payload, indent=1))
        plots = self._plot(report_dir)
        (report_dir / "report.md").write_text(self._markdown(plots))
        return report_dir / "report.json"

    def _markdown(self, plots):
        lines = ["# Downstream evaluation", "", "## Setup", ""]
        lines += [f"- **{k}**: {v}" for k, v in self.setup.items()]
        lines += [
            "",
            "## Results",
            "",
            "| metric | test set | value | 95% CI (bootstrap) | stderr | proteins | protocol |",
            "|---|---|---|---|---|---|---|",
        ]
        for metric in METRICS:
            for test_set, e in self.results.get(metric, {}).items():
                lines.append(
                    f"| {metric} | {test_set} | {e['value']:.4f} | [{e['ci95'][0]:.4f}, "
                    f"{e['ci95'][1]:.4f}] | {e['stderr']:.4f} | {e['n_proteins']} | "
                    f"{e['protocol']} |"
                )
        lines += [
            "",
            "## Beside the paper",
            "",
            self.comparison_table(),
            "",
            "## Per-class accuracy",
            "",
        ]
        for key, classes in self.details["per_class_accuracy"].items():
            cells = ", ".join(
                f"{c}: {'-' if v is None else f'{v:.3f}'}" for c, v in classes.items()
            )
            lines.append(f"- **{key}**: {cells}")
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
        return "\n".join(lines) + "\n"

    def _plot(self, report_dir):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        written = []
        runs = self.details["training"]
        if runs:
            fig, axes = plt.subplots(1, 2, figsize=(11, 4))
            for name, run in runs.items():
                epochs = [h["epoch"] for h in run["history"]]
                axes[0].plot(epochs, [h["train_loss"] for h in run["history"]], label=name)
                axes[1].plot(epochs, [h["val_accuracy"] for h in run["history"]], label=name)
            axes[0].set(title="training loss", xlabel="epoch")
            axes[1].set(title="validation accuracy (early stopping)", xlabel="epoch")
            if len(runs) <= 12:
                axes[1].legend(fontsize=7)
            fig.tight_layout()
            written.append(report_dir / "training_curves.png")
            fig.savefig(written[-1], dpi=100)
            plt.close(fig)
        for key, cm in self.details["confusion_matrix"].items():
            matrix = np.asarray(cm["matrix"], dtype=float)
            rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
            n = len(cm["classes"])
            fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n))
            ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
            ax.set_xticks(range(n), [c[:14] for c in cm["classes"]], rotation=60, ha="right")
            ax.set_yticks(range(n), [c[:14] for c in cm["classes"]])
            for i in range(n):
                for j in range(n):
                    ax.text(
                        j,
                        i,
                        int(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black",
                    )
            ax.set(title=f"confusion {key}", xlabel="predicted", ylabel="true")
            fig.tight_layout()
            written.append(report_dir / f"confusion_{key.replace('/', '_').replace(' ', '_')}.png")
            fig.savefig(written[-1], dpi=100)
            plt.close(fig)
        return written
