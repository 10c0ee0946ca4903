"""Meta-SGD blended with logistic regression + benign replay (weight chosen on meta-val), in the quality runs.

    python benchmarks/replay_blend.py --runs runs/quality        # after few_shot_quality.py, benign_replay.py

Meta-SGD and ``logreg-replay`` (see ``benign_replay.py``) miss different families, so this asks whether a
val-weighted blend of their scores beats both. Each adapts on the episode's support set as evaluated before
(``logreg-replay`` at the C that ``benign_replay.py`` chose on meta-val). Their logit margins live on
different scales, so each is divided by its standard deviation over ``REFERENCE_ROWS`` rows of the run's
benign TRAINING slice, scored by the same adapted model (data a deployed detector holds; never a query
slice). The blend is w * meta + (1 - w) * replay on those scales, with w from ``WEIGHTS`` (set a priori, both
parts always present) chosen per run and shot count on the meta-val episodes; 0 stays each margin's decision
threshold. Both parts' test figures must reproduce ``metrics.json`` and ``benign_replay.json`` exactly, the
check that these are the evaluated episodes. The blend then joins the run's meta-learners as a candidate for
the val-chosen best meta-learner, ``logreg-replay`` joins the baselines, and the pooled table is recomputed
with ``few_shot_quality.pool``. Nothing is chosen on test families.

The blend is a hybrid: half of it is a baseline. The tables therefore also give it against each part.

With ``--ensemble`` the meta part is the seed ensemble of ``seed_ensemble.py`` (the mean margin of Meta-SGD
trained with every ``--seeds`` seed of the run's split; run that script first: its recorded test figures
are the reproduction check), the candidates include that ensemble, and the outputs are named
``replay_blend_ens<n>.*``.

Each run's result is cached as ``replay_blend.json`` in the run directory (``--no-pool`` fills the caches, so
several processes can share the runs); ``replay_blend.json`` and ``replay_blend.md`` under ``--runs`` hold
the pooled tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benign_replay import NAME as REPLAY  # noqa: E402  (benchmarks/ is on sys.path)
from benign_replay import replay_run, report_with_replay, with_replay  # noqa: E402
from few_shot_quality import METRIC, markdown, pool  # noqa: E402
from seed_ensemble import ensemble_scorer, paired_gain  # noqa: E402

from metashield._atomic import atomic_write_json, atomic_write_text  # noqa: E402
from metashield.baseline_tuning import baseline_scorer  # noqa: E402
from metashield.device import resolve_device  # noqa: E402
from metashield.evaluation.baselines import Scorer, learner_scorer  # noqa: E402
from metashield.evaluation.protocol import EpisodeSet, mean_metric, score_set, set_metrics  # noqa: E402
from metashield.evaluation.report import summarise_method  # noqa: E402
from metashield.runs import (  # noqa: E402
    held_out_episode_sets,
    load_model,
    load_run,
    load_run_config,
    tuning_episode_sets,
)

META = "metasgd"
NAME = "metasgd+replay"
WEIGHTS = (0.25, 0.5, 0.75)
REFERENCE_ROWS = 500


def scaled_scores(scorer: Scorer, es: EpisodeSet, reference: torch.Tensor) -> np.ndarray:
    """The scorer's margins on the episode queries [E, M], each episode divided by the standard deviation
    of the same adapted model's margins on ``reference`` [R, D] (benign rows)."""
    ref = reference.to(device=es.query_x.device, dtype=es.query_x.dtype)
    m = es.query_x.shape[1]
    with_ref = EpisodeSet(
        es.family,
        es.shots,
        es.support_x,
        es.support_y,
        torch.cat([es.query_x, ref.expand(es.query_x.shape[0], -1, -1)], dim=1),
        es.query_y,
    )
    scores = score_set(scorer, with_ref)
    scale = scores[:, m:].std(axis=1, keepdims=True)
    if not np.all(scale > 0):
        raise SystemExit(f"{es.family}: a scorer gives every reference row the same score; cannot scale it")
    return scores[:, :m], scores[:, :m] / scale


