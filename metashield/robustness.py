"""The ``attack`` job: clean vs robust detection of a trained run's held-out families.

Two threat models on the run's meta-test episodes (the ones ``evaluate`` scores):

- ``query``: evasion after adaptation. Each method adapts on the clean support set; the attacker sees the
  adapted parameters and perturbs the malicious queries (one attack, or the ensemble with its sanity checks).
- ``support``: the attacker controls a fraction of the malicious support rows (``attacks.support``); its
  own samples are the first attack queries of each episode, and detection is scored on the others only.
- ``end-to-end``: each attacked query is also a labelled malicious row of its own copy of the support set,
  so its perturbation changes the adaptation too; it is scored against the 1%-FPR threshold of the very
  model its adversarial version induced.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from metashield._atomic import atomic_write_json, check_file_name
from metashield.attack_report import format_attack_table
from metashield.attack_targets import attack_targets
from metashield.attacks.constraints import (
    Constraints,
    box_constraints,
    check_eps,
    compile_constraints,
    sum_violations,
)
from metashield.attacks.fast_mlp import mlp_layers
from metashield.attacks.presets import DEFAULT_ENSEMBLE, PRESETS, get_attack
from metashield.attacks.support import MODES, adaptive_query_attack, poison_support
from metashield.device import resolve_device
from metashield.evaluation.metrics import (
    bootstrap_ci,
    family_bootstrap_ci,
    paired_difference_ci,
    threshold_at_fpr,
    tpr_at_fpr,
)
from metashield.evaluation.robust import pool_sanity, robust_evaluate
from metashield.meta import ProtoNet
from metashield.runs import (
    held_out_episode_sets,
    load_run,
)

log = logging.getLogger(__name__)

THREATS = ("query", "support", "end-to-end")


def _arrays(by_family: dict[str, list]) -> dict[str, np.ndarray]:
    """Per-family lists of per-episode values as arrays, the form the CIs take."""
    return {f: np.array(v) for f, v in by_family.items()}


def _ci(by_family: dict[str, np.ndarray], seed: int) -> dict:
    mean, flo, fhi = family_bootstrap_ci(by_family, seed=seed)
    _, elo, ehi = bootstrap_ci(np.concatenate(list(by_family.values())), seed=seed)
    return {"mean": mean, "episode_ci": [elo, ehi], "family_ci": [flo, fhi]}


def _constraints(kind: str, prep) -> Constraints:
    if kind == "default":
        return compile_constraints(prep.pipeline, prep.schema)
    if kind == "none":
        return box_constraints(prep.X.shape[1])
    raise ValueError(f"constraints must be 'default' (the dataset's threat schema) or 'none', got {kind!r}")


def _is_mlp_learner(learner) -> bool:
    """Whether ``learner.predict`` is its model's forward with adapted weights (closed-form attack path)."""
    return hasattr(learner, "model") and not isinstance(learner, ProtoNet)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def attack_run(
    run_dir: str | Path,
    *,
    threat: str = "query",
    attack: str = "pgd",
    eps: Sequence[float] = (0.05, 0.1, 0.2),
    norm: str | None = None,
    constraints: str = "default",
    methods: Sequence[str] | None = None,
    shots: int = 5,
    episodes: int = 10,
    fraction: float = 0.2,
    mode: str = "flip-optimised",
    own_samples: int = 10,
    attacker_benign: int = 2000,
    seed: int | None = None,
    out_name: str = "attack.json",
    sanity: bool = True,
    device: str | None = None,
) -> dict:
    """Attack a trained run's meta-test episodes; writes ``<run>/<out_name>`` and returns the report.

    attack: a preset name or ``ensemble`` (query threat). eps: budgets in z-units of the standardised
    features, or whole edits for the ``edits`` attack. norm: None takes the attack's own (``linf`` for
    every attack but ``edits``). attacker_benign (support threat): rows of benign traffic the attacker
    holds, drawn from the run's benign VALIDATION slice (never the test slice the evaluation queries come
    from) to estimate the detector's 1%-FPR threshold; 0: only the clean benign support rows.
    sanity (query threat): run ``robust_evaluate``'s checks (5× the steps, a huge eps, gradient-free vs
    white-box where the ensemble has both) and flag the ones that fail. device: auto, cpu or cuda (None: the
    run config's).
    """
    run_dir = Path(run_dir)
    check_file_name(out_name, "out_name")
    if norm is None:
        norm = PRESETS[attack].norm if attack in PRESETS else "linf"
    if threat not in THREATS:
        raise ValueError(f"threat must be one of {THREATS}, got {threat!r}")
    if threat == "support" and mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if attacker_benign < 0:
        raise ValueError(f"attacker_benign must be >= 0, got {attacker_benign}")
    _check_budgets(eps, norm)
    if threat != "query" or attack != "ensemble":
        optimiser = get_attack(attack, norm=norm)
        if threat != "query" and optimiser.start == "benign":
            raise ValueError(
                f"the {threat} threat cannot use {attack!r}: it starts from benign rows, and an attack "
                "through adaptation perturbs malicious rows from themselves"
            )
    config, prep, meta = load_run(run_dir)
    seed = config.seed if seed is None else seed
    where = resolve_device(device or config.device)
    learners = attack_targets(run_dir, config, prep, meta, methods, shots, where, threat)
    feasible = _constraints(constraints, prep)
    sets = held_out_episode_sets(config, prep, shots, episodes, where)
    report: dict = {
        "run": str(run_dir),
        "threat": threat,
        "shots": shots,
        "episodes_per_family": episodes,
        "norm": norm,
        "eps": list(eps),
        "eps_units": (
            "whole edits in raw units (one word, flag or count; a continuous feature to its bound)"
            if norm == "edits"
            else "z-units of the standardised features (per-feature standard deviations)"
        ),
        "constraints": constraints,
        "families": sorted(sets),
    }
    if threat == "query":
        names = list(DEFAULT_ENSEMBLE) if attack == "ensemble" else [attack]
        report["attacks"] = names
        report["methods"], report["per_episode"] = {}, {}
        for m, learner in learners.items():
            report["methods"][m], report["per_episode"][m] = _query_threat(
                learner, sets, feasible, names, eps, norm, seed, sanity=sanity
            )
        if len(learners) > 1:
            report["paired"] = _paired_methods(report["per_episode"], seed)
    elif threat == "end-to-end":
        report.update(attack=attack, queries_per_episode=own_samples)
        report["methods"] = {
            m: _end_to_end_threat(learner, sets, feasible, optimiser, eps, own_samples, seed)
            for m, learner in learners.items()
        }
    else:
        benign_ref = _attacker_benign(prep, attacker_benign, seed, where)
        report.update(
            fraction=fraction,
            mode=mode,
            own_samples=own_samples,
            attacker_benign=0 if benign_ref is None else len(benign_ref),
            attack=attack,
        )
        report["methods"], report["per_episode"] = {}, {}
        for m, learner in learners.items():
            report["methods"][m], report["per_episode"][m] = _support_threat(
                learner,
                sets,
                feasible,
                optimiser,
                eps,
                fraction,
                mode,
                own_samples,
                seed,
                benign_ref,
            )
    atomic_write_json(run_dir / out_name, report)
    report["table"] = format_attack_table(report)
    return report


