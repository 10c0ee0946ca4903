"""Benign novelty: distance to the nearest benign TRAINING rows, alone and blended with the detectors.

    python benchmarks/novelty_blend.py --runs runs/repval        # after few_shot_quality.py

A new attack family is often simply unlike the benign traffic a team already holds, whatever it looks like.
The distance of a row to its k-th nearest neighbour among the run's benign TRAINING rows (``novelty``, data
a deployed detector holds; never a query slice) is a zero-shot detector of that. This asks whether it adds
to the few-shot detectors, on both sides of the comparison so that the meta-learners get no help the
baselines do not:

- baselines: ``novelty`` alone (k chosen on meta-val), ``knn-replay`` (1-NN whose benign side is the
  support's benign rows plus every benign training row; no hyper-parameter), and ``finetune+novelty`` and
  ``logreg-replay+novelty``;
- meta-learners: ``metasgd+novelty`` and ``ensemble+novelty`` (the run's ``evaluate.ensemble`` candidate).

A blend is w * margin / s_margin + (1 - w) * novelty / s_novelty, each part divided by its standard
deviation over ``REFERENCE_ROWS`` benign training rows held out of the neighbour index (the margin's by the
same adapted model, per episode); (w, k) is chosen per run and shot count on the meta-val episodes from
``WEIGHTS`` x ``K_GRID`` (set a priori). Every blended part's test figures must reproduce ``metrics.json``
(the check that these are the evaluated episodes). The new candidates join the run's meta-learners and
baselines for the val choice and the pooled table is recomputed with ``few_shot_quality.pool``; nothing is
chosen on test families.

The distances are exact (brute force against every benign training row), computed once per run for every
row of the dataset and looked up by row content, since episodes draw their queries from those rows.

Each run's result is cached as ``novelty_blend.json`` in the run directory (``--no-pool`` fills the caches, so
several processes can share the runs); ``novelty_blend.json`` and ``novelty_blend.md`` under ``--runs`` hold
the pooled tables.
"""

from __future__ import annotations

import argparse
import copy
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

from few_shot_quality import METRIC, markdown, pool  # noqa: E402  (benchmarks/ is on sys.path)
from replay_blend import check_reproduces  # noqa: E402
from seed_ensemble import paired_gain  # noqa: E402

from metashield._atomic import atomic_write_json, atomic_write_text  # noqa: E402
from metashield.baseline_tuning import baseline_scorer  # noqa: E402
from metashield.config import NoveltyConfig, config_from_dict  # noqa: E402
from metashield.evaluation.baselines import ENSEMBLE, Scorer, learner_scorer  # noqa: E402
from metashield.evaluation.metrics import tpr_at_fpr  # noqa: E402
from metashield.evaluation.novelty import SUFFIX, NoveltyTable, blend, margin_scale, set_margins  # noqa: E402
from metashield.evaluation.protocol import EpisodeSet, set_metrics  # noqa: E402
from metashield.evaluation.report import summarise_method  # noqa: E402
from metashield.runs import (  # noqa: E402
    held_out_episode_sets,
    load_model,
    load_run,
    novelty_table,
    tuning_episode_sets,
)

NOVELTY = "novelty"
KNN_REPLAY = "knn-replay"
# The grids `metashield evaluate` searches by default (evaluate.novelty): the study scores what it scores.
_DEFAULTS = NoveltyConfig(methods=["metasgd"])
K_GRID = tuple(_DEFAULTS.ks)
WEIGHTS = tuple(_DEFAULTS.weights)
REFERENCE_ROWS = _DEFAULTS.reference_rows
META_PARTS = ("metasgd", ENSEMBLE)
BASE_PARTS = ("finetune", "logreg-replay")


def knn_replay_scores(novelty: NoveltyTable, es: EpisodeSet) -> np.ndarray:
    """1-NN with every benign training row on its benign side: min(distance to the nearest benign support
    row, to the nearest benign training row) - distance to the nearest attack support row; [E, M]."""
    d = torch.cdist(es.query_x, es.support_x).numpy()  # [E, M, S]
    y = es.support_y.numpy()[:, None, :]
    benign = np.where(y == 0, d, np.inf).min(axis=2)
    attack = np.where(y == 1, d, np.inf).min(axis=2)
    return np.minimum(benign, novelty.column(1)(es.query_x)) - attack


