"""No output may land on an input: every command line and ``python -m`` entry point refuses,
before any work and in one line naming both flags, an output file that is an input (or
lies inside an input folder) and an output folder that is, contains or lies inside an input;
symbolic links, hard links and relative paths included. The inputs stay byte for byte."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TINY_TRAIN_FLAGS, one_line_error

import detect
import evaluate
import model.pretrained as pretrained
import train
from common.errors import InputError
from common.outputs import check_outputs
from data import prepare
from inference.calibration import calibration_from_scores
from model import checkpoint as checkpoint_format


def tree_digest(*roots: Path) -> str:
    """A hash of every file's path and bytes under ``roots`` (files or folders)."""
    digest = hashlib.sha256()
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def inputs(tmp_path: Path, tiny_dataset: Path, checkpoint: Path) -> dict[str, Path]:
    """Private copies a test may try to overwrite: the dataset root, a calibrated
    checkpoint beside it, a video file and a frame folder of footage."""
    root = tmp_path / "V"
    shutil.copytree(tiny_dataset, root)
    calibrated = checkpoint_format.with_calibration(
        checkpoint_format.read(checkpoint),
        calibration_from_scores(np.linspace(20, 22, 100), np.linspace(0.1, 0.2, 100)),
    )
    checkpoint_format.write(calibrated, root / "ck.pth")
    np.save(root / "ped2" / "frame_labels_ped2.npy", np.zeros(10, np.int64))
    frames = root / "ped2" / "testing" / "frames" / "01"
    video = tmp_path / "in.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (48, 32))
    for path in sorted(frames.iterdir())[:6]:
        writer.write(cv2.imread(str(path)))
    writer.release()
    return {"root": root, "checkpoint": root / "ck.pth", "frames": frames, "video": video}


def eval_args(inputs: dict[str, Path], *extra: object):
    argv = ["--dataset_type", "ped2", "--dataset_path", inputs["root"], "--precision", "fp32"]
    argv += ["--checkpoint", inputs["checkpoint"], *extra]
    return evaluate.get_args_parser().parse_args([str(a) for a in argv])


def detect_args(*argv: object):
    return detect.get_args_parser().parse_args([str(a) for a in argv])


def test_evaluate_refuses_outputs_over_its_inputs(inputs: dict[str, Path], tmp_path: Path) -> None:
    before = tree_digest(inputs["root"])
    ped2, checkpoint = inputs["root"] / "ped2", inputs["checkpoint"]
    cases = [
        (["--scores", checkpoint], "--scores", "--checkpoint"),
        (["--report", ped2 / "frame_labels_ped2.npy"], "--report", "--dataset_path"),
        (["--plot_dir", inputs["frames"]], "--plot_dir", "--dataset_path"),
        (["--cache_dir", ped2 / "testing" / "frames"], "--cache_dir", "--dataset_path"),
        (["--plot_dir", inputs["root"]], "--plot_dir", "--checkpoint"),  # contains inputs
        (["--label_path", tmp_path / "l.npy", "--report", tmp_path / "l.npy"], "--report",
         "--label_path"),
    ]  # fmt: skip
    np.save(tmp_path / "l.npy", np.zeros(10, np.int64))
    for extra, output_flag, input_flag in cases:
        message = one_line_error(evaluate.main, eval_args(inputs, *extra))
        assert output_flag in message and input_flag in message, message
    assert tree_digest(inputs["root"]) == before  # nothing changed, nothing added