def _query_threat(
    learner, sets, feasible, names, eps, norm, seed, *, sanity: bool, chunk: int = 10
) -> tuple[dict, dict]:
    """(summaries with CIs, per-episode TPR by "clean" or eps and family) of the query threat."""
    clean: dict[str, list] = {}
    robust: dict[str, dict[str, list]] = {str(e): {} for e in eps}
    per_attack: dict[str, dict[str, dict[str, list]]] = {str(e): {a: {} for a in names} for e in eps}
    violations: dict[str, int] = {}
    checks = []
    for fam, es in sets.items():
        benign = es.query_y[0] == 0
        clean[fam] = []
        for e in eps:
            robust[str(e)][fam] = []
        for part in _chunks(es.support_x.shape[0], chunk):
            with torch.no_grad():
                params = learner.adapt(es.support_x[part], es.support_y[part])
            qx = es.query_x[part]
            result = robust_evaluate(
                lambda x, params=params: learner.predict(params, x),
                qx[:, benign],
                qx[:, ~benign],
                layers=mlp_layers(learner.model, params) if _is_mlp_learner(learner) else None,
                constraints=feasible,
                eps=eps,
                attacks=names,
                norm=norm,
                seed=seed,
                sanity=sanity,
            )
            clean[fam] += result["clean"]["tpr"]
            for e in eps:
                entry = result["robust"][str(e)]
                robust[str(e)][fam] += entry["tpr"]
                for a, tpr in entry["per_attack_tpr"].items():
                    per_attack[str(e)][a].setdefault(fam, []).extend(tpr)
                violations = {k: violations.get(k, 0) + v for k, v in entry["violations"].items()}
            if sanity:
                checks.append((fam, result["sanity"]))
    out = {
        "clean_tpr@1%fpr": _ci(_arrays(clean), seed),
        "robust_tpr@1%fpr": {e: _ci(_arrays(r), seed) for e, r in robust.items()},
        "violations": violations,
    }
    if len(names) > 1:
        # Which attack does the damage: each one's own TPR, before the worst case over all of them.
        out["per_attack_tpr@1%fpr"] = {
            e: {a: _ci(_arrays(fams), seed) for a, fams in by_attack.items()}
            for e, by_attack in per_attack.items()
        }
    if sanity:
        out["sanity"] = pool_sanity([check for _, check in checks])
        out["flags"] = [name for name, check in out["sanity"].items() if not check["ok"]]
        if "large_eps" in out["sanity"]:
            # The pooled rate hides which families a free mutable box cannot move: those set apart by
            # immutable features or by values beyond the clip (docs/threat-models.md).
            by_family = {fam: pool_sanity([c for f, c in checks if f == fam])["large_eps"] for fam in sets}
            out["sanity"]["large_eps"]["per_family"] = {
                fam: {key: check[key] for key in ("clean_tpr", "robust_tpr")}
                for fam, check in by_family.items()
            }
    return out, {"clean": clean, **robust}


