"""Few-shot detection quality on NSL-KDD held-out families: every method, several family splits x seeds.

    python benchmarks/few_shot_quality.py --splits 0,1,2 --seeds 0,1,2 --out runs/quality

Each (split, seed) is a full ``metashield train`` + ``evaluate`` run of ``configs/nsl_kdd.yaml`` (resumable:
finished runs are reused). The best meta-learner and the best baseline are chosen on meta-val families in
each run; this script only pools the test results and writes ``quality.json`` and ``quality.md``.

A finished run is reused only if it was made with the same protocol: the same config outside the keys that
choose families, and the same meta-train / meta-val / test families. Its trained models are re-evaluated
(``metrics.json`` rewritten) when its metrics were made with other ``evaluate.baselines`` or
``evaluate.ensemble`` than the config gives, since those need no training.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

import numpy as np

from metashield._atomic import atomic_write_json, atomic_write_text, check_file_name
from metashield.config import Config, load_config
from metashield.experiment import prepare
from metashield.runs import load_run_config, read_metrics
from metashield.workflow import evaluate_run, train_run

REPO = Path(__file__).resolve().parents[1]
METRIC = "tpr@1%fpr"


FAMILY_KEYS = ("val_families", "test_families", "never_test", "n_val", "n_test", "min_rows")
# Evaluation options that `evaluate_run` can apply to a trained run without training again.
REEVALUATE_KEYS = ("baselines", "ensemble", "novelty")


def _protocol(config: Config) -> dict:
    """The config without the keys that only choose families (their result is compared instead) and
    without the evaluation options a finished run can be re-evaluated with."""
    d = config.model_dump(mode="json")
    d["split"] = {k: v for k, v in d["split"].items() if k not in FAMILY_KEYS}
    d["evaluate"] = {k: v for k, v in d["evaluate"].items() if k not in REEVALUATE_KEYS}
    return d


def _evaluated_with(metrics: dict) -> dict:
    """The ``REEVALUATE_KEYS`` a ``metrics.json`` was made with (sorted baselines; ensemble and novelty as
    listed)."""
    shots = metrics["shots"].values()
    return {
        "baselines": sorted({b for s in shots for b in s["tuned_baselines"]}),
        "ensemble": metrics["protocol"].get("ensemble", []),
        "novelty": metrics["protocol"].get("novelty"),
    }


_FAMILIES: dict[str, dict] = {}


def _families(config: Config) -> dict:
    """The family split ``config`` gives. It depends on the data and split settings only, and loading the data
    is the slow part, so it is computed once per split rather than once per run."""
    key = json.dumps(
        [config.data.model_dump(mode="json"), config.split.model_dump(mode="json")], sort_keys=True
    )
    if key not in _FAMILIES:
        _FAMILIES[key] = prepare(config).split.to_dict()
    return _FAMILIES[key]


def run_one(out: Path, split: int, seed: int, overrides: list[str], episodes: int | None) -> dict:
    run = out / f"split{split}_seed{seed}"
    config = load_config(
        REPO / "configs" / "nsl_kdd.yaml", [f"split.seed={split}", f"seed={seed}", *overrides]
    )
    metrics = read_metrics(run)
    if metrics is None:
        train_run(config, run, resume=run.exists(), progress=False)
        return evaluate_run(run, episodes_per_family=episodes)
    # Parsed, so that keys added to the config since the run was made take their defaults.
    saved, meta = load_run_config(run)
    if _protocol(saved) != _protocol(config) or meta["split"] != _families(config):
        raise SystemExit(f"{run} was made with another protocol than these options give: use another --out")
    novelty = config.evaluate.novelty
    wanted = {
        "baselines": sorted(config.evaluate.baselines),
        "ensemble": list(config.evaluate.ensemble),
        "novelty": novelty.model_dump() if novelty else None,
    }
    if _evaluated_with(metrics) == wanted:
        return metrics
    logging.getLogger(__name__).info("%s: re-evaluating with %s", run, wanted)
    return evaluate_run(
        run,
        episodes_per_family=episodes,
        baselines=list(config.evaluate.baselines),
        ensemble=list(config.evaluate.ensemble),
        novelty=list(novelty.methods) if novelty else None,
    )


def sides(entry: dict, excluded: set[str] = frozenset()) -> tuple[list[str], list[str]]:
    """(meta-learner candidates, baseline candidates) of one shot's ``metrics.json`` entry, from the methods
    it scored on meta-val: the tuned baselines and their novelty blends on one side, every other method
    (meta-learners, the ``ensemble`` candidate, their blends, candidates a study added) on the other."""
    bases = set(entry["tuned_baselines"])
    bases |= {name for name, b in entry.get("novelty", {}).items() if b["method"] in bases}
    val = [m for m in entry["val_tpr@1%fpr"] if m not in excluded]
    return [m for m in val if m not in bases], [m for m in val if m in bases]


def without(report: dict, excluded: set[str]) -> dict:
    """``report`` with each shot's best meta-learner and best baseline chosen again on meta-val, as if the
    ``excluded`` methods had not been candidates (an ablation of the val choice; no test figure is used)."""
    out = copy.deepcopy(report)
    for entry in out["shots"].values():
        meta, bases = sides(entry, excluded)
        if not meta or not bases:
            raise SystemExit(f"--exclude leaves no meta-learner or no baseline: {meta + bases}")
        val = entry["val_tpr@1%fpr"]
        entry["best_baseline"] = max(bases, key=val.__getitem__)
        entry["best_meta_learner"] = max(meta, key=val.__getitem__)
    return out


def bootstrap_ci(
    values: np.ndarray, rng: np.random.Generator, n_boot: int = 4000
) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of ``n_boot`` bootstrap means) of per-unit ``values``."""
    draws = rng.choice(values, size=(n_boot, len(values)), replace=True).mean(axis=1)
    return float(values.mean()), float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def pool(reports: list[dict]) -> dict:
    """Per shot and method: mean over (run, family) units of the per-family mean, with a bootstrap CI over
    those units; the val-chosen best meta-learner vs best baseline as a paired per-family difference."""
    rng = np.random.default_rng(0)
    out: dict = {}
    for shot in sorted(reports[0]["shots"], key=int):
        methods = list(reports[0]["shots"][shot]["summary"])
        units: dict[str, list[float]] = {m: [] for m in methods + ["best-meta", "best-baseline"]}
        hard_gap: list[float] = []
        for rep in reports:
            entry = rep["shots"][shot]
            fams = sorted(entry["summary"][methods[0]]["per_family"])
            for m in methods:
                units[m] += [entry["summary"][m]["per_family"][f][METRIC] for f in fams]
            meta = [entry["summary"][entry["best_meta_learner"]]["per_family"][f][METRIC] for f in fams]
            base = [entry["summary"][entry["best_baseline"]]["per_family"][f][METRIC] for f in fams]
            units["best-meta"] += meta
            units["best-baseline"] += base
            hardest = np.argsort(base)[:3]
            hard_gap.append(float(np.mean(np.array(meta)[hardest] - np.array(base)[hardest])))
        diff = np.array(units["best-meta"]) - np.array(units["best-baseline"])
        out[shot] = {
            "methods": {
                m: dict(zip(("mean", "lo", "hi"), bootstrap_ci(np.array(v), rng), strict=True))
                for m, v in units.items()
            },
            "best_meta_minus_best_baseline": dict(
                zip(("mean", "lo", "hi"), bootstrap_ci(diff, rng), strict=True)
            ),
            "hardest3_gap_mean_over_runs": float(np.mean(hard_gap)),
            "units": len(diff),
        }
    return out