def test_links_and_relative_paths_name_the_same_file(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree_digest(inputs["root"])
    (tmp_path / "link.pth").symlink_to(inputs["checkpoint"])
    os.link(inputs["checkpoint"], tmp_path / "hard.pth")
    monkeypatch.chdir(inputs["root"] / "ped2")
    for output in (tmp_path / "link.pth", tmp_path / "hard.pth", "../ck.pth", "testing/x.csv"):
        message = one_line_error(evaluate.main, eval_args(inputs, "--scores", output))
        assert "--scores" in message
    assert tree_digest(inputs["root"]) == before


def test_detect_refuses_outputs_over_footage_checkpoint_and_labels(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    before = tree_digest(inputs["root"], inputs["video"])
    checkpoint, video, frames = inputs["checkpoint"], inputs["video"], inputs["frames"]
    for flag, target, input_flag in (
        ("--video_out", video, "--input"),
        ("--csv", checkpoint, "--checkpoint"),
        ("--scores", video, "--input"),
        ("--events", checkpoint, "--checkpoint"),
        ("--report", frames / "000.jpg", "--input"),
    ):
        argv = ["--checkpoint", checkpoint, "--input", frames if flag == "--report" else video]
        message = one_line_error(detect.main, detect_args(*argv, flag, target))
        assert flag in message and input_flag in message, message
    labels = inputs["root"] / "ped2" / "frame_labels_ped2.npy"
    argv = ["--checkpoint", checkpoint, "--dataset", inputs["root"] / "ped2"]
    message = one_line_error(
        detect.main, detect_args(*argv, "--label_path", labels, "--events", labels)
    )
    assert "--events" in message and "--label_path" in message
    # Calibration must not write its checkpoint into the footage it calibrates on.
    argv = ["--calibrate", "--checkpoint", checkpoint, "--input", frames]
    message = one_line_error(
        detect.main, detect_args(*argv, "--output_checkpoint", frames / "005.png")
    )
    assert "--output_checkpoint" in message and "--input" in message
    assert tree_digest(inputs["root"], inputs["video"]) == before


def test_train_refuses_run_and_cache_folders_inside_its_dataset(inputs: dict[str, Path]) -> None:
    before = tree_digest(inputs["root"])
    base = ["--dataset_type", "ped2", "--dataset_path", str(inputs["root"]), *TINY_TRAIN_FLAGS]
    for extra, flag in (
        (["--output_root", str(inputs["root"] / "ped2" / "testing")], "--output_root"),
        (["--cache_dir", str(inputs["root"] / "ped2" / "training" / "frames")], "--cache_dir"),
    ):
        message = one_line_error(train.main, train.get_args_parser().parse_args([*base, *extra]))
        assert flag in message and "--dataset_path" in message
    assert tree_digest(inputs["root"]) == before


def test_export_refuses_to_replace_the_checkpoint_it_reads(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    checkpoint = inputs["checkpoint"]
    before = tree_digest(checkpoint)
    assert pretrained.main(["export", str(checkpoint), str(checkpoint)]) == 2
    assert "output" in capsys.readouterr().err
    assert tree_digest(checkpoint) == before


def test_prepare_refuses_a_source_its_data_set_folder_would_replace(tmp_path: Path) -> None:
    source = tmp_path / "datasets" / "ped2" / "UCSD_Anomaly_Dataset.v1p2"
    source.mkdir(parents=True)
    with pytest.raises(InputError, match="--source .* lies inside .*--root"):
        prepare.prepare("ped2", tmp_path / "datasets", [source], progress=False)
    assert source.is_dir()


def test_the_shared_check_by_itself(tmp_path: Path) -> None:
    folder, file = tmp_path / "in", tmp_path / "in" / "a.pth"
    folder.mkdir()
    file.write_bytes(b"x")
    check_outputs({"--out": tmp_path / "out.csv"}, {"--plots": tmp_path / "p"}, {"--in": folder})
    for files, folders, relation in (
        ({"--out": file}, {}, " is "),
        ({"--out": folder / "b.csv"}, {}, "lies inside"),
        ({}, {"--plots": tmp_path}, "lies inside"),  # the output folder contains the input
        ({}, {"--plots": folder / "sub"}, "lies inside"),
    ):
        with pytest.raises(InputError, match=relation):
            check_outputs(files, folders, {"--in": folder, "--ck": file})
    assert not (folder / "sub").exists()