def _paired_methods(per_episode: dict[str, dict], seed: int) -> dict:
    """The first method minus each other one, clean and per eps, paired on the same episodes (family-level
    CI): positive means the first keeps more detection."""
    first, *others = per_episode
    out: dict = {}
    for key in per_episode[first]:
        a = _arrays(per_episode[first][key])
        out[key] = {f"{first} - {m}": _paired(a, _arrays(per_episode[m][key]), seed) for m in others}
    return out


def _check_budgets(eps: Sequence[float], norm: str) -> None:
    """Refuse a bad budget before the run is loaded rather than after the first episodes."""
    if not len(eps):
        raise ValueError("eps is empty: give at least one budget")
    for e in eps:
        check_eps(e, norm)


def _episode_tpr(scores: np.ndarray, benign: np.ndarray, keep: np.ndarray) -> list[float]:
    y = np.r_[np.zeros(int(benign.sum())), np.ones(int(keep.sum()))]
    return [tpr_at_fpr(np.r_[s[benign], s[keep]], y, 0.01) for s in scores]


def _attacker_benign(prep, rows: int, seed: int, device: torch.device) -> torch.Tensor | None:
    """``rows`` benign rows [G, D] of the run's benign validation slice (all of it if smaller), or None."""
    if rows == 0:
        return None
    pool = prep.benign["val"]
    pick = np.random.default_rng(seed + 11).choice(pool, min(rows, len(pool)), replace=False)
    if rows > len(pool):
        log.warning(
            "attacker_benign = %d, but the benign validation slice has %d rows: using all", rows, len(pool)
        )
    return torch.as_tensor(prep.X[np.sort(pick)], device=device)


