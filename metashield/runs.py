"""A run directory: what ``run.json`` records, and rebuilding the data, models and episodes from it.

``train`` writes a run, and ``evaluate``, ``attack`` and ``adapt`` read one. They all rebuild the same
prepared data, learners and episode sets through these functions, so the methods they compare are scored
on identical rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from metashield.checkpoint import load_checkpoint, versions
from metashield.config import Config, config_from_dict
from metashield.data import FeaturePipeline
from metashield.data.download import file_sha256
from metashield.evaluation.novelty import NoveltyTable
from metashield.evaluation.protocol import build_episode_sets
from metashield.experiment import Prepared, data_files, prepare
from metashield.models import MLP
from metashield.tasks import FamilySplit
from metashield.train import build_learner


def build_model(config: Config, in_dim: int) -> MLP:
    """The run's base learner, freshly initialised."""
    return MLP(in_dim, config.model.hidden, out_dim=config.train.ways)


def _check_data_files(recorded: dict[str, str], run_json: Path) -> None:
    """User-supplied data must be the bytes the run was trained on: the registry pins no checksum for them."""
    for path, sha in recorded.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{run_json}: data file {path} (sha256 {sha}) is missing")
        now = file_sha256(Path(path))
        if now != sha:
            raise ValueError(
                f"{run_json}: data file {path} changed since the run was trained "
                f"(sha256 recorded {sha}, now {now}); restore it or train a new run"
            )


def run_metadata(config: Config, prep: Prepared) -> dict:
    """What ``run.json`` records: the config, the data files' sha256, the split, the fitted pipeline, and the
    library versions of the process writing it (a run.json written before versions were recorded has none;
    nothing reads them back)."""
    return {
        "config": config.model_dump(mode="json"),
        # sha256 of every user-supplied file, recorded on first use (registry files are pinned instead).
        "data_files": {str(p.resolve()): file_sha256(p) for p in data_files(config)},
        "dataset": prep.dataset,
        "split": prep.split.to_dict(),
        "pipeline": prep.pipeline.to_dict(),
        "feature_names": list(prep.pipeline.feature_names),
        "in_dim": int(prep.X.shape[1]),
        "versions": versions(),
    }


def prepare_saved(config: Config, meta: dict) -> Prepared:
    """The run's data with the family split and pipeline ``meta`` (a ``run.json``) recorded, not refitted."""
    return prepare(
        config,
        split=FamilySplit.from_dict(meta["split"]),
        pipeline=FeaturePipeline.from_dict(meta["pipeline"]),
    )


