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
import torch
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


# --------------------------------------------------------------------------- output kinds


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A run folder R = exp/ped2/R: R/checkpoint.pth (an untrained tiny network, by the
    project's writer), R/model.pth and R/keys.pt (its weights and items, as train.py saves
    them), R/config.json."""
    from common.files import save_torch, write_text
    from model import LGNNet, init_memory_items

    torch.manual_seed(0)
    network = LGNNet(t_length=2, msize=4, fdim=64, mdim=64)
    items = init_memory_items(4, 64, generator=torch.Generator().manual_seed(1))
    run = tmp_path / "exp" / "ped2" / "R"
    saved = checkpoint_format.build(network, items, (16, 24), epoch=1, args={"h": 16, "w": 24})
    checkpoint_format.write(saved, run / "checkpoint.pth")
    save_torch(saved["model"], run / "model.pth")
    save_torch(saved["items"], run / "keys.pt")
    write_text(run / "config.json", '{"h": 16}')
    return run


def test_a_report_may_not_replace_the_run_s_weights(run_folder: Path, tiny_dataset: Path) -> None:
    """evaluate.py --checkpoint R/checkpoint.pth --report R/model.pth: model.pth is no input
    of the run, but it is not a JSON report either."""
    before = tree_digest(run_folder)
    argv = ["--dataset_type", "ped2", "--dataset_path", tiny_dataset, "--precision", "fp32"]
    argv += ["--checkpoint", run_folder / "checkpoint.pth", "--report", run_folder / "model.pth"]
    message = one_line_error(evaluate.main, evaluate.get_args_parser().parse_args(map(str, argv)))
    assert message.startswith(f"--report {run_folder / 'model.pth'} exists and is a torch.save")
    assert "not a JSON file" in message
    for flag, name in (("--scores", "config.json"), ("--csv", "keys.pt")):
        argv[-2:] = [flag, run_folder / name]
        message = one_line_error(
            evaluate.main, evaluate.get_args_parser().parse_args(map(str, argv))
        )
        assert message.startswith(f"{flag} {run_folder / name} exists") and "not a CSV" in message
    (run_folder / "plots").mkdir()
    (run_folder / "plots" / "roc.png").write_text("{}")  # named like a plot, but JSON
    argv[-2:] = ["--plot_dir", run_folder / "plots"]
    message = one_line_error(evaluate.main, evaluate.get_args_parser().parse_args(map(str, argv)))
    assert "roc.png exists and is a JSON file, not a PNG image" in message
    (run_folder / "plots" / "roc.png").unlink()
    assert tree_digest(run_folder) == before


def test_detect_export_and_train_replace_only_files_of_their_kind(
    run_folder: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    (run_folder / "clip.mp4").write_text('{"named": "like a video"}')
    before = tree_digest(run_folder)
    checkpoint, weights = run_folder / "checkpoint.pth", run_folder / "model.pth"
    frames = tiny_dataset / "ped2" / "testing" / "frames" / "01"
    for flag, target, kind in (
        ("--video_out", run_folder / "clip.mp4", "a video"),
        ("--events", run_folder / "keys.pt", "a JSON file"),
        ("--report", weights, "a JSON file"),
        ("--scores", run_folder / "config.json", "a CSV table"),
    ):
        argv = ["--checkpoint", checkpoint, "--input", frames, flag, target]
        message = one_line_error(detect.main, detect_args(*argv))
        assert message.startswith(f"{flag} {target} exists and is ") and f"not {kind}" in message
    # A calibrated checkpoint replaces only a checkpoint of this project, not bare weights.
    argv = ["--calibrate", "--checkpoint", checkpoint, "--input", frames]
    message = one_line_error(detect.main, detect_args(*argv, "--output_checkpoint", weights))
    assert "is a torch.save file, not a checkpoint written by this project" in message

    assert pretrained.main(["export", str(checkpoint), str(run_folder / "config.json")]) == 2
    assert "output " in capsys.readouterr().err
    assert tree_digest(run_folder) == before

    # train.py --overwrite replaces a run's files, but not a file that is no run file.
    (run_folder / "model.pth").write_text("my notes")
    argv = ["--dataset_type", "ped2", "--dataset_path", str(tiny_dataset), *TINY_TRAIN_FLAGS]
    argv += ["--output_root", str(run_folder.parents[1]), "--exp_dir", "R", "--overwrite"]
    message = one_line_error(train.main, train.get_args_parser().parse_args(argv))
    assert "model.pth exists and is a text file, not a torch.save file" in message
    assert (run_folder / "model.pth").read_text() == "my notes"


def _sample_files(folder: Path) -> dict[str, Path]:
    """One file of every kind, written the way this project writes it (or the world does)."""
    from common.files import save_torch

    folder.mkdir()
    files = {name: folder / name for name in
             ("report.json", "log.jsonl", "scores.csv", "plot.png", "video.mp4", "ck.pth",
              "weights.pth", "notes.txt", "frame.jpg", "labels.npy", "archive.zip")}  # fmt: skip
    files["report.json"].write_text('{"auc": 0.9,\n "videos": [1, 2]}\n')
    files["log.jsonl"].write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')  # torn by a crash
    files["scores.csv"].write_text("video,frame,psnr\n01,4,30.5\n")
    image = np.zeros((8, 8, 3), np.uint8)
    assert cv2.imwrite(str(files["plot.png"]), image)
    assert cv2.imwrite(str(files["frame.jpg"]), image)
    writer = cv2.VideoWriter(str(files["video.mp4"]), cv2.VideoWriter_fourcc(*"mp4v"), 5, (8, 8))
    writer.write(image)
    writer.release()
    build = checkpoint_format.build
    from model import LGNNet, init_memory_items

    network = LGNNet(t_length=2, msize=4, fdim=64, mdim=64)
    checkpoint_format.write(build(network, init_memory_items(4, 64), (16, 24)), files["ck.pth"])
    save_torch(network.state_dict(), files["weights.pth"])
    files["notes.txt"].write_text("just some words\n")
    np.save(files["labels.npy"], np.zeros(4))
    shutil.make_archive(str(folder / "archive"), "zip", root_dir=folder, base_dir="notes.txt")
    return files


def test_each_kind_replaces_only_its_own_kind(tmp_path: Path) -> None:
    from common.outputs import KIND_NAMES, check_replaceable, file_kind

    files = _sample_files(tmp_path / "files")
    found = {name: file_kind(path) for name, path in files.items()}
    assert found == {
        "report.json": "json", "log.jsonl": "jsonl", "scores.csv": "csv", "plot.png": "png",
        "video.mp4": "video", "ck.pth": "checkpoint", "weights.pth": "torch",
        "notes.txt": "text", "frame.jpg": "jpeg", "labels.npy": "npy", "archive.zip": "zip",
    }  # fmt: skip
    # By content, not by name: the same bytes under another name are the same kind.
    shutil.copy(files["report.json"], tmp_path / "report.png")
    assert file_kind(tmp_path / "report.png") == "json"
    allowed = {  # by hand: which existing files each output kind may replace
        "json": {"report.json"},
        "jsonl": {"report.json", "log.jsonl"},
        "csv": {"scores.csv"},
        "png": {"plot.png"},
        "video": {"video.mp4"},
        "checkpoint": {"ck.pth"},
        "torch": {"ck.pth", "weights.pth"},
    }
    assert set(allowed) == set(KIND_NAMES)
    for kind, names in allowed.items():
        for name, path in files.items():
            if name in names:
                check_replaceable("--out", path, kind)
            else:
                with pytest.raises(InputError, match=f"--out {path} exists and is") as info:
                    check_replaceable("--out", path, kind)
                assert KIND_NAMES[kind] in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "empty").touch()  # an empty file holds nothing to lose
    for kind in KIND_NAMES:
        check_replaceable("--out", tmp_path / "empty", kind)
        check_replaceable("--out", tmp_path / "missing", kind)
