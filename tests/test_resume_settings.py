"""``train.py --resume`` continues the run as it was saved: the flags not given come from its
checkpoint, a given flag that would make it another run is refused naming the saved value, and
one that may change is applied and said (all through train.py's own parser and main)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, one_line_error, stop_training_after, train_tiny

import train
from common import cli

# Two steps an epoch on the tiny dataset's 41 windows: few steps keep these runs short.
BATCH = ["--batch_size", "20"]


@pytest.fixture(scope="module")
def finished_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch (two-step) run of the tiny network, by train.py."""
    return train_tiny(tiny_dataset, tmp_path_factory.mktemp("exp"), "--epochs", "1", *BATCH)


def copy_run(run_dir: Path, output_root: Path) -> Path:
    """A copy of a finished run under ``<output_root>/ped2/log``; returns that folder."""
    target = output_root / "ped2" / "log"
    shutil.copytree(run_dir, target)
    return target


def resume(dataset_root: Path, output_root: Path, *flags: str) -> Path:
    """``train.py --dataset_path D --output_root O --resume FLAGS``, nothing else given."""
    argv = ["--dataset_path", str(dataset_root), "--output_root", str(output_root), "--resume"]
    return train.main(train.parse_args([*argv, *flags]))


def saved(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pth", weights_only=True, map_location="cpu")


def test_a_stopped_run_resumed_with_a_bare_resume_finishes_as_if_never_stopped(
    tiny_dataset: Path, finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case: a 16x24 run stopped mid-epoch, resumed with only the paths and
    --resume, ends equal to the uninterrupted run (not restarted at 256x256, 60 epochs)."""
    stop_training_after(monkeypatch, 1, "SIGINT")
    with pytest.raises(SystemExit):
        train_tiny(tiny_dataset, tmp_path, "--epochs", "1", *BATCH)
    monkeypatch.undo()
    run_dir = tmp_path / "ped2" / "log"
    config_before = json.loads((run_dir / "config.json").read_text())

    assert resume(tiny_dataset, tmp_path, "--num_workers", "0") == run_dir
    after, straight = saved(run_dir), saved(finished_run)
    assert (after["epoch"], after["step"]) == (1, 0)
    assert after["frame_size"] == [16, 24] and after["model_args"] == straight["model_args"]
    for name, tensor in straight["model"].items():
        assert torch.allclose(tensor.float(), after["model"][name].float(), atol=1e-6), name
    assert torch.allclose(straight["items"], after["items"], atol=1e-6)
    # config.json keeps the run's settings, not the parser's defaults.
    config_after = json.loads((run_dir / "config.json").read_text())
    assert config_after.pop("resume") == "auto" and config_before.pop("resume") is None
    assert config_after == config_before


@pytest.mark.parametrize(
    ("flags", "asked", "kept"),
    [
        (["--h", "32", "--w", "48"], "--h 32, --w 48", "--h 16, --w 24"),
        (["--msize", "5"], "--msize 5", "--msize 4"),
        (["--t_length", "3"], "--t_length 3", "--t_length 2"),
        (["--batch_size", "3"], "--batch_size 3", "--batch_size 20"),
        (["--seed", "1"], "--seed 1", "--seed 0"),
        (["--lr", "1e-3"], "--lr 0.001", "--lr 0.0002"),
    ],
)
def test_a_flag_that_would_make_another_run_is_refused_naming_the_saved_value(
    tiny_dataset: Path, finished_run: Path, tmp_path: Path, flags: list, asked: str, kept: str
) -> None:
    run_dir = copy_run(finished_run, tmp_path)
    before = (run_dir / "checkpoint.pth").stat().st_mtime_ns
    message = one_line_error(resume, tiny_dataset, tmp_path, "--epochs", "2", *flags)
    assert f"with {asked}: the run has {kept}" in message and str(run_dir) in message
    assert (run_dir / "checkpoint.pth").stat().st_mtime_ns == before


def test_another_data_set_is_refused_for_a_named_checkpoint(
    tiny_dataset: Path, finished_run: Path, tmp_path: Path
) -> None:
    checkpoint = finished_run / "checkpoint.pth"
    argv = ["--dataset_path", str(tiny_dataset), "--output_root", str(tmp_path)]
    argv += ["--epochs", "2", "--resume", str(checkpoint), "--dataset_type", "avenue"]
    message = one_line_error(train.main, train.parse_args(argv))
    assert "--dataset_type avenue: the run has --dataset_type ped2" in message
    assert not (tmp_path / "avenue").exists()


def test_a_flag_that_may_change_is_applied_and_said(
    tiny_dataset: Path, finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = copy_run(finished_run, tmp_path)
    resume(tiny_dataset, tmp_path, "--epochs", "2", "--loss_compact", "1", "--num_workers", "0")
    lines = capsys.readouterr().err.splitlines()
    said = [line for line in lines if line.startswith("resuming ") and " with " in line]
    assert said == [
        f"resuming {run_dir / 'checkpoint.pth'} with --epochs 2 (the run had --epochs 1), "
        "--loss_compact 1.0 (the run had --loss_compact 10.0)"
    ]
    config = json.loads((run_dir / "config.json").read_text())
    expected = dict(zip(TINY_TRAIN_FLAGS[::2], TINY_TRAIN_FLAGS[1::2], strict=True))
    assert {f"--{key}": str(config[key]) for key in ("h", "w", "msize", "t_length")} == {
        key: expected[key] for key in ("--h", "--w", "--msize", "--t_length")
    }
    assert config["batch_size"] == 20
    assert (config["epochs"], config["loss_compact"], config["precision"]) == (2, 1.0, "fp32")
    assert saved(run_dir)["epoch"] == 2


def test_a_named_configuration_does_not_replace_a_resumed_run_s_settings(
    tiny_dataset: Path, finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--config demo`` (demo data, 32x48) beside --resume: the run stays ped2 at 16x24,
    found under ped2/ although the configuration names another data set, and says so."""
    run_dir = copy_run(finished_run, tmp_path)
    resume(tiny_dataset, tmp_path, "--config", "demo", "--epochs", "2")
    assert "--config demo ignored" in capsys.readouterr().err
    assert saved(run_dir)["frame_size"] == [16, 24] and saved(run_dir)["epoch"] == 2
    assert not (tmp_path / "demo").exists()


def test_the_parser_records_the_flags_given_whatever_the_defaults() -> None:
    """Given = typed (abbreviations too), including a value equal to the default; a named
    configuration's values are defaults, not given."""
    args = train.parse_args(["--config", "demo", "--h", "256", "--epoch", "3", "--seed", "0"])
    assert cli.given_flags(args) == {"config", "h", "epochs", "seed"}
    assert (args.h, args.w, args.epochs, args.dataset_type) == (256, 48, 3, "demo")
    assert cli.given_flags(train.parse_args([])) == set()
