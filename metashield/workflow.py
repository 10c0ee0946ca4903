"""The three jobs behind the CLI: ``train`` a run, ``evaluate`` it, and the ``demo`` that does both."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import numpy as np
import torch

from metashield._atomic import atomic_write_json, check_file_name
from metashield.attacks.constraints import compile_constraints
from metashield.attacks.poisoning import backdoor, flip_labels, make_trigger, poison_batch
from metashield.baseline_tuning import baseline_grids, baseline_scorer, tune_baseline
from metashield.checkpoint import has_checkpoint, save_checkpoint
from metashield.config import Config, config_from_dict
from metashield.data import BENIGN
from metashield.device import resolve_device
from metashield.evaluation.baselines import (
    ENSEMBLE,
    Scorer,
    learner_scorer,
    pretrain,
)
from metashield.evaluation.novelty import SUFFIX as NOVELTY
from metashield.evaluation.novelty import novelty_scorer, tune_blend
from metashield.evaluation.protocol import choice_stability, family_scores, mean_score, run_protocol
from metashield.evaluation.report import (
    format_family_table,
    format_paired,
    format_table,
    paired_against,
    paired_difference,
    summarise_method,
)
from metashield.experiment import Prepared, prepare
from metashield.meta import Ensemble
from metashield.meta.objectives import tail_cross_entropy
from metashield.runs import (
    build_model,
    episode_sets,
    held_out_episode_sets,
    load_model,
    load_run,
    novelty_table,
    prepare_saved,
    run_metadata,
    tuning_episode_sets,
)
from metashield.tasks import EpisodeSampler
from metashield.tasks.augment import interpolate_tasks
from metashield.train import build_learner, meta_train

log = logging.getLogger(__name__)


def _poisoning(config: Config, prep: Prepared):
    """(batch poisoner for meta-training or None, compiled trigger or None) from ``train.poison``."""
    spec = config.train.poison
    if spec is None:
        return None, None
    trigger = None
    if spec.mode == "backdoor":
        constraints = compile_constraints(prep.pipeline, prep.schema)
        trigger = make_trigger(spec.trigger, prep.pipeline, constraints)
    log.warning(
        "POISONED training (attack study): %.0f%% of meta-training tasks and of the pretrain baseline's "
        "attack rows, mode %s",
        100 * spec.fraction,
        spec.mode,
    )

    def poison(batch, rng):
        return poison_batch(batch, spec.fraction, rng, mode=spec.mode, trigger=trigger)[0]

    return poison, trigger


def _batch_transform(poison, interpolation: float):
    """What rewrites each meta-training batch: the attack study's poisoner, then task interpolation."""
    if not interpolation:
        return poison

    def transform(batch, rng):
        if poison is not None:
            batch = poison(batch, rng)
        return interpolate_tasks(batch, interpolation, rng)

    return transform


def _poison_rows(x: np.ndarray, y: np.ndarray, spec, trigger, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 3])
    if spec.mode == "backdoor":
        x, y, _ = backdoor(x, y, trigger, spec.fraction, rng)
        return x, y
    return x, flip_labels(y, spec.fraction, rng, source=1, target=0)[0]


