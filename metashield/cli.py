"""The ``metashield`` command."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from metashield import __version__
from metashield.attacks.state import compile_unavailable, set_compile
from metashield.classify.config import DEMO_CONFIGS
from metashield.cli_values import (
    count,
    csv_baselines,
    csv_budgets,
    csv_counts,
    csv_names,
    fraction,
)
from metashield.config import BASELINES, DATASET_DEFAULTS, ConfigError, load_config
from metashield.data import DownloadError
from metashield.data.registry import UnknownDatasetError
from metashield.device import DEVICES
from metashield.train import TrainingDiverged

log = logging.getLogger("metashield")

DEMO_OVERRIDES = [
    "train.steps=300",
    "train.eval_every=50",
    "train.patience=3",
    "train.val_episodes=5",
    "train.pretrain_steps=600",
    "evaluate.shots=[5]",
    "evaluate.episodes_per_family=10",
    "evaluate.tune_episodes=3",
    "evaluate.finetune_lrs=[0.01, 0.1]",
    "evaluate.finetune_steps=[20, 100]",
    "evaluate.scratch_lrs=[0.1]",
    "evaluate.scratch_steps=[100]",
    "evaluate.logreg_cs=[1.0, 100.0]",
]


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=500 (repeatable)",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="seed for initialisation, training and evaluation episodes (bit-for-bit on CPU); the family "
        "split and benign slices follow split.seed",
    )
    p.add_argument("--device", choices=DEVICES, help="where to train (default: the config's, auto)")


def _load(args: argparse.Namespace, base: list[str] | None = None):
    overrides = list(base or []) + list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    return load_config(getattr(args, "config", None), overrides)


def cmd_data_list(args: argparse.Namespace) -> int:
    from metashield.data import REGISTRY, data_home

    print(f"cache: {data_home()}")
    for name, spec in REGISTRY.items():
        print(f"{name:<16} {spec.description}")
    print(f"{'unsw-nb15':<16} UNSW-NB15 flows, 9 attack categories: your own partition CSVs via data.paths")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from metashield.data import fetch

    print(fetch(args.name))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from metashield.workflow import train_run

    config = _load(args)
    summary = train_run(config, args.out, resume=args.resume, progress=not args.quiet)
    for algo, s in summary.items():
        print(
            f"{algo:<10} best meta-val TPR@1%FPR {100 * s['best_val_tpr@1%fpr']:.1f}% "
            f"after {s['steps']} steps"
        )
    print(f"run written to {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from metashield.workflow import evaluate_run

    report = evaluate_run(
        args.run,
        shots=args.shots,
        episodes_per_family=args.episodes,
        baselines=args.baselines,
        ensemble=args.ensemble,
        novelty=args.novelty,
        out_name=args.out_name,
        device=args.device,
    )
    print(report["table"])
    print(f"\nmetrics written to {Path(args.run) / args.out_name}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from metashield.workflow import evaluate_run, train_run

    start = time.perf_counter()
    if args.dataset in DEMO_CONFIGS:
        return _classify_demo(args, start)
    if args.dataset not in DATASET_DEFAULTS:
        raise ValueError(
            f"demo runs on {sorted([*DATASET_DEFAULTS, *DEMO_CONFIGS])}; for {args.dataset!r} write a config "
            "(see configs/) and use `metashield train` + `metashield evaluate`"
        )
    config = _load(args, [*DATASET_DEFAULTS[args.dataset], *DEMO_OVERRIDES, f"data.dataset={args.dataset}"])
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="metashield-demo-"))
    print(
        f"demo: meta-training on {args.dataset} with a small budget "
        f"({config.train.steps} steps per algorithm)"
    )
    train_run(config, out, progress=not args.quiet)
    report = evaluate_run(out)
    print(report["table"])
    print(
        f"\nThis is the demo protocol: {config.evaluate.episodes_per_family} episodes per held-out family at "
        f"{config.evaluate.shots} shots, fewer than the full protocol's 50, and smaller baseline grids "
        "(`metashield train` + `metashield evaluate` run the full protocol)."
    )
    print(f"run and metrics.json in {out}; {time.perf_counter() - start:.0f} s")
    return 0


def _classify_demo(args: argparse.Namespace, start: float) -> int:
    from metashield.classify import classify_run

    if args.overrides:
        raise ValueError(
            f"--set does not apply to the {args.dataset} demo: copy its config and run `metashield classify`"
        )
    config = dict(DEMO_CONFIGS[args.dataset])
    config.update({k: v for k, v in (("seed", args.seed), ("device", args.device)) if v is not None})
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="metashield-demo-"))
    print(f"demo: N-way family classification on {args.dataset} ({config['steps']} meta-steps per algorithm)")
    report = classify_run(config, out)
    print(report["table"])
    print(f"\nreport in {out / 'classify.json'}; {time.perf_counter() - start:.0f} s")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from metashield.classify import classify_run

    report = classify_run(args.config, args.out)
    print(report["table"])
    print(f"\nreport written to {Path(args.out) / 'classify.json'} ({report['seconds']:.0f} s)")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from metashield.robustness import attack_run

    report = attack_run(
        args.run,
        threat=args.attack if args.attack in ("support", "end-to-end") else "query",
        attack=args.optimiser if args.attack in ("support", "end-to-end") else args.attack,
        eps=args.eps,
        norm=args.norm,
        constraints=args.constraints,
        methods=args.methods,
        shots=args.shots,
        episodes=args.episodes,
        fraction=args.fraction,
        mode=args.mode,
        attacker_benign=args.attacker_benign,
        out_name=args.out_name,
        sanity=not args.no_sanity,
        device=args.device,
    )
    print(report["table"])
    print(f"\nresults written to {Path(args.run) / args.out_name}")
    flagged = [m for m, r in report["methods"].items() if isinstance(r, dict) and r.get("flags")]
    if flagged:
        print(f"WARNING: sanity checks flagged for {flagged}: the robust numbers may overstate robustness")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from metashield.analyst import adapt_run

    record = adapt_run(
        args.run,
        args.support,
        args.out,
        algorithm=args.algorithm,
        label_column=args.label_column,
        benign_label=args.benign_label,
    )
    s, t = record["support"], record["threshold"]
    print(
        f"{record['algorithm']} ({record['algorithm_choice']}) adapted on {s['new_family_rows']} new-family "
        f"and {s['benign_rows']} benign rows"
    )
    print(
        f"threshold {t['value']:.6g} for {100 * t['target_fpr']:g}% FPR on {t['benign_val_rows']} benign "
        f"validation rows (FPR resolution {100 * t['fpr_resolution']:.3g}%)"
    )
    print(f"adapted run written to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from metashield.analyst import predict_file

    summary = predict_file(
        args.run, args.input, args.out, label_column=args.label_column, benign_label=args.benign_label
    )
    print(
        f"{summary['flagged']} of {summary['rows']} rows flagged (score > {summary['threshold']:.6g}); "
        f"scores written to {args.out}"
    )
    for name, rate in (("new_family", "TPR"), ("benign", "FPR")):
        part = summary.get(name)
        if part and part["rows"]:
            print(f"{rate} {part['flagged']}/{part['rows']} = {100 * part['flagged'] / part['rows']:.1f}%")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metashield", description=__doc__)
    parser.add_argument("--version", action="version", version=f"metashield {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=count(1), help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run evasion attacks' steps through torch.compile: faster on large batches, after seconds of "
        "compilation per new shape; needs a C++ compiler on CPU",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="list and download datasets").add_subparsers(
        dest="data_command", required=True
    )
    data.add_parser("list", help="datasets in the registry").set_defaults(func=cmd_data_list)
    dl = data.add_parser(
        "download", help="fetch a dataset into the cache (mirrors in order, sha256-verified)"
    )
    dl.add_argument("name")
    dl.set_defaults(func=cmd_data_download)

    tr = sub.add_parser("train", help="meta-train the configured algorithms")
    tr.add_argument("--config", type=Path, help="YAML config (default: built-in defaults)")
    tr.add_argument("--out", type=Path, required=True, help="run directory")
    tr.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _config_args(tr)
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "evaluate", help="few-shot detection of held-out families, every method on the same episodes"
    )
    ev.add_argument("--run", type=Path, required=True)
    ev.add_argument("--device", choices=DEVICES, help="where to evaluate (default: the run config's)")
    ev.add_argument("--shots", type=csv_counts, help="e.g. 1,5,10 (default: the run config's)")
    ev.add_argument(
        "--episodes", type=count(1), help="episodes per held-out family (default: the run config's)"
    )
    ev.add_argument(
        "--baselines",
        type=csv_baselines,
        help=f"comma-separated baselines to tune and score, of {', '.join(BASELINES)} "
        "(default: the run config's evaluate.baselines)",
    )
    ev.add_argument(
        "--ensemble",
        type=csv_names,
        help="comma-separated meta-learners of the run whose logit margins are averaged into one more "
        "candidate, `ensemble`, e.g. metasgd,maml,fomaml (default: the run config's evaluate.ensemble)",
    )
    ev.add_argument(
        "--novelty",
        type=csv_names,
        help="comma-separated methods (meta-learners, ensemble, baselines) that each get one more candidate, "
        "`<method>+novelty`: blended with the distance to the nearest benign training rows, weight and k "
        "chosen on meta-val; give both sides one, e.g. metasgd,ensemble,finetune,logreg-replay (default: the "
        "run config's evaluate.novelty)",
    )
    ev.add_argument(
        "--out-name",
        default="metrics.json",
        help="file written inside the run directory (`attack` reads tuned baselines from metrics.json)",
    )
    ev.set_defaults(func=cmd_evaluate)

    from metashield.attacks.presets import PRESETS
    from metashield.attacks.support import MODES

    at = sub.add_parser(
        "attack",
        help="clean vs robust detection of a run's held-out families under evasion or support-set attacks",
        description="Epsilon is measured in the model's standardised feature space: z-units, i.e. "
        "per-feature standard deviations of the meta-training rows (L-inf: per feature; L2: over the "
        "vector). With --constraints default the dataset's threat schema also holds: raw-unit bounds, "
        "integer counts, valid one-hot categories, immutable features; only malicious samples move.",
    )
    at.add_argument("--run", type=Path, required=True)
    at.add_argument(
        "--attack",
        default="pgd",
        choices=[*PRESETS, "ensemble", "support", "end-to-end"],
        help="an evasion attack on the queries after adaptation, 'ensemble' (worst case per sample of "
        "pgd, apgd-ce, apgd-margin, mimicry and square, with sanity checks), 'support' (poisoned "
        "support set) or 'end-to-end' (each query is also a support row; gradients flow through its "
        "adaptation)",
    )
    at.add_argument(
        "--eps",
        type=csv_budgets,
        default=[0.05, 0.1, 0.2],
        help="budgets in z-units, e.g. 0.05,0.1; whole edits for --attack edits, e.g. 1,3,10",
    )
    at.add_argument(
        "--norm", choices=["linf", "l2", "edits"], help="default: edits for --attack edits, else linf"
    )
    at.add_argument("--constraints", choices=["default", "none"], default="default")
    at.add_argument(
        "--methods",
        type=lambda t: [m for m in t.split(",") if m],
        help="trained meta-learners, ensemble (the members of evaluate.ensemble) and finetune; knn, logreg "
        "and logreg-replay too for query attacks (default: the meta-val choice and finetune)",
    )
    at.add_argument("--shots", type=count(1), default=5)
    at.add_argument("--episodes", type=count(1), default=10, help="episodes per held-out family")
    at.add_argument("--fraction", type=fraction, default=0.2, help="support: share of malicious support rows")
    at.add_argument("--mode", choices=MODES, default="flip-optimised", help="support: what the attacker does")
    at.add_argument(
        "--attacker-benign",
        type=count(0),
        default=2000,
        help="support: benign rows the attacker holds to estimate the 1%%-FPR threshold, drawn from the "
        "run's benign validation slice (never the evaluation queries); 0: only the benign support rows",
    )
    at.add_argument(
        "--optimiser",
        default="pgd",
        # A benign start (mimicry) moves a malicious row to a benign one: not a perturbation of the row.
        choices=[name for name, a in PRESETS.items() if a.start != "benign"],
        help="support / end-to-end: the optimiser",
    )
    at.add_argument("--device", choices=DEVICES, help="where to attack (default: the run config's)")
    at.add_argument(
        "--no-sanity",
        action="store_true",
        help="query attacks: skip the sanity checks (5x the steps, a huge eps, gradient-free vs white-box)",
    )
    at.add_argument("--out-name", default="attack.json", help="file written inside the run directory")
    at.set_defaults(func=cmd_attack)

    ad = sub.add_parser(
        "adapt",
        help="adapt a run's meta-learner to a new family from a few labelled rows in raw units",
        description="The support CSV holds the run's raw feature columns and a label column: rows labelled "
        "--benign-label are benign, every other label is the new family (at least 1 row of each). The "
        "operating threshold is set for 1% FPR on the run's benign validation rows.",
    )
    ad.add_argument("--run", type=Path, required=True, help="a run directory written by `metashield train`")
    ad.add_argument("--support", type=Path, required=True, help="labelled CSV in raw units")
    ad.add_argument("--out", type=Path, required=True, help="new adapted-run directory (must not exist)")
    ad.add_argument(
        "--algorithm",
        help="meta-learner to adapt, 'ensemble' for the members of evaluate.ensemble, or a blend "
        "`<method>+novelty` that evaluate scored (default: the best on meta-val in metrics.json, the "
        "ensemble and blends included)",
    )
    ad.add_argument("--label-column", default="label")
    ad.add_argument("--benign-label", default="benign")
    ad.set_defaults(func=cmd_adapt)

    pr = sub.add_parser("predict", help="score a CSV in raw units with an adapted run")
    pr.add_argument("--run", type=Path, required=True, help="a directory written by `metashield adapt`")
    pr.add_argument("--input", type=Path, required=True, help="CSV in raw units; a label column is optional")
    pr.add_argument("--out", type=Path, required=True, help="scores CSV: row, line, score, flagged")
    pr.add_argument("--label-column", help="default: the support file's")
    pr.add_argument("--benign-label", help="default: the support file's")
    pr.set_defaults(func=cmd_predict)

    cl = sub.add_parser(
        "classify",
        help="N-way K-shot family classification of held-out families (no benign class)",
        description="Meta-learners, pretrain + fine-tune, 1-NN and logistic regression on the same fixed "
        "test episodes of held-out families; hyper-parameters chosen on meta-val episodes.",
    )
    cl.add_argument("--config", type=Path, required=True, help="YAML, e.g. configs/drebin_families.yaml")
    cl.add_argument("--out", type=Path, required=True, help="run directory (classify.json, checkpoints)")
    cl.set_defaults(func=cmd_classify)

    demo = sub.add_parser("demo", help="meta-train briefly and compare with the baselines (a few minutes)")
    demo.add_argument("--dataset", default="nsl-kdd")
    demo.add_argument("--out", type=Path, help="run directory (default: a new temporary one)")
    demo.add_argument("-q", "--quiet", action="store_true")
    _config_args(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help, --version and bad values; callers of main() get the status instead.
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    missing = compile_unavailable() if args.compile else None
    if missing:
        print(
            "metashield: error: --compile needs a C++ compiler and the Python headers for torch.compile "
            f"on CPU: {missing}; run without --compile",
            file=sys.stderr,
        )
        return 2
    set_compile(args.compile)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, DownloadError) as exc:
        print(f"metashield: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"metashield: error: {exc}", file=sys.stderr)
        return 3
    except UnknownDatasetError as exc:
        print(f"metashield: error: {exc.args[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