def blend_sets(
    parts: Mapping[str, Scorer], sets: Mapping[str, EpisodeSet], reference: torch.Tensor, seed: int, base_rate
) -> tuple[dict, dict]:
    """(per part: raw per-episode metrics by family; per weight: the blend's, by family).

    ``parts``: the meta part first, then ``logreg-replay``."""
    meta = next(iter(parts))
    raw: dict = {p: {} for p in parts}
    blended: dict = {w: {} for w in WEIGHTS}
    for fam, es in sets.items():
        scaled = {}
        for p, scorer in parts.items():
            scores, scaled[p] = scaled_scores(scorer, es, reference)
            raw[p][fam] = set_metrics(scores, es, seed=seed, base_rate=base_rate)
        for w in WEIGHTS:
            blended[w][fam] = set_metrics(
                w * scaled[meta] + (1 - w) * scaled[REPLAY], es, seed=seed, base_rate=base_rate
            )
    return raw, blended


def check_reproduces(run: Path, what: str, got: dict, recorded: dict) -> None:
    for fam, row in recorded["per_family"].items():
        if abs(got["per_family"][fam][METRIC] - row[METRIC]) > 1e-9:
            raise SystemExit(
                f"{run}: {what} on {fam} gives {got['per_family'][fam][METRIC]:.6f}, the run recorded "
                f"{row[METRIC]:.6f}: these are not the evaluated episodes"
            )


def blend_run(run: Path, members: list[Path] | None = None, recorded: dict | None = None) -> dict:
    """Per shot: the val-chosen weight, the blend's meta-val score and test summary for one run, cached.

    members: the runs whose Meta-SGD models form the meta part (an ensemble), with ``recorded`` the run's
    report from ``seed_ensemble.json``; None: the run's own Meta-SGD, checked against ``metrics.json``.
    """
    cache = run / ("replay_blend.json" if members is None else f"replay_blend_ens{len(members)}.json")
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    replay = replay_run(run)
    config, prep, meta = load_run(run)
    device = resolve_device(config.device)
    report = json.loads((run / "metrics.json").read_text(encoding="utf-8")) if recorded is None else recorded
    if members is None:
        name, meta_scorer = (
            META,
            learner_scorer(load_model(config, int(meta["in_dim"]), run, META, META).to(device)),
        )
    else:
        name = f"{META}-ens{len(members)}"
        meta_scorer = ensemble_scorer(
            [
                learner_scorer(load_model(config, int(meta["in_dim"]), m, META, META).to(device))
                for m in members
            ]
        )
    pool_rows = prep.replay_pool()
    pick = np.random.default_rng(config.seed + 7).choice(len(pool_rows), REFERENCE_ROWS, replace=False)
    reference = torch.from_numpy(pool_rows[np.sort(pick)])
    base_rate = config.evaluate.base_rate
    out = {}
    for shot, entry in report["shots"].items():
        k = int(shot)
        parts = {
            name: meta_scorer,
            REPLAY: baseline_scorer(REPLAY, replay[shot]["params"], config, prep, None, device),
        }
        _, val = blend_sets(parts, tuning_episode_sets(config, prep, k, device), reference, 0, None)
        val_scores = {w: mean_metric(v) for w, v in val.items()}
        w = max(WEIGHTS, key=lambda x: val_scores[x])
        test_sets = held_out_episode_sets(config, prep, k, report["protocol"]["episodes_per_family"], device)
        raw, blended = blend_sets(parts, test_sets, reference, config.seed, base_rate)
        check_reproduces(
            run, f"{k}-shot {name}", summarise_method(raw[name], seed=config.seed), entry["summary"][name]
        )
        check_reproduces(
            run,
            f"{k}-shot {REPLAY}",
            summarise_method(raw[REPLAY], seed=config.seed),
            replay[shot]["summary"],
        )
        out[shot] = {
            "weight": w,
            "val_by_weight": {str(x): s for x, s in val_scores.items()},
            "val_tpr@1%fpr": val_scores[w],
            "summary": summarise_method(blended[w], seed=config.seed),
        }
        print(
            f"{run.name} {k}-shot: w={w} val {100 * val_scores[w]:.1f} ({name} "
            f"{100 * entry['val_tpr@1%fpr'][name]:.1f}, {REPLAY} {100 * replay[shot]['val_tpr@1%fpr']:.1f}), "
            f"test {100 * out[shot]['summary'][METRIC]['mean']:.1f} ({name} "
            f"{100 * entry['summary'][name][METRIC]['mean']:.1f}, {REPLAY} "
            f"{100 * replay[shot]['summary'][METRIC]['mean']:.1f})",
            flush=True,
        )
    atomic_write_json(cache, out)
    return out


