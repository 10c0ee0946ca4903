import pytest
import torch

from metashield import checkpoint
from metashield.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint


def test_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    tensors = {"w": torch.randn(3, 4, dtype=torch.float64), "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path, "m", tensors, {"step": 3, "families": ["a", "b"]})
    loaded, meta = load_checkpoint(tmp_path, "m")
    assert torch.equal(loaded["w"], tensors["w"]) and loaded["w"].dtype == torch.float64
    assert torch.equal(loaded["rng"], tensors["rng"])
    assert meta["step"] == 3 and meta["families"] == ["a", "b"]
    assert meta["versions"]["torch"] == torch.__version__


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, "m", {"w": torch.zeros(2)}, {"step": 1})

    def broken_save(tensors, path):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, "m", {"w": torch.ones(2)}, {"step": 2})
    loaded, meta = load_checkpoint(tmp_path, "m")
    assert torch.equal(loaded["w"], torch.zeros(2)) and meta["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_missing_file_is_reported_by_path(tmp_path):
    assert not has_checkpoint(tmp_path, "nope")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_checkpoint(tmp_path, "nope")