def _support_threat(
    learner, sets, feasible, attack, eps, fraction, mode, own_samples, seed, benign_ref=None, chunk=10
) -> dict:
    """Per eps: TPR@1%FPR with a clean support, after a random label flip of the controlled rows, and after
    the optimised attack (``mode``), on the defender's queries that are not the attacker's own samples.
    Returns (summaries with CIs, per-episode values by eps, variant and family)."""
    results: dict[str, dict] = {}
    raw: dict[str, dict[str, dict[str, list]]] = {}
    for e in eps:
        per = {"clean": {}, "random_flip": {}, "attacked": {}}
        violations = []
        for fam, es in sets.items():
            benign = es.query_y[0] == 0
            attack_cols = np.flatnonzero(~benign)
            n_own = min(own_samples, len(attack_cols) // 2)
            if n_own < 1:
                log.warning(
                    "%s: %d attack queries, too few to give the attacker its own samples",
                    fam,
                    len(attack_cols),
                )
                continue
            own_cols, eval_cols = attack_cols[:n_own], attack_cols[n_own:]
            keep = np.zeros_like(benign)
            keep[eval_cols] = True
            for key in per:
                per[key].setdefault(fam, [])
            for part in _chunks(es.support_x.shape[0], chunk):
                sx, sy, qx = es.support_x[part], es.support_y[part], es.query_x[part]
                own = qx[:, own_cols]
                common = dict(
                    fraction=fraction, constraints=feasible, attack=attack, seed=seed, benign_ref=benign_ref
                )
                ax, ay, ctl = poison_support(
                    learner.adapt, learner.predict, sx, sy, own, mode=mode, eps=e, **common
                )
                violations.append(feasible.to(sx).violations(ax[ctl], sx[ctl], e, attack.norm))
                variants = {
                    "clean": (sx, sy),
                    "random_flip": poison_support(
                        learner.adapt, learner.predict, sx, sy, own, mode="flip", eps=0.0, **common
                    )[:2],
                    "attacked": (ax, ay),
                }
                for key, (px, py) in variants.items():
                    with torch.no_grad():
                        logits = learner.predict(learner.adapt(px, py), qx)
                    scores = (logits[..., 1] - logits[..., 0]).double().cpu().numpy()
                    per[key][fam] += _episode_tpr(scores, benign, keep)
        raw[str(e)] = per
        arrays = {k: _arrays(d) for k, d in per.items()}
        results[str(e)] = {
            **{f"{k}_tpr@1%fpr": _ci(v, seed) for k, v in arrays.items()},
            "drop_attacked": _paired(arrays["clean"], arrays["attacked"], seed),
            "drop_random_flip": _paired(arrays["clean"], arrays["random_flip"], seed),
            "attacked_minus_random_flip": _paired(arrays["attacked"], arrays["random_flip"], seed),
            "violations": sum_violations(violations),
        }
    return results, raw


def _end_to_end_threat(learner, sets, feasible, attack, eps, n_queries, seed, chunk=5) -> dict:
    """Per eps: TPR@1%FPR of the first ``n_queries`` attack queries of each episode when each one, clean or
    adversarial, sits in its own copy of the support set (in place of the last malicious row)."""
    per: dict[str, dict[str, list]] = {"clean": {}, **{str(e): {} for e in eps}}
    violations = []
    for fam, es in sets.items():
        benign = es.query_y[0] == 0
        cols = np.flatnonzero(~benign)[:n_queries]
        for key in per:
            per[key][fam] = []
        for part in _chunks(es.support_x.shape[0], chunk):
            sx, sy, qx = es.support_x[part], es.support_y[part], es.query_x[part]
            queries, benign_x = qx[:, cols], qx[:, benign]
            t, a = queries.shape[:2]
            for key, e in [("clean", 0.0), *((str(e), e) for e in eps)]:
                adv, adapted = adaptive_query_attack(
                    learner.adapt,
                    learner.predict,
                    sx,
                    sy,
                    queries,
                    eps=e,
                    constraints=feasible,
                    attack=attack,
                    seed=seed,
                )
                violations.append(feasible.to(queries).violations(adv, queries, e, attack.norm))
                with torch.no_grad():
                    params = adapted(adv)
                    own = learner.predict(params, adv.reshape(t * a, 1, -1)).reshape(t, a, -1)
                    scores = (own[..., 1] - own[..., 0]).double()
                    # The benign queries of the episode, scored by every unit's model: [T*A, B].
                    ben = learner.predict(params, benign_x.repeat_interleave(a, dim=0))
                    ben = (ben[..., 1] - ben[..., 0]).double().reshape(t, a, -1).cpu().numpy()
                thresholds = np.array([[threshold_at_fpr(b, 0.01) for b in row] for row in ben])
                per[key][fam] += list((scores.cpu().numpy() > thresholds).mean(-1))
    arrays = {k: _arrays(d) for k, d in per.items()}
    return {
        "clean_tpr@1%fpr": _ci(arrays["clean"], seed),
        "robust_tpr@1%fpr": {str(e): _ci(arrays[str(e)], seed) for e in eps},
        "violations": sum_violations(violations),
    }


def _paired(a: dict[str, np.ndarray], b: dict[str, np.ndarray], seed: int) -> dict:
    mean, lo, hi = paired_difference_ci(a, b, seed=seed)
    return {"mean": mean, "family_ci": [lo, hi]}
