"""Family splits and few-shot tasks over preprocessed numpy arrays (no torch outside ``Batch.to_torch``)."""

from metashield.tasks.episodes import (
    Batch,
    DetectEpisode,
    EpisodeSampler,
    TorchBatch,
    make_detect_episodes,
    stack_episodes,
)
from metashield.tasks.splits import FamilySplit, drop_conflicting_rows, split_benign, split_families

__all__ = [
    "Batch",
    "DetectEpisode",
    "EpisodeSampler",
    "FamilySplit",
    "TorchBatch",
    "drop_conflicting_rows",
    "make_detect_episodes",
    "split_benign",
    "split_families",
    "stack_episodes",
]