def with_blend(report: dict, blend: dict, candidates: list[str], name: str = NAME) -> dict:
    """A run's report (``logreg-replay`` already among its baselines), the blend among its meta-learners."""
    for shot, entry in report["shots"].items():
        entry["summary"][name] = blend[shot]["summary"]
        entry["val_tpr@1%fpr"][name] = blend[shot]["val_tpr@1%fpr"]
        entry["best_meta_learner"] = max([*candidates, name], key=lambda a: entry["val_tpr@1%fpr"][a])
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("runs/quality"))
    ap.add_argument("--splits", default="0,1,2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--no-pool", action="store_true", help="only fill the per-run caches (parallel workers)")
    ap.add_argument("--ensemble", action="store_true", help="blend the seed ensemble of --seeds instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    seeds = [int(s) for s in args.seeds.split(",")]
    meta, stem = (
        (f"{META}-ens{len(seeds)}", f"replay_blend_ens{len(seeds)}")
        if args.ensemble
        else (META, "replay_blend")
    )
    name = f"{meta}+replay"
    if args.ensemble:
        recorded = {
            (r["protocol"]["split_seed"], r["protocol"]["train_seed"]): r
            for r in json.loads((args.runs / "seed_ensemble.json").read_text(encoding="utf-8"))["reports"]
        }
    reports, weights = [], {}
    for split in (int(s) for s in args.splits.split(",")):
        members = [args.runs / f"split{split}_seed{s}" for s in seeds] if args.ensemble else None
        for seed in seeds:
            run = args.runs / f"split{split}_seed{seed}"
            ens_report = recorded[(split, seed)] if args.ensemble else None
            blend = weights[run.name] = blend_run(run, members, ens_report)
            if args.no_pool:
                continue
            config, _ = load_run_config(run)
            candidates = list(config.train.algorithms)
            if args.ensemble:
                report = with_replay(ens_report, replay_run(run), list(config.evaluate.baselines))
                candidates.append(meta)
            else:
                report = report_with_replay(run, replay_run(run))
            report["protocol"]["split_seed"], report["protocol"]["train_seed"] = split, seed
            reports.append(with_blend(report, blend, candidates, name))
    if args.no_pool:
        return
    pooled = pool(reports)
    text = markdown(pooled, reports, args)
    gains = {part: paired_gain(reports, name, part) for part in (meta, REPLAY)}
    text += f"\n{name}: w * {meta} + (1 - w) * {REPLAY}, margins scaled on {REFERENCE_ROWS} benign training "
    text += f"rows, w in {WEIGHTS} chosen on meta-val; {(time.time() - started) / 60:.1f} min\n"
    for part, gain in gains.items():
        text += f"\n{name} − {part} (paired per run and family): " + ", ".join(
            f"{s}-shot {100 * g['mean']:+.1f} [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]"
            for s, g in gain.items()
        )
    text += "\n\nChosen w (run: 1/5/10-shot): " + "; ".join(
        f"{run}: " + "/".join(str(b[s]["weight"]) for s in sorted(b, key=int)) for run, b in weights.items()
    )
    text += "\n"
    print(text)
    atomic_write_json(args.runs / f"{stem}.json", {"pooled": pooled, "minus_part": gains, "reports": reports})
    atomic_write_text(args.runs / f"{stem}.md", text)


if __name__ == "__main__":
    main()
