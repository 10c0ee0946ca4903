"""The printed summary of an ``attack`` report (``robustness.attack_run``): TPR@1%FPR in percent with
family-level 95% CIs, per method and budget, with the sanity checks and paired differences it holds."""

from __future__ import annotations


def _pct(ci: dict) -> str:
    lo, hi = ci["family_ci"]
    return f"{100 * ci['mean']:6.1f} [{100 * lo:5.1f},{100 * hi:5.1f}]"


def _signed(d: dict) -> str:
    """A paired difference in points with its family-level CI: ``+1.2 [-0.3, +2.6]``."""
    lo, hi = d["family_ci"]
    return f"{100 * d['mean']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def format_attack_table(report: dict) -> str:
    """Plain-text summary: TPR@1%FPR in percent with family-level 95% CIs."""
    lines = [
        f"{report['threat']} attack, {report['shots']}-shot, eps in {report['eps_units']}, "
        f"constraints={report['constraints']}, {report['episodes_per_family']} episodes x "
        f"{len(report['families'])} held-out families"
    ]
    for method, r in report["methods"].items():
        if report["threat"] in ("query", "end-to-end"):
            lines.append(f"{method}: clean TPR@1%FPR {_pct(r['clean_tpr@1%fpr'])}")
            for e, ci in r["robust_tpr@1%fpr"].items():
                lines.append(f"  eps={e:<6} robust TPR@1%FPR {_pct(ci)}")
                alone = r.get("per_attack_tpr@1%fpr", {}).get(e, {})
                if alone:
                    each = ", ".join(f"{a} {100 * c['mean']:.1f}" for a, c in alone.items())
                    lines.append(f"    each attack alone: {each}")
            if "violations" in r:
                lines.append(f"  constraint violations: {sum(r['violations'].values())}")
            for name, check in r.get("sanity", {}).items():
                lines.append(f"  sanity {name}: {'ok' if check['ok'] else 'FLAGGED'} {_check_text(check)}")
                if "per_family" in check:
                    held = sorted(check["per_family"].items(), key=lambda kv: -kv[1]["robust_tpr"])
                    each = ", ".join(
                        f"{f} {100 * v['clean_tpr']:.1f}->{100 * v['robust_tpr']:.1f}" for f, v in held
                    )
                    lines.append(f"    per family, clean->robust: {each}")
        else:
            lines.append(
                f"{method}: the attacker holds {report['own_samples']} own samples and "
                f"{report.get('attacker_benign', 0)} benign rows"
            )
            for e, s in r.items():
                lines.append(
                    f"  eps={e:<6} clean {_pct(s['clean_tpr@1%fpr'])}  random flip "
                    f"{_pct(s['random_flip_tpr@1%fpr'])}  attacked {_pct(s['attacked_tpr@1%fpr'])}  "
                    f"attacked - flip {_signed(s['attacked_minus_random_flip'])}  "
                    f"constraint violations {sum(s['violations'].values())}"
                )
    for key, pairs in report.get("paired", {}).items():
        for name, d in pairs.items():
            lines.append(
                f"paired TPR@1%FPR {name}, {'clean' if key == 'clean' else 'eps=' + key}: {_signed(d)}"
            )
    return "\n".join(lines)


def _check_text(check: dict) -> str:
    return ", ".join(
        f"{k}={100 * v:.1f}" if isinstance(v, float) and k not in ("eps",) else f"{k}={v}"
        for k, v in check.items()
        if k not in ("ok", "per_family")
    )
