"""Reports of ``metashield classify``: rotation folds pooled per held-out family, and the printable table."""

from __future__ import annotations

from typing import Any

import numpy as np

from metashield.attacks.constraints import sum_violations
from metashield.classify.config import ClassifyConfig
from metashield.evaluation.metrics import family_bootstrap_ci


def format_table(report: dict) -> str:
    """Accuracy [95% CI] per method (rows) and shot count (columns), in percent; then, when attacked, the
    robust accuracy per budget (columns: shots x eps)."""
    shots = sorted(report["results"], key=int)
    methods = list(report["results"][shots[0]])
    ways = report["ways"]

    def cell(r: dict) -> str:
        return f"{100 * r['acc']:5.1f} [{100 * r['ci_lo']:4.1f}, {100 * r['ci_hi']:4.1f}]"

    head = f"{'method':<18}" + "".join(f"{f'{ways}-way {s}-shot':>24}" for s in shots)
    lines = [head, "-" * len(head)]
    for m in methods:
        lines.append(f"{m:<18}" + "".join(f"{cell(report['results'][s][m]):>24}" for s in shots))
    robust = report["results"][shots[0]][methods[0]].get("robust")
    if robust:
        cfg = report["config"]
        attacks = "+".join(cfg["attacks"])
        lines += ["", f"robust accuracy under {attacks} (worst case per query), by budget eps"]
        columns = [(s, e) for s in shots for e in sorted(robust, key=float)]
        head = f"{'method':<18}" + "".join(f"{f'{s}-shot eps={float(e):g}':>24}" for s, e in columns)
        lines += [head, "-" * len(head)]
        for m in methods:
            row = "".join(f"{cell(report['results'][s][m]['robust'][e]):>24}" for s, e in columns)
            lines.append(f"{m:<18}" + row)
    lines.append(report["note"])
    return "\n".join(lines)


def pool_folds(folds: list[dict], cfg: ClassifyConfig) -> dict[str, Any]:
    """Pool rotation folds per held-out family: a family's accuracy is the mean over the folds that held it
    out, and the CI resamples families, then folds (``family_bootstrap_ci``). ``best-meta`` takes, in each
    fold, the meta-learner that fold chose on meta-val."""
    best = [f["best_meta_learner"] for f in folds]
    results: dict[str, dict] = {}
    for shot in folds[0]["results"]:
        results[shot] = {}
        methods = {m: [m] * len(folds) for m in folds[0]["results"][shot]}
        if None not in best:
            methods["best-meta"] = best
        for method, per_fold in methods.items():
            entries = [f["results"][shot][m] for f, m in zip(folds, per_fold, strict=True)]
            results[shot][method] = _pool_entries(entries, cfg.seed)
            if all("robust" in e for e in entries):
                results[shot][method]["robust"] = {
                    eps: {
                        **_pool_entries([e["robust"][eps] for e in entries], cfg.seed),
                        "violations": sum_violations([e["robust"][eps]["violations"] for e in entries]),
                        "per_attack_acc": {
                            a: float(np.mean([e["robust"][eps]["per_attack_acc"][a] for e in entries]))
                            for a in entries[0]["robust"][eps]["per_attack_acc"]
                        },
                    }
                    for eps in entries[0]["robust"]
                }
    return {
        "dataset": cfg.dataset,
        "ways": cfg.ways,
        "folds": [{"fold": f["fold"], "split": f["split"], "seconds": f["seconds"]} for f in folds],
        "results": results,
        "note": (
            f"chance {100 / cfg.ways:.1f}%; {len(folds)} rotation folds x {cfg.test_episodes} test episodes, "
            f"{cfg.queries} queries per class; accuracy per held-out family averaged over its folds, CI over "
            f"families then folds; best meta-learner on meta-val per fold: {', '.join(map(str, best))}"
        ),
        "config": cfg.model_dump(mode="json"),
        "seconds": sum(f["seconds"] for f in folds),
    }


def _pool_entries(entries: list[dict], seed: int) -> dict[str, Any]:
    """One method's per-fold results pooled per held-out family (mean over the folds that held it out)."""
    by_family: dict[str, list[float]] = {}
    for entry in entries:
        for fam, acc in entry["family_acc"].items():
            by_family.setdefault(fam, []).append(acc)
    mean, lo, hi = family_bootstrap_ci({k: np.asarray(v) for k, v in by_family.items()}, seed=seed)
    return {
        "acc": mean,
        "ci_lo": lo,
        "ci_hi": hi,
        "family_acc": {k: float(np.mean(v)) for k, v in by_family.items()},
        "fold_acc": [e["acc"] for e in entries],
    }