def train_run(config: Config, out_dir: str | Path, *, resume: bool = False, progress: bool = True) -> dict:
    """Meta-train every algorithm in ``config.train.algorithms`` plus the supervised pretrained baseline."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        raise FileExistsError(
            f"{out_dir} is not empty: pass --resume to continue that run or choose another --out"
        )
    device = resolve_device(config.device)
    run_json = out_dir / "run.json"
    if resume and run_json.is_file():
        saved = json.loads(run_json.read_text(encoding="utf-8"))
        if saved["config"] != config.model_dump(mode="json"):
            raise ValueError(f"{run_json}: --resume with a different config than the run was started with")
        prep = prepare_saved(config, saved)
    else:
        prep = prepare(config)
    metadata = run_metadata(config, prep)
    atomic_write_json(run_json, metadata)

    tc = config.train
    sampler = EpisodeSampler(
        prep.X,
        prep.family,
        prep.split.train,
        prep.benign["train"],
        kind=tc.kind,
        ways=tc.ways,
        shots=tc.shots,
        queries=tc.queries,
        benign_queries=tc.benign_queries,
    )
    query_loss = functools.partial(tail_cross_entropy, hard=tc.queries) if tc.query_loss == "tail" else None
    val_sets = {}
    for k in tc.shot_list:
        sets = episode_sets(config, prep, "val", k, tc.val_episodes, config.seed + 7, device)
        val_sets.update({f"{k}-shot {name}": episodes for name, episodes in sets.items()})
    if not val_sets:
        raise ValueError(
            "no meta-val family has enough rows: add families to split.val_families or raise n_val"
        )

    def val_score(learner: torch.nn.Module) -> float:
        return mean_score(learner_scorer(learner), val_sets)

    poison_batch_fn, trigger = _poisoning(config, prep)
    transform = _batch_transform(poison_batch_fn, tc.task_interpolation)

    summary = {}
    for i, algo in enumerate(tc.algorithms):
        torch.manual_seed(config.seed * 1000 + i)
        learner = build_learner(algo, build_model(config, prep.X.shape[1]), config.meta).to(device)
        state = meta_train(
            learner,
            algo,
            sampler,
            val_score,
            tc,
            config.meta,
            out_dir=out_dir,
            seed=config.seed * 1000 + i,
            device=device,
            metadata={"run": "run.json"},
            resume=resume,
            progress=progress,
            transform=transform,
            query_loss=query_loss,
        )
        summary[algo] = {"best_val_tpr@1%fpr": state.best_score, "steps": state.step}
        log.info("%s: best meta-val TPR@1%%FPR %.3f after %d steps", algo, state.best_score, state.step)

    if not (resume and has_checkpoint(out_dir, "pretrained")):
        torch.manual_seed(config.seed * 1000 + 999)
        fit = prep.fit_mask()
        x_fit, y_fit = prep.X[fit], (prep.family[fit] != BENIGN).astype(np.int64)
        if tc.poison is not None:
            x_fit, y_fit = _poison_rows(x_fit, y_fit, tc.poison, trigger, config.seed)
        model = pretrain(
            build_model(config, prep.X.shape[1]),
            x_fit,
            y_fit,
            steps=tc.pretrain_steps,
            seed=config.seed,
            device=device,
        )
        save_checkpoint(out_dir, "pretrained", dict(model.state_dict()), {"run": "run.json"})
    atomic_write_json(out_dir / "train_summary.json", summary)
    return summary


def evaluate_run(
    run_dir: str | Path,
    *,
    shots: list[int] | None = None,
    episodes_per_family: int | None = None,
    out_name: str = "metrics.json",
    baselines: list[str] | None = None,
    ensemble: list[str] | None = None,
    novelty: list[str] | None = None,
    device: str | None = None,
) -> dict:
    """Tune on meta-val, then score every method on identical meta-test episodes; writes ``metrics.json``.

    baselines, ensemble, novelty: replace the run config's ``evaluate.baselines`` (e.g. one added after the
    run was trained), ``evaluate.ensemble`` (the meta-learners averaged into the ``ensemble`` candidate) and
    ``evaluate.novelty``'s methods (each blended with benign novelty; its other settings stay the config's).
    device: auto, cpu or cuda (None: the run config's), e.g. to evaluate on a CPU a run trained on a GPU.
    """
    run_dir = Path(run_dir)
    check_file_name(out_name, "out_name")
    config, prep, meta = load_run(run_dir)
    novelty_settings = config.evaluate.novelty.model_dump() if config.evaluate.novelty else {}
    changes = {
        k: v
        for k, v in (
            ("baselines", baselines),
            ("ensemble", ensemble),
            ("novelty", None if novelty is None else {**novelty_settings, "methods": novelty}),
        )
        if v is not None
    }
    if changes:
        # Validated by the config model, so a value a config file could not hold is refused here too.
        tree = {**config.model_dump(), "evaluate": {**config.evaluate.model_dump(), **changes}}
        config = config_from_dict(tree, source=f"{run_dir} with evaluate options {changes}")
    ec = config.evaluate
    shots = shots or ec.shots
    n_episodes = episodes_per_family or ec.episodes_per_family
    where = resolve_device(device or config.device)
    in_dim = int(meta["in_dim"])
    learners = {
        a: load_model(config, in_dim, run_dir, a, a).to(where)
        for a in config.train.algorithms
        if has_checkpoint(run_dir, a)
    }
    missing = [a for a in config.train.algorithms if a not in learners]
    if missing:
        raise FileNotFoundError(
            f"{run_dir}: no checkpoint for {missing}; run `metashield train` (or --resume) first"
        )
    pretrained = load_model(config, in_dim, run_dir, "pretrained").to(where)

    def make_baseline(name: str, p: dict) -> Scorer:
        return baseline_scorer(name, p, config, prep, pretrained, where)

    grids = baseline_grids(ec)
    report: dict = {
        "run": str(run_dir),
        "dataset": prep.dataset,
        "protocol": {
            "episodes_per_family": n_episodes,
            "attack_queries_max": ec.attack_queries,
            "benign_queries": ec.benign_queries,
            "test_families": prep.split.test,
            "val_families": prep.split.val,
            "selection": "every hyper-parameter and the best methods are chosen on meta-val families only",
            "ensemble": list(ec.ensemble),
            **({"novelty": ec.novelty.model_dump()} if ec.novelty else {}),
        },
        "shots": {},
    }
    if ec.novelty:
        table, reference = novelty_table(config, prep)
    tables = []
    for k in shots:
        val_sets = tuning_episode_sets(config, prep, k, where)
        tuned, methods, val_family = {}, {}, {}
        for a, learner in learners.items():
            methods[a] = learner_scorer(learner)
            val_family[a] = family_scores(methods[a], val_sets, name=a)
        meta_learners = list(learners)
        if ec.ensemble:
            # The very learner `adapt` deploys and `attack` attacks when meta-val chooses it.
            methods[ENSEMBLE] = learner_scorer(Ensemble({a: learners[a] for a in ec.ensemble}))
            val_family[ENSEMBLE] = family_scores(methods[ENSEMBLE], val_sets, name=ENSEMBLE)
            meta_learners.append(ENSEMBLE)
        baseline_names = list(ec.baselines)
        for b in baseline_names:
            params, score, trace = tune_baseline(
                grids[b], lambda b=b, **p: make_baseline(b, p), val_sets, f"{k}-shot {b}"
            )
            tuned[b] = {"params": params, "val_tpr@1%fpr": score, "searched": trace}
            methods[b] = make_baseline(b, params)
            val_family[b] = next(t["val_per_family"] for t in trace if t["params"] == params)
        blends = {}
        for m in ec.novelty.methods if ec.novelty else ():
            best, trace = tune_blend(methods[m], val_sets, table, reference, ec.novelty.weights)
            name = m + NOVELTY
            log.info(
                "%d-shot %s: best weight %s, k %d (meta-val TPR@1%%FPR %.3f)",
                k,
                name,
                best["weight"],
                best["k"],
                best["val_tpr@1%fpr"],
            )
            methods[name] = novelty_scorer(
                methods[m], table.column(best["k"]), best["novelty_scale"], reference, best["weight"]
            )
            val_family[name] = best["val_per_family"]
            blends[name] = {"method": m, **best, "searched": trace}
            (meta_learners if m in meta_learners else baseline_names).append(name)
        val_scores = {m: float(np.mean(list(f.values()))) for m, f in val_family.items()}
        best_meta = max(meta_learners, key=lambda a: val_scores[a])
        best_base = max(baseline_names, key=lambda b: val_scores[b]) if baseline_names else None
        # How much the choice owes to which families happened to be meta-val: chosen again on resamples.
        stability = {
            "meta_learners": choice_stability({a: val_family[a] for a in meta_learners}, seed=config.seed)
        }
        if baseline_names:
            stability["baselines"] = choice_stability(
                {b: val_family[b] for b in baseline_names}, seed=config.seed
            )

        test_sets = held_out_episode_sets(config, prep, k, n_episodes, where)
        if not test_sets:
            raise ValueError(f"{k}-shot: no meta-test family has at least {k + 1} rows")
        per_episode = run_protocol(methods, test_sets, seed=config.seed, base_rate=ec.base_rate)
        summary = {m: summarise_method(r, seed=config.seed) for m, r in per_episode.items()}
        n_benign = min(es.n_benign_queries for es in test_sets.values())
        entry = {
            "summary": summary,
            "val_tpr@1%fpr": val_scores,
            "val_per_family": val_family,
            "val_choice_stability": stability,
            "best_meta_learner": best_meta,
            "best_baseline": best_base,
            "tuned_baselines": tuned,
            **({"novelty": blends} if blends else {}),
            "benign_queries_per_episode": n_benign,
            "smallest_fpr_step": 1.0 / n_benign,
        }
        if best_base is not None:
            pairs = paired_against(per_episode, best_base, "tpr@1%fpr", seed=config.seed)
            entry["paired_best_meta_minus_best_baseline"] = {
                "tpr@1%fpr": pairs[best_meta],
                "auc": paired_difference(
                    per_episode[best_meta], per_episode[best_base], "auc", seed=config.seed
                ),
            }
            entry["paired_minus_best_baseline"] = {"tpr@1%fpr": pairs}
        report["shots"][str(k)] = entry
        marks = {best_meta: " *", **({best_base: " +"} if best_base else {})}
        tables.append(
            format_table(
                summary,
                title=f"\n{k}-shot detection of held-out families (% , family-level 95% CI)",
                marks=marks,
            )
        )
        if best_base is not None:
            d = entry["paired_best_meta_minus_best_baseline"]["tpr@1%fpr"]
            tables.append(
                f"paired TPR@1%FPR {best_meta} - {best_base}: {100 * d['mean']:+.1f} points "
                f"[{100 * d['family_ci'][0]:+.1f}, {100 * d['family_ci'][1]:+.1f}]"
            )
            tables.append(format_paired(entry["paired_minus_best_baseline"]["tpr@1%fpr"], best_base))
        tables.append(
            "meta-val choice under a bootstrap of the meta-val families: "
            + "; ".join(
                f"{chosen} chosen in {100 * stability[side][chosen]:.0f}% of resamples"
                for side, chosen in (("meta_learners", best_meta), ("baselines", best_base))
                if chosen is not None
            )
        )
        tables.append(
            f"{n_benign} benign queries per episode: smallest FPR step {100 / n_benign:.3g}%; "
            f"{n_episodes} episodes per family"
        )
        tables.append(format_family_table(summary))
    tables.append("* best meta-learner on meta-val   + best baseline on meta-val")
    report["table"] = "\n".join(tables)
    atomic_write_json(run_dir / out_name, report)
    return report
