"""Few-shot detection of held-out families, campaigns or windows on every domain dataset, clean and attacked.

    python benchmarks/domains.py --out runs/domains [--datasets kdd99,spambase,...]

For each dataset: ``metashield train`` + ``evaluate`` with ``configs/<dataset>.yaml`` (one family split,
training seed 0), then ``metashield attack --attack pgd`` on the best meta-learner and the tuned fine-tune
baseline at 5 shots, and for binary/count features (EDITS) ``--attack edits``, whose budget is a number of
whole edits. Resumable: finished steps are read back. Writes ``domains.json`` and ``domains.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from metashield._atomic import atomic_write_json, atomic_write_text
from metashield.config import load_config
from metashield.robustness import attack_run
from metashield.workflow import evaluate_run, train_run

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("kdd99", "spambase", "sms_spam", "phishing", "clamp", "tuandromd", "creditcard")
EPS = (0.1, 0.5)
EDITS = {"tuandromd": (1, 3, 10), "sms_spam": (1, 3, 10)}
"""Datasets where one flag or word is more than the z-unit budgets allow, and their edit budgets."""


def run_dataset(name: str, out: Path) -> dict:
    run = out / name
    start = time.perf_counter()
    if not (run / "metrics.json").is_file():
        config = load_config(REPO / "configs" / f"{name}.yaml")
        train_run(config, run, resume=run.exists(), progress=False)
        evaluate_run(run)
    metrics = json.loads((run / "metrics.json").read_text())
    attack_path = run / "attack_pgd.json"
    if not attack_path.is_file():
        attack_run(run, attack="pgd", eps=EPS, shots=5, episodes=10, out_name=attack_path.name)
    attacks = [json.loads(attack_path.read_text())]
    if name in EDITS:
        edits_path = run / "attack_edits.json"
        if not edits_path.is_file():
            attack_run(run, attack="edits", eps=EDITS[name], shots=5, episodes=10, out_name=edits_path.name)
        attacks.append(json.loads(edits_path.read_text()))
    return {"metrics": metrics, "attacks": attacks, "seconds": time.perf_counter() - start}


def _cell(s: dict, metric: str) -> str:
    m = s[metric]
    return f"{100 * m['mean']:.1f} [{100 * m['family_ci'][0]:.1f}, {100 * m['family_ci'][1]:.1f}]"


def table(results: dict[str, dict]) -> str:
    lines = []
    for name, r in results.items():
        m = r["metrics"]
        fams = m["protocol"]["test_families"]
        lines += [f"### {name}", "", f"Held-out: {', '.join(fams)}.", ""]
        shots = sorted(m["shots"], key=int)
        metrics = ["tpr@1%fpr", "f1", "auc"]
        if "precision@base_rate" in next(iter(m["shots"][shots[0]]["summary"].values())):
            metrics.append("precision@base_rate")
        header = "| method | " + " | ".join(f"{k}-shot {x}" for k in shots for x in metrics) + " |"
        lines += [header, "|" + "---|" * (1 + len(shots) * len(metrics))]
        for method in m["shots"][shots[0]]["summary"]:
            cells = [_cell(m["shots"][k]["summary"][method], x) for k in shots for x in metrics]
            mark = "".join(
                ("*" if m["shots"][k]["best_meta_learner"] == method else "")
                + ("+" if m["shots"][k]["best_baseline"] == method else "")
                for k in shots[1:2]
            )
            lines.append(f"| {method}{mark} | " + " | ".join(cells) + " |")
        n_benign = m["shots"][shots[0]]["benign_queries_per_episode"]
        lines += ["", f"{n_benign} benign queries per episode (smallest FPR step {100 / n_benign:.2f}%).", ""]
        for a in r["attacks"]:
            budget = "greedy edits (ε = whole edits)" if a.get("norm") == "edits" else "PGD-20 L∞"
            lines += [
                "",
                f"| method (5-shot, {budget}, schema constraints) | clean | "
                + " | ".join(f"ε = {e}" for e in a["eps"])
                + " |",
                "|---|---|" + "---|" * len(a["eps"]),
            ]
            for method, res in a["methods"].items():
                cells = [_cell({"x": res["clean_tpr@1%fpr"]}, "x")] + [
                    _cell({"x": res["robust_tpr@1%fpr"][str(e)]}, "x") for e in a["eps"]
                ]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", f"Wall time: {r['seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/domains"))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = {}
    for name in args.datasets.split(","):
        results[name] = run_dataset(name, args.out)
        print(f"{name}: done in {results[name]['seconds'] / 60:.1f} min", flush=True)
        atomic_write_text(args.out / "domains.md", table(results) + "\n")
    atomic_write_json(args.out / "domains.json", {k: v["metrics"] for k, v in results.items()})
    print(table(results))


if __name__ == "__main__":
    main()
