"""Aggregate per-episode metrics into means with 95% CIs (over episodes and over families) and tables."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np

from metashield.evaluation.metrics import bootstrap_ci, family_bootstrap_ci, paired_difference_ci

METRICS = ("tpr@1%fpr", "tpr@5%fpr", "tpr@0.1%fpr", "f1", "auc", "fpr@threshold", "precision@base_rate")
"""Every metric a report may hold, in table order; a report holds those its episodes have."""


def _present(result: PerEpisode) -> list[str]:
    first = next(iter(next(iter(result.values()))), {})
    return [m for m in METRICS if m in first]


PerEpisode = Mapping[str, Sequence[Mapping[str, float]]]


def _by_family(result: PerEpisode, metric: str) -> dict[str, np.ndarray]:
    return {fam: np.array([ep[metric] for ep in eps], dtype=float) for fam, eps in result.items()}


def summarise_method(result: PerEpisode, *, seed: int = 0) -> dict:
    """``{metric: {mean, episode_ci, family_ci}}`` plus ``per_family`` means of every metric."""
    out: dict = {}
    metrics = _present(result)
    for metric in metrics:
        by_fam = _by_family(result, metric)
        _, elo, ehi = bootstrap_ci(np.concatenate(list(by_fam.values())), seed=seed)
        mean, flo, fhi = family_bootstrap_ci(by_fam, seed=seed)
        out[metric] = {"mean": mean, "episode_ci": [elo, ehi], "family_ci": [flo, fhi]}
    out["per_family"] = {
        fam: {metric: float(np.mean([ep[metric] for ep in eps])) for metric in metrics}
        for fam, eps in result.items()
    }
    out["episodes"] = int(sum(len(eps) for eps in result.values()))
    return out


def paired_difference(a: PerEpisode, b: PerEpisode, metric: str = "tpr@1%fpr", *, seed: int = 0) -> dict:
    """Mean paired difference a - b on the same episodes with a family-level bootstrap CI."""
    mean, lo, hi = paired_difference_ci(_by_family(a, metric), _by_family(b, metric), seed=seed)
    return {"metric": metric, "mean": mean, "family_ci": [lo, hi]}


def paired_against(
    per_episode: Mapping[str, PerEpisode], reference: str, metric: str = "tpr@1%fpr", *, seed: int = 0
) -> dict[str, dict]:
    """``paired_difference`` of every method but ``reference`` minus ``reference``, on the same episodes."""
    return {
        method: paired_difference(result, per_episode[reference], metric, seed=seed)
        for method, result in per_episode.items()
        if method != reference
    }


def format_paired(pairs: Mapping[str, Mapping], reference: str, width: int = 120) -> str:
    """The means of ``paired_against`` in points, wrapped; their CIs are left to ``metrics.json`` so that a
    dozen methods fit in two lines."""
    metric = next(iter(pairs.values()))["metric"].upper()
    means = ", ".join(f"{method} {100 * d['mean']:+.1f}" for method, d in pairs.items())
    text = f"paired {metric} minus {reference} (points; CIs in metrics.json): {means}"
    return textwrap.fill(text, width=width, subsequent_indent="  ", break_on_hyphens=False)


def format_table(
    summary: Mapping[str, Mapping], *, title: str, marks: Mapping[str, str] | None = None
) -> str:
    """Plain-text table: one row per method, metrics in percent with the family-level 95% CI."""
    marks = marks or {}
    first = next(iter(summary.values()), {})
    metrics = [m for m in METRICS if m in first]
    header = f"{'method':<22}" + "".join(f"{m:>22}" for m in metrics)
    lines = [title, header, "-" * len(header)]
    for method, s in summary.items():
        cells = []
        for metric in metrics:
            m = s[metric]
            lo, hi = m["family_ci"]
            cells.append(f"{100 * m['mean']:6.1f} [{100 * lo:5.1f},{100 * hi:5.1f}]".rjust(22))
        lines.append(f"{method + marks.get(method, ''):<22}" + "".join(cells))
    return "\n".join(lines)


def format_family_table(summary: Mapping[str, Mapping], metric: str = "tpr@1%fpr") -> str:
    methods = list(summary)
    families = sorted({f for s in summary.values() for f in s["per_family"]})
    width = max(13, *(len(m) + 1 for m in methods))
    header = f"{'family':<18}" + "".join(f"{m:>{width}}" for m in methods)
    lines = [f"per-family {metric} (%)", header]
    for fam in families:
        row = "".join(f"{100 * summary[m]['per_family'][fam][metric]:{width}.1f}" for m in methods)
        lines.append(f"{fam:<18}{row}")
    return "\n".join(lines)
