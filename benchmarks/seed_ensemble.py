"""Seed ensembles: average the scores of one meta-learner trained with several seeds on the same family split.

    python benchmarks/seed_ensemble.py --runs runs/quality                  # after few_shot_quality.py
    python benchmarks/seed_ensemble.py --runs runs/quality --algorithm maml

For each split, the runs ``split<s>_seed<t>`` of ``benchmarks/few_shot_quality.py`` share the family split,
the benign slices and the fitted pipeline (both depend on ``split.seed`` only; checked here), and differ in
the training seed. The ensemble adapts every member on the support set and averages their logit margins
z_attack - z_benign. It is scored on each run's own meta-val and meta-test episodes (those are seeded by the
training seed), next to that run's single model, whose per-family figures must reproduce ``metrics.json``
exactly — the check that the episodes are the ones ``metashield evaluate`` used. It then joins the run's
meta-learners as one more candidate for the val-chosen best meta-learner, and the pooled table is
recomputed with ``few_shot_quality.pool``. Nothing is chosen on test families. An ensemble of n members
costs n times the meta-training and the adaptation of one model.

Writes ``seed_ensemble.json`` and ``seed_ensemble.md`` under ``--runs``; ``metrics.json`` is never touched.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from few_shot_quality import bootstrap_ci, markdown, pool, sides  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from metashield._atomic import atomic_write_json, atomic_write_text  # noqa: E402
from metashield.device import resolve_device  # noqa: E402
from metashield.evaluation.baselines import Scorer, ensemble_scorer, learner_scorer  # noqa: E402
from metashield.evaluation.protocol import mean_score, run_protocol  # noqa: E402
from metashield.evaluation.report import summarise_method  # noqa: E402
from metashield.runs import held_out_episode_sets, load_model, load_run, tuning_episode_sets  # noqa: E402

METRIC = "tpr@1%fpr"


def ensemble_split(runs: list[Path], algorithm: str, name: str) -> list[dict]:
    """``metrics.json`` of each run, extended with the ensemble of every run's ``algorithm``."""
    loaded = [load_run(r) for r in runs]
    first = loaded[0][2]
    for r, (_, _, meta) in zip(runs[1:], loaded[1:], strict=True):
        for key in ("split", "pipeline", "feature_names"):
            if meta[key] != first[key]:
                raise SystemExit(f"{r} and {runs[0]} differ in {key!r}: not the same family split")
    device = resolve_device(loaded[0][0].device)
    learners = [
        load_model(config, int(meta["in_dim"]), r, algorithm, algorithm).to(device)
        for r, (config, _, meta) in zip(runs, loaded, strict=True)
    ]
    ensemble = ensemble_scorer([learner_scorer(m) for m in learners])
    return [
        add_candidate(r, config, prep, ensemble, name, algorithm, learner_scorer(learner), device)
        for r, (config, prep, _), learner in zip(runs, loaded, learners, strict=True)
    ]


