"""The analyst's workflow: adapt a trained run to a new family from a few labelled rows, then score files.

``adapt_run`` reads a small labelled CSV in raw units, adapts a run's meta-learner to it (or every member
of the ``ensemble`` candidate of ``evaluate.ensemble``) and writes an *adapted run* directory::

    adapted.safetensors   the adapted parameters (T=1) of each member, keyed ``<member>/<name>``: gradient
                          learners' weights, ProtoNet's prototypes
    <member>.safetensors/.json   the source run's meta-parameters, copied so that ``predict`` needs
                          neither the source run nor its training data
    adapted.json          the record: source run, support sha256, algorithm and members, operating threshold,
                          the run's config, fitted pipeline and threat schema
    novelty.safetensors   only for a ``<method>+novelty`` blend (``evaluate.novelty``): the benign training
                          rows its neighbour distances are measured to (standardised features)

``predict_file`` scores a CSV in raw units with an adapted run. Scores are the logit margin z1 - z0 (as in
``evaluation.baselines``) of the members' mean logits (``meta.Ensemble``; one member: its own logits), or
for a blend that margin blended with benign novelty (``evaluation.novelty.blend``), and a row is flagged iff
score > threshold, strictly (``evaluation.metrics``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from metashield._atomic import atomic_write_text
from metashield.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from metashield.config import Config, config_from_dict
from metashield.data import FeaturePipeline
from metashield.data.download import file_sha256
from metashield.data.schema import ThreatSchema
from metashield.evaluation.baselines import ENSEMBLE
from metashield.evaluation.metrics import smallest_fpr_step, threshold_at_fpr
from metashield.evaluation.novelty import MARGIN_SCALE, NoveltyLearner
from metashield.evaluation.novelty import SUFFIX as NOVELTY
from metashield.meta import Ensemble
from metashield.raw_rows import RawRows, read_rows, schema_from_dict, schema_to_dict
from metashield.runs import ensemble_members, load_model, load_run, novelty_rows, read_metrics

log = logging.getLogger(__name__)

ADAPTED = "adapted"
"""Checkpoint name of the adapted parameters; ``adapted.json`` is the adapted run's record."""
NOVELTY_INDEX = "novelty"
"""Checkpoint name of a blend's benign neighbour rows."""
FORMAT = "metashield-adapted/3"
"""Version 3 added blends with benign novelty (``novelty``), version 2 ensembles (``members``, keys
``<member>/<name>``); versions 1 (one model, plain keys) and 2 are still read."""
READABLE_FORMATS = ("metashield-adapted/1", "metashield-adapted/2", FORMAT)
TARGET_FPR = 0.01
CHUNK = 65536
"""Rows per forward pass: bounds memory on large inputs."""

Params = dict[str, Tensor]


def _support_targets(rows: RawRows, path: Path, label_column: str, benign_label: str) -> np.ndarray:
    """int64 [S]: 0 for rows labelled ``benign_label``, 1 for the new family (every other label)."""
    assert rows.labels is not None  # read with label_required=True
    y = (rows.labels != benign_label).astype(np.int64)
    found = sorted(set(rows.labels.tolist()))
    if not (y == 0).any():
        raise ValueError(
            f"{path}: no row has the benign label {benign_label!r} in column {label_column!r} (labels found: "
            f"{found[:10]}); adapt needs at least 1 benign row and 1 row of the new family"
        )
    if not (y == 1).any():
        raise ValueError(
            f"{path}: every row has the benign label {benign_label!r} in column {label_column!r}; "
            "adapt needs at least 1 row of the new family (any other label) as well"
        )
    family = sorted(set(rows.labels[y == 1].tolist()))
    if len(family) > 1:
        log.warning("%s: labels %s are all treated as one new family", path, family)
    return y


def _trained(config: Config, run: Path) -> list[str]:
    trained = [a for a in config.train.algorithms if has_checkpoint(run, a)]
    if not trained:
        raise FileNotFoundError(f"{run}: no meta-learner checkpoint; run `metashield train` first")
    return trained


