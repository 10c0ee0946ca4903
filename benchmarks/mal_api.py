"""Mal-API-2019 type classification over all 8 rotation folds, and what truncating the traces costs.

    python benchmarks/mal_api.py --out runs/mal_api [--variants tokens64,tokens256,tokens1024,bag]
    python benchmarks/mal_api.py --out runs/mal_api --report       # tables from what has finished

Each variant runs ``configs/mal_api.yaml`` with its representation: ``bag`` (the config itself) reads the
log-counts of every API over the whole trace (MLP) and is also attacked (the config's ``attacks``: whole
calls inserted, so that a trace is attributed to another type); ``tokensL`` reads the first L calls of each
trace (SequenceCNN). No attack on token sequences is built, so the ``tokens`` variants report clean accuracy.
``--shots 1,5`` overrides the config's eval_shots (the tokens tables in BENCHMARKS.md ran at 1 and 5).
Folds are resumable (each writes ``<variant>/fold<k>/classify.json``), so variants can run in parallel
processes on one machine.
Writes ``mal_api.json`` and ``mal_api.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from metashield._atomic import atomic_write_json, atomic_write_text
from metashield.classify import classify_run, load_classify_config, pool_folds
from metashield.data import load_dataset

REPO = Path(__file__).resolve().parents[1]

VARIANTS = ("tokens64", "tokens256", "tokens1024", "bag")


def variant_config(name: str, shots: list[int] | None = None) -> dict:
    """configs/mal_api.yaml with the representation (and max_len) of variant ``name``; ``shots`` replaces
    eval_shots."""
    cfg = load_classify_config(REPO / "configs" / "mal_api.yaml").model_dump(mode="json")
    if shots:
        cfg["eval_shots"] = shots
    if name == "bag":
        cfg["representation"] = "bag"
    elif name.startswith("tokens") and name[6:].isdigit():
        cfg.update(representation="tokens", attacks=[], attack_eps=[])
        cfg["sequence"]["max_len"] = int(name[6:])
    else:
        raise SystemExit(f"unknown variant {name!r}; expected bag or tokens<L>, e.g. {', '.join(VARIANTS)}")
    return cfg


def finished(
    out: Path, name: str, only: list[int] | None = None, shots: list[int] | None = None
) -> dict | None:
    """The pooled report of the folds of ``name`` written so far (those in ``only`` when given), or None."""
    cfg = load_classify_config(variant_config(name, shots))
    folds = sorted((out / name).glob("fold*/classify.json"), key=lambda p: int(p.parent.name[4:]))
    folds = [p for p in folds if only is None or int(p.parent.name[4:]) in only]
    reports = [json.loads(p.read_text(encoding="utf-8")) for p in folds]
    same = cfg.model_dump(mode="json", exclude={"folds"})
    reports = [r for r in reports if {k: v for k, v in r["config"].items() if k != "folds"} == same]
    return pool_folds(reports, cfg) if reports else None


def _cell(r: dict) -> str:
    return f"{100 * r['acc']:.1f} [{100 * r['ci_lo']:.1f}, {100 * r['ci_hi']:.1f}]"


def table(pooled: dict[str, dict]) -> str:
    """Markdown: accuracy [95% CI] per method, variant and shot count."""
    shots = sorted(next(iter(pooled.values()))["results"], key=int)
    methods = list(next(iter(pooled.values()))["results"][shots[0]])
    head = "| method | " + " | ".join(f"{v} {s}-shot" for v in pooled for s in shots) + " |"
    lines = [head, "|---|" + "---|" * (len(pooled) * len(shots))]
    for m in methods:
        cells = []
        for rep in pooled.values():
            for s in shots:
                r = rep["results"][s].get(m)
                cells.append("—" if r is None else _cell(r))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {v}: {len(rep['folds'])} folds, {rep['seconds'] / 60:.1f} min" for v, rep in pooled.items()]
    return "\n".join(lines)


def robust_table(pooled: dict[str, dict]) -> str:
    """Markdown: robust accuracy [95% CI] per method, for each attacked variant, shot count and budget."""
    out = []
    for variant, rep in pooled.items():
        shots = sorted(rep["results"], key=int)
        methods = list(rep["results"][shots[0]])
        budgets = sorted(rep["results"][shots[0]][methods[0]].get("robust", {}), key=float)
        if not budgets:
            continue
        columns = [(s, e) for s in shots for e in budgets]
        out.append(f"{variant}: robust accuracy, worst case of {'+'.join(rep['config']['attacks'])}")
        out.append("")
        out.append(
            "| method | clean "
            + " | ".join(f"{s}-shot" for s in shots)
            + " | "
            + " | ".join(f"{s}-shot {float(e):g} calls" for s, e in columns)
            + " |"
        )
        out.append("|---|" + "---|" * (len(shots) + len(columns)))
        for m in methods:
            clean = [_cell(rep["results"][s][m]) for s in shots]
            robust = [_cell(rep["results"][s][m]["robust"][e]) for s, e in columns]
            out.append(f"| {m} | " + " | ".join(clean + robust) + " |")
        violations = {
            k: v
            for s, e in columns
            for m in methods
            for k, v in rep["results"][s][m]["robust"][e]["violations"].items()
            if v
        }
        out.append("")
        out.append(f"- constraint violations: {violations or 'none'}")
    return "\n".join(out)


def truncation_stats(max_lens: list[int]) -> str:
    """How many traces each max_len cuts, and the share of all calls it keeps."""
    lengths = load_dataset("mal-api", progress=False).lengths
    rows = [
        f"- max_len {L}: cuts {100 * np.mean(lengths > L):.0f}% of traces, keeps "
        f"{100 * np.minimum(lengths, L).sum() / lengths.sum():.2f}% of all calls"
        for L in max_lens
    ]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--report", action="store_true", help="only pool and tabulate the folds written so far")
    ap.add_argument("--common", action="store_true", help="also tabulate the folds all variants finished")
    ap.add_argument("--shots", default="", help="eval_shots instead of the config's, e.g. 1,5")
    args = ap.parse_args()
    shots = [int(s) for s in args.shots.split(",") if s] or None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    names = [v for v in args.variants.split(",") if v]
    if not args.report:
        for name in names:
            classify_run(variant_config(name, shots), args.out / name)
    pooled = {n: p for n in names if (p := finished(args.out, n, shots=shots)) is not None}
    if not pooled:
        raise SystemExit(f"no finished fold under {args.out}")
    lens = [variant_config(n)["sequence"]["max_len"] for n in pooled if n.startswith("tokens")]
    text = table(pooled) + "\n\n" + truncation_stats(lens) + "\n"
    robust = robust_table(pooled)
    if robust:
        text += "\n" + robust + "\n"
    if args.common:
        common = set.intersection(*({f["fold"] for f in p["folds"]} for p in pooled.values()))
        same = {n: finished(args.out, n, sorted(common), shots) for n in pooled}
        text += f"\nOn the folds every variant finished ({sorted(common)}):\n\n" + table(same) + "\n"
    atomic_write_json(args.out / "mal_api.json", pooled)
    atomic_write_text(args.out / "mal_api.md", text)
    print(text)


if __name__ == "__main__":
    main()
