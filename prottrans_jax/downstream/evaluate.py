"""The paper's evaluation: frozen-embedding heads for secondary structure and localisation.

  python -m prottrans_jax.downstream.evaluate --benchmark secondary_structure \
      --features onehot --data_dir ../shared/data --report runs/eval/ss_onehot [--head cnn]
  python -m prottrans_jax.downstream.evaluate --benchmark localisation \
      --features unirep64 --data_dir ../shared/data --report runs/eval/loc_unirep64

`--features` is onehot | unirep1900 | unirep256 | unirep64 | PATH.h5 (written by the
embedding command; ids = FASTA ids, see --export_fasta); `--model_dir`/`--hf_model` embed the
benchmark sequences on the fly instead.

Protocols (printed, and stored in report.json):
  * secondary structure: train on the NetSurfP-2.0 training set (FLIP split), early stopping on
    its validation split, Q3 on CB513 and NEW364 (plus TS115/CASP12 CSVs when present); Q8 by
    k-fold cross-validation within CB513, copies of a sequence kept in one fold.
  * localisation: DeepLoc train/test when the FASTA flags test proteins, otherwise k-fold
    cross-validation within the file(s) found (e.g. Light Attention's 1,678-protein validation
    split); SCL2205 (p-scldata) with its own train/eval/heldout splits. Q2 and MCC on proteins
    with a known membrane label only.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from prottrans_jax import compilation_cache
from prottrans_jax.downstream import datasets, features as features_lib, metrics, training
from prottrans_jax.downstream.report import PAPER_MODEL, Report
from prottrans_jax.errors import main_with_one_line_errors


def _log(message):
    print(message, flush=True)


def grouped_folds(keys, k, seed):
    """Assigns items to k folds so that items with the same key share a fold."""
    unique = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[j]: i % k for i, j in enumerate(order)}
    return np.array([fold_of[key] for key in keys])


class FeatureSource:
    """Computes (or reads, or embeds in memory with a model) features for one dataset at a time.

    With a model (`model_dir` / `hf_model`, any family), the benchmark's sequences are embedded
    in memory and cached in `cache_dir` under the model's weight fingerprint.
    """

    def __init__(self, spec, model_dir=None, hf_model=None, cache_dir=None, part=None):
        self.spec, self.cache_dir = spec, cache_dir
        self.model = None
        if model_dir or hf_model:
            from prottrans_jax.inference import load_for_inference, replicated_sharding

            self.model = load_for_inference(model_dir, hf_model, sharding=replicated_sharding(), part=part)

    def __call__(self, dataset, per_residue):
        started = time.time()
        if self.model is not None:
            name = f"{self.model.family.name} {self.model.fingerprint}"
            result = features_lib.model_features(
                self.model, dataset.ids, dataset.sequences, per_residue, self.cache_dir, log=_log)
        else:
            name = Path(str(self.spec)).name
            result = features_lib.compute_features(
                str(self.spec), dataset.ids, dataset.sequences, per_residue,
                cache_dir=self.cache_dir, log=_log)
        _log(f"  features {name} for {dataset.name}: {len(dataset)} proteins "
             f"in {time.time() - started:.1f}s")
        return result


def _subsample(dataset, limit, seed):
    if not limit or len(dataset) <= limit:
        return dataset
    keep = np.sort(np.random.default_rng(seed).choice(len(dataset), limit, replace=False))
    return dataset.subset(keep)


def _score_residues(
    report, head_name, params, dataset, features, metric, protocol, config, paper_protocol=False
):
    pred3, pred8 = training.predict_residues(head_name, params, features, config.tokens_per_batch)
    labels, predictions, classes = (
        (dataset.ss8, pred8, datasets.SS8_CLASSES)
        if metric == "Q8"
        else (dataset.ss3, pred3, datasets.SS3_CLASSES)
    )
    entry = metrics.residue_accuracy(predictions, labels, dataset.mask)
    report.add(metric, dataset.name, entry, protocol, paper_protocol)
    report.add_confusion(
        metric,
        dataset.name,
        metrics.confusion_matrix(
            metrics.masked_flat(predictions, dataset.mask),
            metrics.masked_flat(labels, dataset.mask),
            len(classes),
        ),
        classes,
    )
    _log(
        f"  {metric} {dataset.name}: {entry['value']:.4f} [{entry['ci95'][0]:.4f}, "
        f"{entry['ci95'][1]:.4f}] over {entry['n_residues']} residues of "
        f"{entry['n_proteins']} proteins"
    )


def run_secondary_structure(args, report, featurize, config):
    data_dir = Path(args.data_dir)
    netsurfp = data_dir / "netsurfp2"
    cb513 = datasets.load_netsurfp_csv(netsurfp / "CB513_HHblits.csv", name="CB513")
    _log(f"loaded CB513: {len(cb513)} chains, {sum(m.sum() for m in cb513.mask)} scored residues")
    zip_path = netsurfp / "flip_secondary_structure_splits.zip"
    if args.only_cv:
        _log("--only_cv: skipping the NetSurfP-2.0-trained Q3 protocol")
    elif zip_path.exists():
        flip = datasets.load_flip_zip(zip_path)
        _log("loaded NetSurfP-2.0 (FLIP): " + ", ".join(f"{k} {len(v)}" for k, v in flip.items()))
        train = _subsample(flip["train"], args.max_train, args.seed)
        if len(train) < len(flip["train"]):
            _log(
                f"  training on a random subset: {len(train)} of {len(flip['train'])} chains "
                f"(--max_train)"
            )
        tests = [cb513, flip["test"]]
        for extra in ("TS115", "CASP12"):
            if (netsurfp / f"{extra}_HHblits.csv").exists():
                tests.append(
                    datasets.load_netsurfp_csv(netsurfp / f"{extra}_HHblits.csv", name=extra)
                )
        protocol = (
            "CNN on NetSurfP-2.0 train"
            if args.head == "cnn"
            else f"{args.head.upper()} on NetSurfP-2.0 train"
        )
        protocol += f" ({len(train)} chains, FLIP split), early stopping on its validation split"
        _log(f"[Q3] {protocol}")
        train_x, val_x = featurize(train, True), featurize(flip["validation"], True)
        result = training.train_residue_head(
            args.head, train, train_x, flip["validation"], val_x, config, log=_log
        )
        report.add_training(f"{args.head} NetSurfP-2.0", result)
        for test in tests:
            _score_residues(
                report,
                args.head,
                result.params,
                test,
                featurize(test, True),
                "Q3",
                protocol + f", tested on {test.name}",
                config,
                paper_protocol=args.head == "cnn" and len(train) == len(flip["train"]),
            )
    else:
        _log(f"{zip_path} not found: skipping the NetSurfP-2.0-trained Q3 protocol")

    # Q8: k-fold cross-validation within CB513 (no 8-state training set is distributed with it).
    k = args.cv_folds
    protocol = (
        f"{k}-fold cross-validation within CB513 ({args.head.upper()} multi-task 3+8 "
        "states; copies of a sequence in one fold; early stopping on 10% of the "
        "training folds), tested on CB513"
    )
    _log(f"[Q8] {protocol}")
    cb513_x = featurize(cb513, True)
    folds = grouped_folds(cb513.sequences, k, args.seed)
    pred8 = [None] * len(cb513)
    for fold in range(k):
        rest = np.flatnonzero(folds != fold)
        inner = grouped_folds([cb513.sequences[i] for i in rest], 10, args.seed + 1 + fold)
        fit, stop = rest[inner != 0], rest[inner == 0]
        result = training.train_residue_head(
            args.head,
            cb513.subset(fit),
            [cb513_x[i] for i in fit],
            cb513.subset(stop),
            [cb513_x[i] for i in stop],
            config,
            primary="ss8",
            log=None,
        )
        report.add_training(f"{args.head} CB513 fold {fold}", result)
        test = np.flatnonzero(folds == fold)
        _, p8 = training.predict_residues(args.head, result.params, [cb513_x[i] for i in test])
        for i, p in zip(test, p8):
            pred8[i] = p
        _log(f"  fold {fold}: best epoch {result.best_epoch}, {len(test)} test chains")
    entry = metrics.residue_accuracy(pred8, cb513.ss8, cb513.mask)
    report.add("Q8", "CB513", entry, protocol)
    report.add_confusion(
        "Q8",
        "CB513",
        metrics.confusion_matrix(
            metrics.masked_flat(pred8, cb513.mask), metrics.masked_flat(cb513.ss8, cb513.mask), 8
        ),
        datasets.SS8_CLASSES,
    )
    _log(f"  Q8 CB513 (CV): {entry['value']:.4f} [{entry['ci95'][0]:.4f}, {entry['ci95'][1]:.4f}]")


def _score_proteins(
    report, name, location_pred, membrane_pred, dataset, protocol, q_name, paper_protocol=False
):
    entry = metrics.protein_accuracy(location_pred, dataset.location)
    report.add(q_name, name, entry, protocol, paper_protocol)
    report.add_confusion(
        q_name,
        name,
        metrics.confusion_matrix(location_pred, dataset.location, len(dataset.classes)),
        dataset.classes,
    )
    _log(
        f"  {q_name} {name}: {entry['value']:.4f} [{entry['ci95'][0]:.4f}, "
        f"{entry['ci95'][1]:.4f}] over {entry['n_proteins']} proteins"
    )
    if (dataset.membrane >= 0).any():
        entry = metrics.protein_accuracy(membrane_pred, dataset.membrane)
        report.add(
            "Q2", name, entry, protocol + "; proteins with a known M/S label only", paper_protocol
        )
        report.add(
            "MCC",
            name,
            metrics.bootstrap_mcc(membrane_pred, dataset.membrane),
            protocol + "; proteins with a known M/S label only",
        )
        report.add_confusion(
            "Q2",
            name,
            metrics.confusion_matrix(membrane_pred, dataset.membrane, 2),
            datasets.MEMBRANE_CLASSES,
        )
        _log(
            f"  Q2 {name}: {entry['value']:.4f} over {entry['n_proteins']} proteins, MCC "
            f"{report.results['MCC'][name]['value']:.4f}"
        )


def _holdout(n, fraction, seed):
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, int(round(n * fraction)))
    return np.sort(order[cut:]), np.sort(order[:cut])


def run_localisation(args, report, featurize, config):
    deeploc_dir = Path(args.data_dir) / "deeploc"
    files = sorted(deeploc_dir.glob("*.fasta")) + sorted(deeploc_dir.glob("*.csv"))
    trains, tests = [], []
    for path in files:
        if path.suffix == ".csv":
            proteins, counts = datasets.load_localisation_csv(path)
            test = None
        else:
            proteins, test, counts = datasets.load_deeploc_fasta(path)
        _log(f"loaded {path.name}: {counts}")
        is_test_file = "test" in path.stem.lower() and test is None
        (tests if is_test_file else trains).append(proteins)
        if test is not None:
            tests.append(test)
    if trains:
        pool = trains[0] if len(trains) == 1 else _concat(trains, "DeepLoc")
        pool_x = featurize(pool, False)
        if tests:
            test = tests[0] if len(tests) == 1 else _concat(tests, "DeepLoc_test")
            fit, stop = _holdout(len(pool), 0.1, args.seed)
            protocol = (
                f"dense head on DeepLoc train ({len(fit)}), early stopping on 10% held out, "
                f"tested on DeepLoc test ({len(test)})"
            )
            _log(f"[Q10/Q2] {protocol}")
            predictor, result = training.train_protein_head(
                pool_x[fit], pool.subset(fit), pool_x[stop], pool.subset(stop), config, log=_log
            )
            report.add_training("DeepLoc", result)
            location_pred, membrane_pred = predictor(featurize(test, False))
            _score_proteins(
                report,
                "DeepLoc",
                location_pred,
                membrane_pred,
                test,
                protocol,
                "Q10",
                paper_protocol=True,
            )
        else:
            k = args.cv_folds
            protocol = (
                f"{k}-fold cross-validation within {pool.name} ({len(pool)} proteins; no "
                "DeepLoc test split given), early stopping on 10% of the training folds"
            )
            _log(f"[Q10/Q2] {protocol}")
            folds = grouped_folds(pool.sequences, k, args.seed)
            location_pred = np.zeros(len(pool), np.int64)
            membrane_pred = np.zeros(len(pool), np.int64)
            for fold in range(k):
                rest, test = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
                fit, stop = (rest[i] for i in _holdout(len(rest), 0.1, args.seed + fold))
                predictor, result = training.train_protein_head(
                    pool_x[fit], pool.subset(fit), pool_x[stop], pool.subset(stop), config, log=None
                )
                report.add_training(f"DeepLoc fold {fold}", result)
                location_pred[test], membrane_pred[test] = predictor(pool_x[test])
            _score_proteins(report, "DeepLoc", location_pred, membrane_pred, pool, protocol, "Q10")
    else:
        _log(f"no DeepLoc files in {deeploc_dir}: skipping DeepLoc")

    if args.skip_scl2205:
        return
    scl = datasets.load_scl2205()
    _log("loaded SCL2205 (p-scldata): " + ", ".join(f"{k} {len(v)}" for k, v in scl.items()))
    train = _subsample(scl["train"], args.max_train, args.seed)
    protocol = (
        f"dense head on SCL2205 train ({len(train)} of {len(scl['train'])}), early "
        f"stopping on its eval split, tested on its heldout split"
    )
    _log(f"[Q13] {protocol}")
    predictor, result = training.train_protein_head(
        featurize(train, False),
        train,
        featurize(scl["validation"], False),
        scl["validation"],
        config,
        log=_log,
    )
    report.add_training("SCL2205", result)
    location_pred, membrane_pred = predictor(featurize(scl["test"], False))
    _score_proteins(report, "SCL2205", location_pred, membrane_pred, scl["test"], protocol, "Q13")


def _concat(sets, name):
    return datasets.ProteinSet(
        name,
        sum((s.ids for s in sets), []),
        sum((s.sequences for s in sets), []),
        np.concatenate([s.location for s in sets]),
        np.concatenate([s.membrane for s in sets]),
        sets[0].classes,
    )


def export_fasta(args, path):
    """Writes the benchmark's sequences with the ids this command uses (for the embed command)."""
    data_dir, seen = Path(args.data_dir), {}
    if args.benchmark == "secondary_structure":
        sets = [datasets.load_netsurfp_csv(data_dir / "netsurfp2" / "CB513_HHblits.csv", "CB513")]
        zip_path = data_dir / "netsurfp2" / "flip_secondary_structure_splits.zip"
        if zip_path.exists():
            sets += list(datasets.load_flip_zip(zip_path).values())
    else:
        sets = []
        for fasta in sorted((data_dir / "deeploc").glob("*.fasta")):
            train, test, _ = datasets.load_deeploc_fasta(fasta)
            sets += [train] + ([test] if test is not None else [])
        if not args.skip_scl2205:
            sets += list(datasets.load_scl2205().values())
    for dataset in sets:
        for protein_id, sequence in zip(dataset.ids, dataset.sequences):
            if seen.setdefault(protein_id, sequence) != sequence:
                raise datasets.DatasetError(
                    f"{dataset.name}:0: id {protein_id} has two different sequences across the "
                    "benchmark's files (e.g. DeepLoc and SCL2205 UniProt versions); export and embed "
                    "them separately (--skip_scl2205 for DeepLoc alone)"
                )
    Path(path).write_text("".join(f">{i}\n{s}\n" for i, s in seen.items()))
    _log(f"wrote {len(seen)} sequences to {path}")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--benchmark", required=True, choices=["secondary_structure", "localisation"]
    )
    parser.add_argument(
        "--features", default="onehot", help="onehot | unirep1900 | unirep256 | unirep64 | PATH.h5"
    )
    parser.add_argument("--model_dir", help="embed on the fly with this checkpoint directory")
    parser.add_argument("--hf_model", help="embed on the fly with this Hugging Face model")
    parser.add_argument("--part", default=None,
                        help="with a model: which part embeds (ProtElectra: discriminator, the default, "
                             "or generator)")
    parser.add_argument("--data_dir", required=True, help="folder with netsurfp2/ and deeploc/")
    parser.add_argument("--report", help="output folder for report.json, report.md and plots")
    parser.add_argument(
        "--head",
        default="cnn",
        choices=["cnn", "lr", "fnn", "lstm"],
        help="per-residue head (localisation always uses the dense head)",
    )
    parser.add_argument("--cv_folds", type=int, default=10)
    parser.add_argument(
        "--max_train",
        type=int,
        default=0,
        help="train on a random subset of this many proteins (0 = all)",
    )
    parser.add_argument("--max_epochs", type=int, default=None,
                        help="default: 40 (secondary structure), 200 (localisation's per-protein head)")
    parser.add_argument("--patience", type=int, default=None, help="default: 5 / 20, as --max_epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", help="cache computed features (UniRep) here")
    parser.add_argument("--skip_scl2205", action="store_true")
    parser.add_argument(
        "--only_cv",
        action="store_true",
        help="secondary structure: only the CB513 cross-validation (Q8)",
    )
    parser.add_argument("--export_fasta", help="write the benchmark sequences here and exit")
    compilation_cache.add_flag(parser)
    args = parser.parse_args(argv)
    if not args.export_fasta and not args.report:
        parser.error("--report is required")
    if args.part and not (args.model_dir or args.hf_model):
        parser.error("--part needs --model_dir or --hf_model")
    for name, least in (("cv_folds", 2), ("max_epochs", 1), ("patience", 1), ("max_train", 0)):
        if getattr(args, name) is not None and getattr(args, name) < least:
            parser.error(f"--{name} must be at least {least}, got {getattr(args, name)}")
    if not Path(args.data_dir).is_dir():  # else every benchmark file would be "absent"
        parser.error(f"--data_dir {args.data_dir}: no such directory")
    return args


