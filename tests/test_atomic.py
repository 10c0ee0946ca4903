"""Atomic writes never leave a half-written file, and never replace something that is not a regular file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from metashield._atomic import atomic_write, atomic_write_json, check_file_name
from metashield.robustness import attack_run
from metashield.workflow import evaluate_run


def test_a_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_json(target, {"v": 1})

    def broken(tmp: Path) -> None:
        tmp.write_text('{"v": 2, "trunc')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_a_special_file_is_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        atomic_write_json(fifo, {"v": 1})
    assert fifo.exists() and not fifo.is_file()


@pytest.mark.parametrize("bad", ["", ".", "..", "/dev/null", "../attack.json", "sub/attack.json", "a\\b"])
def test_out_names_must_stay_inside_the_run(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        check_file_name(bad, "out_name")
    # Checked before the run is even read, so nothing outside the run can be touched.
    with pytest.raises(ValueError, match="plain file name"):
        attack_run(tmp_path / "missing", out_name=bad)
    with pytest.raises(ValueError, match="plain file name"):
        evaluate_run(tmp_path / "missing", out_name=bad)
    check_file_name("attack_edits.json", "out_name")
