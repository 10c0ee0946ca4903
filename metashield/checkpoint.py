"""Checkpoints: safetensors tensors + JSON metadata, both written atomically.

A security tool must never unpickle a file it did not write, so nothing here uses pickle or ``torch.load``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from metashield import __version__
from metashield._atomic import atomic_write, atomic_write_json


def versions() -> dict[str, str]:
    import numpy
    import sklearn

    return {
        "metashield": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(
    directory: str | Path, name: str, tensors: dict[str, torch.Tensor], metadata: dict
) -> None:
    """Write ``<name>.safetensors`` then ``<name>.json``; the JSON is written last so its presence means both
    files are complete."""
    directory = Path(directory)
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(directory / f"{name}.safetensors", lambda p: save_file(flat, str(p)))
    atomic_write_json(directory / f"{name}.json", {**metadata, "versions": versions()})


def load_checkpoint(directory: str | Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    directory = Path(directory)
    meta_path = directory / f"{name}.json"
    weights_path = directory / f"{name}.safetensors"
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file missing: {path}")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path}: not valid JSON ({exc})") from None
    return load_file(str(weights_path)), metadata


def has_checkpoint(directory: str | Path, name: str) -> bool:
    directory = Path(directory)
    return (directory / f"{name}.json").is_file() and (directory / f"{name}.safetensors").is_file()