def training_config(args) -> training.TrainConfig:
    """The heads' training as it will run (and as the report describes it): the flags, else
    the benchmark's defaults (the per-protein head trains longer)."""
    defaults = (training.TrainConfig() if args.benchmark == "secondary_structure"
                else training.PROTEIN_HEAD_TRAINING)
    return training.TrainConfig(max_epochs=args.max_epochs or defaults.max_epochs,
                                patience=args.patience or defaults.patience, seed=args.seed)


def main(argv=None):
    """The command: exit 0 done, 2 bad data, features or model directory (one line)."""
    return main_with_one_line_errors(run, argv)


def run(argv=None):
    args = parse_args(argv)
    compilation_cache.enable(args.compilation_cache_dir)
    if args.export_fasta:
        export_fasta(args, args.export_fasta)
        return 0
    features = (
        f"embedded on the fly from {args.model_dir or args.hf_model}"
        + (f" ({args.part})" if args.part else "")
        if args.model_dir or args.hf_model
        else args.features
    )
    config = training_config(args)
    setup = {
        "benchmark": args.benchmark,
        "features": features,
        "head": args.head
        if args.benchmark == "secondary_structure"
        else "dense 32 (multi-task location + membrane)",
        "training": config.describe(),
        "data_dir": str(args.data_dir),
        "max_train": args.max_train or "all",
        "cv_folds": args.cv_folds,
        "machine": f"{os.cpu_count()} CPU cores, jax backend {jax.default_backend()}",
        "command": "python -m prottrans_jax.downstream.evaluate "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    _log("setup: " + "; ".join(f"{k}={v}" for k, v in setup.items()))
    features_source = FeatureSource(args.features, args.model_dir, args.hf_model, args.cache_dir, args.part)
    model = features_source.model
    report = Report(setup, model.family.paper_model_for(model.encoder.part) if model else PAPER_MODEL)
    started = time.time()
    runner = (
        run_secondary_structure if args.benchmark == "secondary_structure" else run_localisation
    )
    runner(args, report, features_source, config)
    report.setup["wall_seconds"] = round(time.time() - started, 1)
    path = report.write(args.report)
    _log("\n" + report.comparison_table())
    _log(f"\nwrote {path} ({report.setup['wall_seconds']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