def choose_algorithm(
    run: Path, trained: list[str], n_family: int, requested: str | None, ensemble: list[str]
) -> tuple[str, list[str], str]:
    """(algorithm, members, why chosen): ``requested``; else ``metrics.json``'s best meta-learner (chosen on
    meta-val) at the shot count nearest ``n_family`` (ties: the smaller); else the first trained algorithm.

    ``ENSEMBLE`` deploys ``runs.ensemble_members`` (``ensemble``: the run config's ``evaluate.ensemble``);
    any other algorithm is its own only member. ``<method>+novelty`` (``evaluate.novelty``) deploys the
    members of ``<method>``; ``novelty_blend`` gives the blend's parameters.
    """
    metrics = read_metrics(run)
    ensemble = ensemble_members(metrics, ensemble)
    if requested is not None:
        why = "requested"
        chosen = requested
    elif metrics is None:
        return trained[0], [trained[0]], "first trained algorithm (the run has no metrics.json)"
    else:
        k = nearest_shots(metrics, n_family)
        chosen = metrics["shots"][k]["best_meta_learner"]
        why = f"best meta-learner on meta-val at {k} shots (metrics.json)"
    best = chosen.removesuffix(NOVELTY)
    if best != chosen:
        why += f", blended with benign novelty: the members of {best!r}"
    if best == ENSEMBLE:
        if not ensemble:
            raise ValueError(f"--algorithm {ENSEMBLE}: {run} was evaluated without evaluate.ensemble")
        untrained = [m for m in ensemble if m not in trained]
        if untrained:
            raise FileNotFoundError(f"{run}: the ensemble's members {untrained} have no checkpoint")
        return chosen, ensemble, f"{why}: the mean logit margin of {ensemble}"
    if best not in trained:
        if requested is not None:
            raise ValueError(f"--algorithm {requested!r}: {run} has checkpoints for {trained} only")
        raise FileNotFoundError(
            f"{run}/metrics.json names {best!r} as the best meta-learner but {run} has no checkpoint"
        )
    return chosen, [best], why


def nearest_shots(metrics: dict, n_family: int) -> str:
    """The shot count of ``metrics.json`` nearest ``n_family`` rows of the new family (ties: the smaller)."""
    return min(metrics["shots"], key=lambda s: (abs(int(s) - n_family), int(s)))


def novelty_blend(run: Path, algorithm: str, n_family: int) -> dict:
    """The weight, neighbour rank and novelty scale that ``metashield evaluate`` chose on meta-val for the
    blend ``algorithm`` (``<method>+novelty``), at the shot count nearest ``n_family``."""
    metrics = read_metrics(run)
    k = nearest_shots(metrics, n_family) if metrics else None
    blends = metrics["shots"][k].get("novelty", {}) if metrics else {}
    if algorithm not in blends:
        raise ValueError(
            f"--algorithm {algorithm!r}: {run}/metrics.json has no such blend"
            + (f" at {k} shots (it has {sorted(blends)})" if metrics else " (no metrics.json)")
            + "; evaluate the run with evaluate.novelty listing that method first"
        )
    return {
        **{key: blends[algorithm][key] for key in ("method", "weight", "k", "novelty_scale")},
        "reference_rows": metrics["protocol"]["novelty"]["reference_rows"],
    }


def margins(learner: nn.Module, params: Params, x: np.ndarray) -> np.ndarray:
    """Attack scores float32 [M] = logit margin z1 - z0 of rows x [M, D] under one task's ``params``."""
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), CHUNK):
            logits = learner.predict(params, torch.as_tensor(x[i : i + CHUNK])[None])
            parts.append((logits[0, :, 1] - logits[0, :, 0]).numpy())
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _operating_threshold(scores: np.ndarray, score: str) -> dict:
    """The threshold for ``TARGET_FPR`` on benign-validation scores [n], with its resolution 1/n."""
    if len(scores) == 0:
        raise ValueError("the run has no benign validation rows to set the operating threshold on")
    if not np.isfinite(scores).all():
        raise ValueError(
            "the adapted model gives non-finite scores on benign validation rows: the adaptation diverged; "
            "try another --algorithm or a support set with rows of both classes that are less extreme"
        )
    threshold = threshold_at_fpr(scores, TARGET_FPR)
    resolution = smallest_fpr_step(len(scores))
    if resolution > TARGET_FPR:
        log.warning(
            "only %d benign validation rows: the threshold is their largest score (FPR resolution %.3g)",
            len(scores),
            resolution,
        )
    return {
        "value": threshold,
        "target_fpr": TARGET_FPR,
        "estimated_on": "the source run's benign validation slice (never the test slice)",
        "benign_val_rows": len(scores),
        "fpr_resolution": resolution,
        "benign_val_fpr": float(np.mean(scores > threshold)),
        "score": score,
        "rule": "flagged iff score > threshold",
    }


def _publish_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Build a directory with ``write(tmp)`` in a hidden temporary directory beside ``out``, then rename it
    to ``out``: a crash leaves no ``out`` at all (at worst a ``.<name>.*.tmp`` directory), never a partial
    one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        write(tmp)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable, not only the files
    finally:
        os.close(fd)