def markdown(pooled: dict, reports: list[dict], args: argparse.Namespace, excluded: str = "") -> str:
    shots = list(pooled)
    methods = list(pooled[shots[0]]["methods"])
    lines = [
        f"TPR@1%FPR (%) on held-out NSL-KDD families, splits {args.splits} x seeds {args.seeds}; "
        "mean over (run, family) with 95% bootstrap CI over those units."
        + (f" Left out of the val choice: {excluded}." if excluded else ""),
        "",
        "| method | " + " | ".join(f"{s}-shot" for s in shots) + " |",
        "|---|" + "---|" * len(shots),
    ]
    for m in methods:
        cells = []
        for s in shots:
            r = pooled[s]["methods"][m]
            cells.append(f"{100 * r['mean']:.1f} [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    cells = []
    for s in shots:
        d = pooled[s]["best_meta_minus_best_baseline"]
        cells.append(f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]")
    lines.append("| best meta − best baseline (paired) | " + " | ".join(cells) + " |")
    lines.append(
        "| same, 3 hardest families | "
        + " | ".join(f"{100 * pooled[s]['hardest3_gap_mean_over_runs']:+.1f}" for s in shots)
        + " |"
    )
    picks = [
        f"split{r['protocol'].get('split_seed', '?')} seed{r['protocol'].get('train_seed', '?')}: "
        + ", ".join(
            f"{s}-shot {r['shots'][s]['best_meta_learner']}/{r['shots'][s]['best_baseline']}" for s in shots
        )
        for r in reports
    ]
    lines += ["", "Chosen on meta-val (best meta-learner / best baseline): " + "; ".join(picks)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--splits", default="0,1,2")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--episodes", type=int, help="episodes per family (default: the config's 50)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--finished-only", action="store_true", help="pool only runs that have metrics")
    parser.add_argument(
        "--exclude",
        default="",
        help="comma-separated methods left out of the val choice of best meta-learner and best baseline "
        "(an ablation, e.g. the novelty blends)",
    )
    parser.add_argument(
        "--name",
        help="base name of the tables written under --out (default: quality, with --exclude quality_without)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reports = []
    # Seed-major order: an interrupted benchmark still covers every split.
    for seed in (int(s) for s in args.seeds.split(",")):
        for split in (int(s) for s in args.splits.split(",")):
            if args.finished_only and not (args.out / f"split{split}_seed{seed}" / "metrics.json").is_file():
                continue
            rep = run_one(args.out, split, seed, args.overrides, args.episodes)
            rep["protocol"]["split_seed"] = split
            rep["protocol"]["train_seed"] = seed
            reports.append(rep)
    excluded = {m for m in args.exclude.split(",") if m}
    name = args.name or ("quality_without" if excluded else "quality")
    check_file_name(name, "--name")
    if excluded:
        reports = [without(r, excluded) for r in reports]
    pooled = pool(reports)
    atomic_write_json(
        args.out / f"{name}.json",
        {"pooled": pooled, "overrides": args.overrides, "excluded": sorted(excluded)},
    )
    text = markdown(pooled, reports, args, excluded=args.exclude)
    atomic_write_text(args.out / f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