def read_metrics(run_dir: str | Path) -> dict | None:
    """The run's ``metrics.json`` (the report of ``metashield evaluate``), or None where it has none."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: expected the JSON report of `metashield evaluate` ({exc!r})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("shots"), dict):
        raise ValueError(f"{path}: expected the JSON report of `metashield evaluate`, with a 'shots' table")
    return metrics


def ensemble_members(metrics: dict | None, configured: list[str]) -> list[str]:
    """Members of a run's ``ensemble`` candidate: those its ``metrics.json`` was evaluated with (``evaluate
    --ensemble`` may have replaced the config's), else ``configured``, the run config's ``evaluate.ensemble``.
    """
    evaluated = (metrics or {}).get("protocol", {}).get("ensemble")
    return list(evaluated or configured)


def best_on_val(entry: dict, candidates: list[str]) -> str | None:
    """Of ``candidates``, the one with the best meta-val score in a ``metrics.json`` shot entry (ties: the
    first); None when none of them was scored. For ``attack``, which attacks one model, where the val choice
    was something else (the ``evaluate.ensemble`` candidate, or a learner a threat cannot attack)."""
    val = entry.get("val_tpr@1%fpr", {})
    scored = [a for a in candidates if a in val]
    return max(scored, key=val.__getitem__) if scored else None


def load_run_config(run_dir: str | Path) -> tuple[Config, dict]:
    """(config, run.json) of a run written by ``metashield train``, without loading its data."""
    run_dir = Path(run_dir)
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise FileNotFoundError(
            f"{run_json} not found: is {run_dir} a directory written by `metashield train`?"
        )
    meta = json.loads(run_json.read_text(encoding="utf-8"))
    return config_from_dict(meta["config"], str(run_json)), meta


def load_run(run_dir: str | Path) -> tuple[Config, Prepared, dict]:
    """(config, prepared data, run.json) of a run written by ``metashield train``."""
    config, meta = load_run_config(run_dir)
    _check_data_files(meta.get("data_files", {}), Path(run_dir) / "run.json")
    return config, prepare_saved(config, meta), meta


def load_model(
    config: Config, in_dim: int, run_dir: Path, name: str, algo: str | None = None
) -> torch.nn.Module:
    """Checkpoint ``name`` of the run: the base model, or with ``algo`` the learner wrapping it."""
    tensors, _ = load_checkpoint(run_dir, name)
    if algo is None:
        model = build_model(config, in_dim)
        model.load_state_dict(tensors)
        return model
    learner = build_learner(algo, build_model(config, in_dim), config.meta)
    learner.load_state_dict(tensors)
    return learner


def episode_sets(
    config: Config, prep: Prepared, part: str, shots: int, n_episodes: int, seed: int, device: torch.device
) -> dict:
    """Episodes of the ``part`` ("val" or "test") families against the benign slice of the same name."""
    ec = config.evaluate
    return build_episode_sets(
        prep.X,
        prep.family,
        getattr(prep.split, part),
        prep.benign[part],
        shots=shots,
        n_episodes=n_episodes,
        attack_queries=ec.attack_queries,
        benign_queries=ec.benign_queries,
        seed=seed,
        device=device,
    )


def novelty_rows(config: Config, prep: Prepared, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour index, reference rows) float32 of ``evaluate.novelty``: the benign TRAINING slice, less
    ``n`` (``reference_rows``) rows drawn with the run's seed, on which the blend's parts are scaled.
    ``evaluate`` scores with these and ``adapt`` deploys these."""
    benign = prep.replay_pool().astype(np.float32)
    if n >= len(benign):
        raise ValueError(
            f"evaluate.novelty.reference_rows = {n}, but the benign training slice has {len(benign)} rows"
        )
    pick = np.zeros(len(benign), dtype=bool)
    pick[np.random.default_rng(config.seed + 7).choice(len(benign), n, replace=False)] = True
    return benign[~pick], benign[pick]


def novelty_table(config: Config, prep: Prepared) -> tuple[NoveltyTable, torch.Tensor]:
    """(distances of every row an evaluation episode can query and of the reference rows, reference rows)
    for ``evaluate.novelty``: queries come from the val and test families and benign slices only."""
    if config.evaluate.novelty is None:
        raise ValueError("novelty_table needs a config with evaluate.novelty")
    index, reference = novelty_rows(config, prep, config.evaluate.novelty.reference_rows)
    queried = np.isin(prep.family, [*prep.split.val, *prep.split.test])
    queried[prep.benign["val"]] = queried[prep.benign["test"]] = True
    rows = np.concatenate([prep.X[queried].astype(np.float32), reference])
    return NoveltyTable(rows, index, config.evaluate.novelty.ks), torch.from_numpy(reference)


def tuning_episode_sets(config: Config, prep: Prepared, shots: int, device: torch.device) -> dict:
    """The meta-val episodes every hyper-parameter and the best methods are chosen on, at ``shots``."""
    return episode_sets(config, prep, "val", shots, config.evaluate.tune_episodes, config.seed + 11, device)


def held_out_episode_sets(
    config: Config, prep: Prepared, shots: int, n_episodes: int, device: torch.device
) -> dict:
    """The meta-test episodes of a run at ``shots``: held-out families against the benign test slice.

    Every method that reports on a run's test families (``evaluate``, ``attack``) scores these same episodes.
    """
    return episode_sets(config, prep, "test", shots, n_episodes, config.seed, device)