def _support_counts(rows: RawRows, y: np.ndarray, flagged: np.ndarray) -> dict:
    """Rows per class of the support set and how many of them the adapted model flags (a sanity check)."""
    assert rows.labels is not None  # a support file always has labels
    return {
        "benign_rows": int((y == 0).sum()),
        "new_family_rows": int(y.sum()),
        "new_family_labels": sorted(set(rows.labels[y == 1].tolist())),
        "flagged": {"benign": int(flagged[y == 0].sum()), "new_family": int(flagged[y == 1].sum())},
    }


def _refuse_existing(out: Path) -> None:
    if out.exists():
        # Never overwritten, even by another adapt: its record ties flags already raised to their evidence.
        raise FileExistsError(
            f"{out} already exists: choose another --out (adapted runs are never overwritten)"
        )


def adapt_run(
    run: str | os.PathLike,
    support: str | os.PathLike,
    out: str | os.PathLike,
    *,
    algorithm: str | None = None,
    label_column: str = "label",
    benign_label: str = "benign",
) -> dict:
    """Adapt a run's meta-learner to the labelled ``support`` CSV (raw units); write the adapted run ``out``.

    Rows labelled ``benign_label`` are benign, every other label is the new family; at least one of each.
    Returns the record written to ``out/adapted.json``.
    """
    run, support, out = Path(run), Path(support), Path(out)
    _refuse_existing(out)
    config, prep, meta = load_run(run)
    rows = read_rows(support, prep.pipeline, prep.schema, label_column, label_required=True)
    y = _support_targets(rows, support, label_column, benign_label)
    algo, names, why = choose_algorithm(
        run, _trained(config, run), int(y.sum()), algorithm, list(config.evaluate.ensemble)
    )
    ensemble = Ensemble({n: load_model(config, int(meta["in_dim"]), run, n, n) for n in names}).eval()
    learner, novelty, index = ensemble, None, None
    if algo.endswith(NOVELTY):
        novelty = novelty_blend(run, algo, int(y.sum()))
        index, reference = (
            torch.from_numpy(a) for a in novelty_rows(config, prep, novelty["reference_rows"])
        )
        learner = _blended(ensemble, index, reference, novelty)
    x = prep.pipeline.transform(rows.frame)
    with torch.no_grad():
        params = learner.adapt(torch.as_tensor(x)[None], torch.as_tensor(y)[None])
    if novelty is not None:
        novelty = {**novelty, "margin_scale": float(params[MARGIN_SCALE]), "index_rows": len(index)}
    threshold = _operating_threshold(
        margins(learner, params, prep.X[prep.benign["val"]]), _score_text(novelty)
    )
    support_flagged = margins(learner, params, x) > threshold["value"]
    record = {
        "format": FORMAT,
        "source_run": str(run.resolve()),
        "source_checkpoint_sha256": {name: file_sha256(run / f"{name}.safetensors") for name in names},
        "dataset": prep.dataset,
        "algorithm": algo,
        "members": names,
        "algorithm_choice": why,
        "support": {
            "path": str(support.resolve()),
            "sha256": rows.sha256,
            "label_column": label_column,
            "benign_label": benign_label,
            **_support_counts(rows, y, support_flagged),
        },
        "threshold": threshold,
        **({"novelty": novelty} if novelty else {}),
        "config": meta["config"],
        "in_dim": int(meta["in_dim"]),
        "pipeline": meta["pipeline"],
        "schema": schema_to_dict(prep.schema),
    }

    def write(directory: Path) -> None:
        for name, member in ensemble.members.items():
            save_checkpoint(directory, name, dict(member.state_dict()), {"copied_from": str(run.resolve())})
        if index is not None:
            save_checkpoint(directory, NOVELTY_INDEX, {"benign": index}, {"rows": "benign training slice"})
        save_checkpoint(directory, ADAPTED, params, record)

    _publish_dir(out, write)
    return record


def _blended(ensemble: Ensemble, index: Tensor, reference: Tensor, novelty: dict) -> NoveltyLearner:
    """The blend ``evaluate`` scored (``evaluation.novelty``), as one learner: its margin is the blend."""
    return NoveltyLearner(
        ensemble, index, reference, novelty["k"], novelty["weight"], novelty["novelty_scale"]
    ).eval()


def _score_text(novelty: dict | None) -> str:
    """What the adapted run's score is, for its record."""
    if novelty is None:
        return "logit margin z1 - z0"
    k = novelty["k"]
    suffix = "th" if 11 <= k % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    rank = "nearest" if k == 1 else f"{k}{suffix} nearest"
    return (
        f"{novelty['weight']} * margin / {novelty['margin_scale']:.6g} + {1 - novelty['weight']} * (distance "
        f"to the {rank} benign training row) / {novelty['novelty_scale']:.6g}"
    )