def set_scores(
    parts: Mapping[str, Scorer], members: list[str], es: EpisodeSet, reference: torch.Tensor
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Raw (query, reference) margins of every part and of the ensemble, the mean of its members' (the
    two-class margin of ``meta.Ensemble``'s mean logits, as ``evaluate`` scores it)."""
    out = {p: set_margins(scorer, es, reference) for p, scorer in parts.items()}
    if members:
        out[ENSEMBLE] = tuple(np.mean([out[a][i] for a in members], axis=0) for i in (0, 1))
    return out


def blend_part(raw: tuple[np.ndarray, np.ndarray], nov: np.ndarray, scale: np.ndarray, w: float, j: int):
    """``evaluation.novelty.blend`` of a part's raw (query, reference) margins with d_k, k = K_GRID[j]."""
    q, ref = raw
    return blend(q, margin_scale(ref), nov[..., j], scale[j], w)


def val_tpr(scores_by_family: Mapping[str, np.ndarray], sets: Mapping[str, EpisodeSet]) -> float:
    """Mean over families of the mean TPR@1%FPR over episodes (``mean_metric`` on raw scores)."""
    return float(
        np.mean(
            [
                np.mean([tpr_at_fpr(s[e], sets[f].query_y[e], 0.01) for e in range(len(s))])
                for f, s in scores_by_family.items()
            ]
        )
    )


def novelty_run(run: Path) -> dict:
    """Per shot: every new candidate's chosen (w, k), meta-val score and test summary for one run, cached."""
    cache = run / "novelty_blend.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    config, prep, meta = load_run(run)
    device = torch.device("cpu")
    report = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    members = list(report["protocol"].get("ensemble", []))
    tree = config.model_dump()
    tree["evaluate"]["novelty"] = {
        "methods": ["metasgd"],
        "ks": list(K_GRID),
        "reference_rows": REFERENCE_ROWS,
    }
    started = time.time()
    novelty, reference = novelty_table(config_from_dict(tree, str(run)), prep)
    scale = novelty(reference).std(axis=0)
    print(
        f"{run.name}: distances of {len(novelty.distances)} rows in {time.time() - started:.0f} s", flush=True
    )
    in_dim = int(meta["in_dim"])
    pretrained = load_model(config, in_dim, run, "pretrained").to(device)
    learned = sorted({"metasgd", *members})
    out = {}
    for shot, entry in report["shots"].items():
        k = int(shot)
        tuned = entry["tuned_baselines"]
        parts: dict[str, Scorer] = {
            a: learner_scorer(load_model(config, in_dim, run, a, a).to(device)) for a in learned
        }
        for b in BASE_PARTS:
            parts[b] = baseline_scorer(b, tuned[b]["params"], config, prep, pretrained, device)
        blended = [p for p in (*META_PARTS, *BASE_PARTS) if p != ENSEMBLE or members]

        def scores_on(sets: Mapping[str, EpisodeSet], parts: dict[str, Scorer] = parts) -> dict:
            return {
                f: (set_scores(parts, members, es, reference), novelty(es.query_x), es)
                for f, es in sets.items()
            }

        val = scores_on(tuning_episode_sets(config, prep, k, device))
        val_sets = {f: es for f, (_, _, es) in val.items()}
        choice: dict[str, dict] = {}
        for p in blended:
            grid = {
                (w, j): val_tpr(
                    {f: blend_part(r[p], n, scale, w, j) for f, (r, n, _) in val.items()}, val_sets
                )
                for w in WEIGHTS
                for j in range(len(K_GRID))
            }
            (w, j), score = max(grid.items(), key=lambda kv: kv[1])
            choice[f"{p}+{NOVELTY}"] = {"part": p, "weight": w, "k": K_GRID[j], "val_tpr@1%fpr": score}
        grid = {
            j: val_tpr({f: n[..., j] for f, (_, n, _) in val.items()}, val_sets) for j in range(len(K_GRID))
        }
        j_alone = max(grid, key=lambda j: grid[j])
        choice[NOVELTY] = {"k": K_GRID[j_alone], "val_tpr@1%fpr": grid[j_alone]}
        choice[KNN_REPLAY] = {
            "val_tpr@1%fpr": val_tpr(
                {f: knn_replay_scores(novelty, es) for f, es in val_sets.items()}, val_sets
            )
        }

        test = scores_on(
            held_out_episode_sets(config, prep, k, report["protocol"]["episodes_per_family"], device)
        )
        per_episode: dict[str, dict] = {name: {} for name in (*choice, *blended)}
        for f, (raw, nov, es) in test.items():

            def metrics(s: np.ndarray, es: EpisodeSet = es) -> list:
                return set_metrics(s, es, seed=config.seed, base_rate=config.evaluate.base_rate)

            for p in blended:
                per_episode[p][f] = metrics(raw[p][0])
                c = choice[f"{p}+{NOVELTY}"]
                per_episode[f"{p}+{NOVELTY}"][f] = metrics(
                    blend_part(raw[p], nov, scale, c["weight"], K_GRID.index(c["k"]))
                )
            per_episode[NOVELTY][f] = metrics(nov[..., j_alone])
            per_episode[KNN_REPLAY][f] = metrics(knn_replay_scores(novelty, es))
        for p in blended:
            check_reproduces(
                run, f"{k}-shot {p}", summarise_method(per_episode[p], seed=config.seed), entry["summary"][p]
            )
        out[shot] = {
            name: {**c, "summary": summarise_method(per_episode[name], seed=config.seed)}
            for name, c in choice.items()
        }
        print(
            f"{run.name} {k}-shot: "
            + ", ".join(
                f"{name} val {100 * c['val_tpr@1%fpr']:.1f} "
                f"test {100 * out[shot][name]['summary'][METRIC]['mean']:.1f}"
                for name, c in choice.items()
            ),
            flush=True,
        )
    atomic_write_json(cache, out)
    return out


def with_novelty(report: dict, novelty: dict, meta_learners: list[str], baselines: list[str]) -> dict:
    """A run's report with the new candidates on their sides of the val choice."""
    for shot, entry in report["shots"].items():
        for name, c in novelty[shot].items():
            entry["summary"][name] = c["summary"]
            entry["val_tpr@1%fpr"][name] = c["val_tpr@1%fpr"]
        new = list(novelty[shot])
        meta = [*meta_learners, *(n for n in new if n.split("+")[0] in META_PARTS)]
        base = [*baselines, *(n for n in new if n not in meta)]
        entry["best_meta_learner"] = max(meta, key=lambda a: entry["val_tpr@1%fpr"][a])
        entry["best_baseline"] = max(base, key=lambda a: entry["val_tpr@1%fpr"][a])
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("runs/repval"))
    ap.add_argument("--splits", default="0,1,2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--no-pool", action="store_true", help="only fill the per-run caches (parallel workers)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    reports, chosen = [], {}
    for split in (int(s) for s in args.splits.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            run = args.runs / f"split{split}_seed{seed}"
            novelty = chosen[run.name] = novelty_run(run)
            if args.no_pool:
                continue
            report = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
            # Blends `metashield evaluate` scored itself (evaluate.novelty) are replaced by this study's.
            meta = [
                m
                for m in report["shots"]["1"]["val_tpr@1%fpr"]
                if m not in report["shots"]["1"]["tuned_baselines"] and not m.endswith(SUFFIX)
            ]
            report = with_novelty(report, novelty, meta, list(report["shots"]["1"]["tuned_baselines"]))
            report["protocol"]["split_seed"], report["protocol"]["train_seed"] = split, seed
            reports.append(report)
    if args.no_pool:
        return
    pooled = pool(reports)
    text = markdown(pooled, reports, args)
    gains = {
        f"{p}+{NOVELTY} − {p}": paired_gain(reports, f"{p}+{NOVELTY}", p)
        for p in (*META_PARTS, *BASE_PARTS)
        if f"{p}+{NOVELTY}" in reports[0]["shots"]["1"]["summary"]
    }
    text += (
        f"\nBlends: w * margin + (1 - w) * novelty_k, each scaled on {REFERENCE_ROWS} benign training rows, "
        f"(w, k) in {WEIGHTS} x {K_GRID} chosen on meta-val; {(time.time() - started) / 60:.1f} min\n"
    )
    for label, gain in gains.items():
        text += f"\n{label} (paired per run and family): " + ", ".join(
            f"{s}-shot {100 * g['mean']:+.1f} [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]"
            for s, g in gain.items()
        )
    # What a comparison that blends the meta-learners only would claim: the baseline chosen on meta-val
    # among the unblended baselines. Not a fair comparison: reported so the fair one can be read against it.
    one_sided = copy.deepcopy(reports)
    for rep in one_sided:
        for entry in rep["shots"].values():
            plain = list(entry["tuned_baselines"])
            entry["best_baseline"] = max(plain, key=lambda b, e=entry: e["val_tpr@1%fpr"][b])
    text += (
        "\n\nBlends on the meta-learner side only (unfair): best meta − best unblended baseline: "
        + ", ".join(
            f"{s}-shot {100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
            for s, d in ((s, v["best_meta_minus_best_baseline"]) for s, v in pool(one_sided).items())
        )
    )
    text += "\n\nChosen (run: shot: candidate w/k):\n" + "\n".join(
        f"- {run}: "
        + "; ".join(
            f"{s}-shot "
            + ", ".join(
                f"{n} {c.get('weight', '-')}/{c.get('k', '-')}" for n, c in b[s].items() if n != KNN_REPLAY
            )
            for s in sorted(b, key=int)
        )
        for run, b in chosen.items()
    )
    text += "\n"
    print(text)
    atomic_write_json(
        args.runs / "novelty_blend.json", {"pooled": pooled, "minus_part": gains, "reports": reports}
    )
    atomic_write_text(args.runs / "novelty_blend.md", text)


if __name__ == "__main__":
    main()
