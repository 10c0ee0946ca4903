"""Logistic regression with benign replay, added to the few-shot quality runs as one more tuned baseline.

    python benchmarks/benign_replay.py --runs runs/quality                  # after few_shot_quality.py
    python benchmarks/benign_replay.py --run runs/domains/clamp --run runs/domains/spambase   # any runs

A team that meets a new attack family holds a few labelled attack rows but plenty of benign traffic. The
``logreg-replay`` baseline (``evaluation.baselines.benign_replay``) fits scikit-learn's logistic regression on
each support set plus ``evaluate.replay_rows`` (1,000) rows of the run's benign TRAINING slice, the attack
rows repeated to balance the classes. Its inverse L2 strength C is searched on the meta-val episodes over
``evaluate.logreg_cs`` exactly like ``logreg``'s (``baseline_tuning.tune_baseline``), then it is scored on
the run's own test episodes (``runs.held_out_episode_sets``, those of ``metrics.json``). It joins the run's
baselines as one more candidate for the val-chosen best baseline, and the pooled table is recomputed with
``few_shot_quality.pool``. Nothing is chosen on test families.

Each run's result is cached as ``benign_replay.json`` in the run directory (so several processes can share
the runs); ``benign_replay.json`` and ``benign_replay.md`` under ``--runs`` hold the pooled tables. With
``--run`` (repeatable) every run is reported on its own, pooled over its held-out families, and the table is
printed only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from few_shot_quality import METRIC, markdown, pool  # noqa: E402  (benchmarks/ is on sys.path)

from metashield._atomic import atomic_write_json, atomic_write_text  # noqa: E402
from metashield.baseline_tuning import baseline_grids, baseline_scorer, tune_baseline  # noqa: E402
from metashield.device import resolve_device  # noqa: E402
from metashield.evaluation.protocol import run_protocol  # noqa: E402
from metashield.evaluation.report import summarise_method  # noqa: E402
from metashield.runs import (  # noqa: E402
    held_out_episode_sets,
    load_run,
    load_run_config,
    tuning_episode_sets,
)

NAME = "logreg-replay"


def replay_run(run: Path) -> dict:
    """Per shot: the tuned ``logreg-replay`` (params, meta-val score, test summary) of one run, cached.

    A run evaluated with ``logreg-replay`` among its baselines (the default since it was added) already
    holds all of it in ``metrics.json``; that is returned as it is, so both never disagree.
    """
    report = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    if all(NAME in entry["tuned_baselines"] for entry in report["shots"].values()):
        return {
            shot: {**entry["tuned_baselines"][NAME], "summary": entry["summary"][NAME]}
            for shot, entry in report["shots"].items()
        }
    cache = run / "benign_replay.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    config, prep, meta = load_run(run)
    device = resolve_device(config.device)
    grid = baseline_grids(config.evaluate)[NAME]
    out = {}
    for shot in report["shots"]:
        k = int(shot)
        val_sets = tuning_episode_sets(config, prep, k, device)

        def make(**p):
            return baseline_scorer(NAME, p, config, prep, None, device)

        params, val, searched = tune_baseline(grid, make, val_sets, f"{run.name} {k}-shot {NAME}")
        test_sets = held_out_episode_sets(config, prep, k, report["protocol"]["episodes_per_family"], device)
        per_episode = run_protocol(
            {NAME: make(**params)}, test_sets, seed=config.seed, base_rate=config.evaluate.base_rate
        )
        out[shot] = {
            "params": params,
            "val_tpr@1%fpr": val,
            "searched": searched,
            "summary": summarise_method(per_episode[NAME], seed=config.seed),
        }
        print(
            f"{run.name} {k}-shot: {NAME} C={params['C']} val {100 * val:.1f}, test "
            f"{100 * out[shot]['summary'][METRIC]['mean']:.1f}",
            flush=True,
        )
    atomic_write_json(cache, out)
    return out


def with_replay(report: dict, replay: dict, baselines: list[str]) -> dict:
    """``metrics.json`` of a run with ``logreg-replay`` among its baselines, the best baseline re-chosen."""
    for shot, entry in report["shots"].items():
        r = replay[shot]
        entry["summary"][NAME] = r["summary"]
        entry["val_tpr@1%fpr"][NAME] = r["val_tpr@1%fpr"]
        entry["tuned_baselines"][NAME] = {k: r[k] for k in ("params", "val_tpr@1%fpr", "searched")}
        candidates = [*baselines, NAME]
        entry["best_baseline"] = max(candidates, key=lambda b: entry["val_tpr@1%fpr"][b])
    return report


def report_with_replay(run: Path, replay: dict) -> dict:
    """The run's ``metrics.json`` with ``replay`` (``replay_run``'s result) among its configured baselines."""
    config, _ = load_run_config(run)
    report = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    return with_replay(report, replay, list(config.evaluate.baselines))


def per_run_table(runs: list[Path]) -> str:
    """One row per (run, shot): best-meta, the best baseline before and after logreg-replay joins, paired."""
    lines = [
        "TPR@1%FPR (%), mean over each run's held-out families; best methods chosen on meta-val; paired "
        "difference with a 95% bootstrap CI over families.",
        "",
        "| run | shot | best-meta | best baseline before | logreg-replay "
        "| best meta − best baseline, after |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        config, _ = load_run_config(run)
        report = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        before = {s: e["best_baseline"] for s, e in report["shots"].items()}
        pooled = pool([with_replay(report, replay_run(run), list(config.evaluate.baselines))])
        for shot in sorted(report["shots"], key=int):
            entry, p = report["shots"][shot], pooled[shot]
            meta, old = entry["best_meta_learner"], before[shot]
            d = p["best_meta_minus_best_baseline"]
            lines.append(
                f"| {run.name} | {shot} | {meta} {100 * p['methods'][meta]['mean']:.1f} "
                f"| {old} {100 * p['methods'][old]['mean']:.1f} | {100 * p['methods'][NAME]['mean']:.1f} "
                f"| {100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] "
                f"({entry['best_baseline']}) |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, action="append", help="report these runs one by one instead")
    ap.add_argument("--runs", type=Path, default=Path("runs/quality"))
    ap.add_argument("--splits", default="0,1,2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--no-pool", action="store_true", help="only fill the per-run caches (parallel workers)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.run:
        print(per_run_table(args.run))
        return
    started = time.time()
    reports = []
    for split in (int(s) for s in args.splits.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            run = args.runs / f"split{split}_seed{seed}"
            replay = replay_run(run)
            if args.no_pool:
                continue
            report = report_with_replay(run, replay)
            report["protocol"]["split_seed"], report["protocol"]["train_seed"] = split, seed
            reports.append(report)
    if args.no_pool:
        return
    pooled = pool(reports)
    text = markdown(pooled, reports, args)
    text += f"\n{NAME}: logistic regression on each support set plus 1,000 replayed benign training rows; "
    text += f"{(time.time() - started) / 60:.1f} min\n"
    print(text)
    atomic_write_json(args.runs / "benign_replay.json", {"pooled": pooled, "reports": reports})
    atomic_write_text(args.runs / "benign_replay.md", text)


if __name__ == "__main__":
    main()