def add_candidate(
    run: Path, config, prep, scorer: Scorer, name: str, reference: str, reference_scorer: Scorer, device
) -> dict:
    """``metrics.json`` of ``run`` with ``scorer`` scored as meta-learner ``name`` on the run's meta-val and
    meta-test episodes and made a candidate for its val-chosen best meta-learner. ``reference`` (a method
    of the run, scored by ``reference_scorer``) must reproduce its recorded per-family figures: the check
    that these are the episodes ``metashield evaluate`` used."""
    report = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    ec = config.evaluate
    for shot, entry in report["shots"].items():
        k = int(shot)
        entry["val_tpr@1%fpr"][name] = mean_score(
            scorer, tuning_episode_sets(config, prep, k, device), name=name
        )
        n_episodes = report["protocol"]["episodes_per_family"]
        test_sets = held_out_episode_sets(config, prep, k, n_episodes, device)
        methods = {name: scorer, reference: reference_scorer}
        per_episode = run_protocol(methods, test_sets, seed=config.seed, base_rate=ec.base_rate)
        single = summarise_method(per_episode[reference], seed=config.seed)["per_family"]
        recorded = entry["summary"][reference]["per_family"]
        for fam, row in recorded.items():
            if abs(single[fam][METRIC] - row[METRIC]) > 1e-9:
                raise SystemExit(
                    f"{run}: {k}-shot {reference} on {fam} gives {single[fam][METRIC]:.6f}, metrics.json "
                    f"says {row[METRIC]:.6f}: these are not the episodes `metashield evaluate` used"
                )
        entry["summary"][name] = summarise_method(per_episode[name], seed=config.seed)
        # Every meta-side candidate the run's evaluate scored (its `ensemble` and blends included), plus this.
        candidates, _ = sides(entry)
        entry["best_meta_learner"] = max(candidates, key=lambda a: entry["val_tpr@1%fpr"][a])
        print(
            f"{run.name} {k}-shot: {name} val {100 * entry['val_tpr@1%fpr'][name]:.1f} "
            f"({reference} {100 * entry['val_tpr@1%fpr'][reference]:.1f}), test "
            f"{100 * entry['summary'][name][METRIC]['mean']:.1f} "
            f"({reference} {100 * entry['summary'][reference][METRIC]['mean']:.1f}); "
            f"best meta on val: {entry['best_meta_learner']}",
            flush=True,
        )
    return report


def paired_gain(reports: list[dict], name: str, single: str) -> dict:
    """Per shot: the ensemble minus its single member, mean over (run, family) units, bootstrap 95% CI."""
    rng = np.random.default_rng(0)
    out = {}
    for shot in sorted(reports[0]["shots"], key=int):
        diff = np.array(
            [
                row[METRIC] - rep["shots"][shot]["summary"][single]["per_family"][fam][METRIC]
                for rep in reports
                for fam, row in rep["shots"][shot]["summary"][name]["per_family"].items()
            ]
        )
        out[shot] = dict(zip(("mean", "lo", "hi"), bootstrap_ci(diff, rng), strict=True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/quality"))
    parser.add_argument("--splits", default="0,1,2")
    parser.add_argument("--seeds", default="0,1,2", help="the members: training seeds of each split")
    parser.add_argument("--algorithm", default="metasgd")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2:
        parser.error("an ensemble needs at least two seeds")
    name = f"{args.algorithm}-ens{len(seeds)}"
    started = time.time()
    reports = []
    for split in (int(s) for s in args.splits.split(",")):
        runs = [args.runs / f"split{split}_seed{s}" for s in seeds]
        for rep, seed in zip(ensemble_split(runs, args.algorithm, name), seeds, strict=True):
            rep["protocol"]["split_seed"], rep["protocol"]["train_seed"] = split, seed
            reports.append(rep)
    args.seeds = ",".join(map(str, seeds))
    what = f"mean logit margin of {args.algorithm} trained with seeds {args.seeds}"
    write_report(args, reports, name, args.algorithm, what, started, "seed_ensemble", "ensemble_minus_single")


def write_report(
    args: argparse.Namespace,
    reports: list[dict],
    name: str,
    single: str,
    what: str,
    started: float,
    stem: str,
    gain_key: str,
) -> None:
    """Pool ``reports``, print the table with ``name`` − ``single``, write ``<stem>.json`` and ``.md`` under
    ``args.runs``."""
    pooled = pool(reports)
    text = markdown(pooled, reports, args)
    gain = paired_gain(reports, name, single)
    minutes = (time.time() - started) / 60
    text += f"\n{name}: {what}; {minutes:.1f} min\n\n{name} − {single} (paired per run and family): "
    text += ", ".join(
        f"{s}-shot {100 * g['mean']:+.1f} [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]"
        for s, g in gain.items()
    )
    text += "\n"
    print(text)
    atomic_write_json(
        args.runs / f"{stem}.json", {"pooled": pooled, "ensemble": name, gain_key: gain, "reports": reports}
    )
    atomic_write_text(args.runs / f"{stem}.md", text)


if __name__ == "__main__":
    main()
