from __future__ import annotations

import pytest
from conftest import shared_data

from metashield.cli import main


def test_data_list_names_the_cache_and_datasets(data_home, capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert str(data_home) in out and "nsl-kdd" in out


def test_data_download_fetches_through_the_mirror(data_home, monkeypatch, capsys):
    monkeypatch.setenv("METASHIELD_MIRROR", f"file://{shared_data()}")
    assert main(["data", "download", "nsl-kdd"]) == 0
    assert (data_home / "nsl-kdd" / "NSL_KDD.zip").is_file()
    assert str(data_home / "nsl-kdd") in capsys.readouterr().out


def test_unknown_dataset_is_a_clear_error(data_home, capsys):
    assert main(["data", "download", "no-such-set"]) == 2
    err = capsys.readouterr().err
    assert "no-such-set" in err and "nsl-kdd" in err


def test_evaluate_without_a_run_directory_says_what_is_missing(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "nope")]) == 2
    assert "run.json" in capsys.readouterr().err


def test_demo_names_the_datasets_it_supports(capsys):
    assert main(["demo", "--dataset", "cic-ids2017"]) == 2
    err = capsys.readouterr().err
    assert "demo runs on" in err and "spambase" in err and "creditcard" in err and "mal-api" in err


def test_family_classification_demo_refuses_detection_overrides(capsys):
    assert main(["demo", "--dataset", "mal-api", "--set", "train.steps=5"]) == 2
    assert "--set does not apply to the mal-api demo" in capsys.readouterr().err


def test_compile_flag_sets_the_attack_engines_default(data_home, monkeypatch):
    from metashield.attacks import state

    monkeypatch.setattr(state, "_compile_default", False)
    assert main(["--compile", "data", "list"]) == 0
    assert state.compile_default() is True
    assert main(["data", "list"]) == 0
    assert state.compile_default() is False


def test_compile_without_a_cpp_compiler_is_a_clear_error(data_home, monkeypatch, capsys):
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert main(["--compile", "data", "list"]) == 2
    assert "needs a C++ compiler" in capsys.readouterr().err


def test_compile_without_the_python_headers_is_a_clear_error(data_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sysconfig.get_paths", lambda: {"include": str(tmp_path)})
    assert main(["--compile", "data", "list"]) == 2
    assert "no Python headers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["attack", "--run", "r", "--attack", "support", "--fraction", "1.5"],
            "--fraction: must be in (0, 1]",
        ),
        (["attack", "--run", "r", "--attack", "support", "--fraction", "0"], "--fraction: must be in (0, 1]"),
        (["attack", "--run", "r", "--shots", "0"], "--shots: must be >= 1, got 0"),
        (["attack", "--run", "r", "--attacker-benign", "-1"], "--attacker-benign: must be >= 0, got -1"),
        (["evaluate", "--run", "r", "--shots", "1,0"], "--shots: must be >= 1, got 0"),
        (["evaluate", "--run", "r", "--shots", ","], "--shots: expected comma-separated integers >= 1"),
        (["evaluate", "--run", "r", "--episodes", "x"], "--episodes: expected an integer, got 'x'"),
        (["--threads", "0", "data", "list"], "--threads: must be >= 1, got 0"),
        (["attack", "--run", "r", "--eps", "0.1,-1"], "--eps: budgets must be finite numbers >= 0"),
        (["attack", "--run", "r", "--eps", "nan"], "--eps: budgets must be finite numbers >= 0"),
        (["attack", "--run", "r", "--eps", "0.1,x"], "--eps: expected comma-separated numbers"),
        (
            ["attack", "--run", "r", "--attack", "support", "--optimiser", "mimicry"],
            "--optimiser: invalid choice: 'mimicry'",
        ),
    ],
)
def test_bad_option_values_are_refused_before_any_work(argv, message, tmp_path, capsys):
    # The run directory does not exist: the value must be refused before it is looked for.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "run.json" not in err


def test_version_returns_zero(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("metashield ")


def test_cuda_on_a_machine_without_it_is_a_clear_error(monkeypatch):
    import torch

    from metashield.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="use --device auto or cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda, got 'tpu'"):
        resolve_device("tpu")
