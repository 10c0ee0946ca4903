"""``--device auto|cpu|cuda`` resolution."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")
"""The values ``--device`` and a config's ``device`` take."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        # A ValueError, so the CLI reports it in one line: the user asked for something this machine lacks.
        raise ValueError(
            "device cuda was asked for, but torch.cuda.is_available() is False (a CPU build of torch, or "
            "no GPU): use --device auto or cpu"
        )
    if name not in DEVICES:
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)
