"""N-way K-shot classification of held-out families (no benign class), e.g. Drebin or Mal-API malware."""

from metashield.classify.config import ClassifyConfig, SequenceModelConfig, load_classify_config
from metashield.classify.prepare import ClassifyData, build_model, fold_split, prepare_families
from metashield.classify.report import pool_folds
from metashield.classify.run import classify_run, episode_set, evaluate_shots, run_fold

__all__ = [
    "ClassifyConfig",
    "ClassifyData",
    "SequenceModelConfig",
    "build_model",
    "classify_run",
    "episode_set",
    "evaluate_shots",
    "fold_split",
    "load_classify_config",
    "pool_folds",
    "prepare_families",
    "run_fold",
]