@dataclasses.dataclass
class Adapted:
    """An adapted run loaded for scoring: ``scores(frame)`` maps raw rows to attack scores."""

    record: dict
    learner: Ensemble | NoveltyLearner
    params: Params
    pipeline: FeaturePipeline
    schema: ThreatSchema

    @property
    def threshold(self) -> float:
        return float(self.record["threshold"]["value"])

    def scores(self, frame: pd.DataFrame) -> np.ndarray:
        """float32 [n] attack scores (``margins``) of the raw rows of ``frame``."""
        return margins(self.learner, self.params, self.pipeline.transform(frame))


def load_adapted(run: str | os.PathLike) -> Adapted:
    """The adapted run that ``adapt_run`` wrote to ``run``; needs nothing from the source run."""
    run = Path(run)
    if not has_checkpoint(run, ADAPTED):
        raise FileNotFoundError(f"{run}: no adapted model: is it a directory written by `metashield adapt`?")
    tensors, record = load_checkpoint(run, ADAPTED)
    if record.get("format") not in READABLE_FORMATS:
        raise ValueError(
            f"{run / 'adapted.json'}: format {record.get('format')!r}, "
            f"expected one of {list(READABLE_FORMATS)}"
        )
    config = config_from_dict(record["config"], str(run / "adapted.json"))
    names = record.get("members", [record["algorithm"]])
    if record["format"] == READABLE_FORMATS[0]:  # version 1: one model under plain parameter names
        tensors = {f"{names[0]}/{k}": v for k, v in tensors.items()}
    missing = [n for n in names if not any(k.startswith(f"{n}/") for k in tensors)]
    if missing:
        raise ValueError(f"{run / 'adapted.safetensors'}: no adapted parameters for members {missing}")
    learner = Ensemble({n: load_model(config, int(record["in_dim"]), run, n, n) for n in names}).eval()
    if "novelty" in record:
        if not has_checkpoint(run, NOVELTY_INDEX):
            raise FileNotFoundError(f"{run}: a blend with benign novelty, but no {NOVELTY_INDEX}.safetensors")
        index = load_checkpoint(run, NOVELTY_INDEX)[0]["benign"]
        # Scoring never adapts again, so no reference rows: the margin's scale is among the adapted params.
        learner = _blended(learner, index, index[:0], record["novelty"])
    return Adapted(
        record,
        learner,
        tensors,
        FeaturePipeline.from_dict(record["pipeline"]),
        schema_from_dict(record["schema"]),
    )


def _format_scores(rows: RawRows, scores: np.ndarray, flagged: np.ndarray) -> str:
    """CSV text: the 1-based data row, the line it starts on, the score (repr: exact float64) and 0/1."""
    lines = ["row,line,score,flagged"]
    lines += [
        f"{i},{line},{float(s)!r},{int(f)}"
        for i, (line, s, f) in enumerate(zip(rows.lines, scores, flagged, strict=True), start=1)
    ]
    return "\n".join(lines) + "\n"


def predict_file(
    run: str | os.PathLike,
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    label_column: str | None = None,
    benign_label: str | None = None,
) -> dict:
    """Score every row of ``input_path`` (raw units) with the adapted run ``run``; write ``out`` atomically.

    A label column (default: the one of the support file) is optional; when present the summary also counts
    flagged rows per class. Returns {"rows", "flagged", "threshold"[, "benign", "new_family"]}.
    """
    input_path, out = Path(input_path), Path(out)
    if out.resolve() == input_path.resolve():
        raise ValueError(f"--out {out} is the input file: choose another path")
    adapted = load_adapted(run)
    label_column = label_column or adapted.record["support"]["label_column"]
    benign_label = benign_label or adapted.record["support"]["benign_label"]
    rows = read_rows(input_path, adapted.pipeline, adapted.schema, label_column, label_required=False)
    scores = adapted.scores(rows.frame)
    flagged = scores.astype(np.float64) > adapted.threshold
    atomic_write_text(out, _format_scores(rows, scores, flagged))
    summary = {"rows": len(scores), "flagged": int(flagged.sum()), "threshold": adapted.threshold}
    if rows.labels is not None:
        is_family = rows.labels != benign_label
        for name, mask in (("benign", ~is_family), ("new_family", is_family)):
            summary[name] = {"rows": int(mask.sum()), "flagged": int(flagged[mask].sum())}
    return summary
