"""Bad input, interrupted runs and damaged files.

Every problem a user can cause must end the run with one line that names the culprit (file,
folder, flag, checkpoint entry) and the fix, never a traceback; an interrupted or failed run
must leave the previous results readable. Download failures (checksum mismatch, dropped
connection) are covered in test_download.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_FLAGS, TINY_TRAIN_FLAGS, one_line_error

import evaluate
import train
import training.loop
import training.run_state
from common.cli import run_cli
from common.errors import InputError
from common.files import atomic_write
from data.labels import write_ano_pred_mat
from inference.benchmark import write_scores_csv
from model import LGNNet
from model.weights import load_model_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
# The smallest network train.py builds: one input frame (t_length 2), 64-dim memory.
# The shared run's network (tests/conftest.py), which trains and scores on these videos too.
MODEL_FLAGS, TRAIN_FLAGS = TINY_MODEL_FLAGS, TINY_TRAIN_FLAGS
FRAMES_PER_VIDEO = 8
# A run folder's temporary files from utils.atomic_write: ".<name>.<random>.tmp".
TEMP_FILE = re.compile(r"^\..+\.tmp$")


def write_video(folder: Path, num_frames: int = FRAMES_PER_VIDEO) -> None:
    """A bright square sliding over a grey 16x24 background, as PNG frames 000.png, ..."""
    folder.mkdir(parents=True)
    for index in range(num_frames):
        frame = np.full((16, 24, 3), 60, np.uint8)
        frame[4:10, 2 * index : 2 * index + 6] = 220
        cv2.imwrite(str(folder / f"{index:03d}.png"), frame)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/ped2``: one training video, two test videos with ano_pred labels."""
    root = tmp_path_factory.mktemp("data")
    dataset = root / "ped2"
    write_video(dataset / "training" / "frames" / "01")
    for name in ("01", "02"):
        write_video(dataset / "testing" / "frames" / name)
    abnormal = np.zeros(FRAMES_PER_VIDEO, np.int64)
    abnormal[4:] = 1
    write_ano_pred_mat(dataset / "ped2.mat", [np.zeros(FRAMES_PER_VIDEO, np.int64), abnormal])
    return root


def copy_dataset(dataset_root: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset root that a test may damage."""
    shutil.copytree(dataset_root, tmp_path / "data")
    return tmp_path / "data"


def train_args(dataset_root: Path, output_root: Path, *extra: str):
    argv = ["--dataset_type", "ped2", "--dataset_path", str(dataset_root)]
    argv += ["--output_root", str(output_root), *TRAIN_FLAGS, *extra]
    return train.get_args_parser().parse_args(argv)


def model_for(args) -> LGNNet:
    """The network train.py builds for ``args``."""
    sizes = {"channels": args.c, "t_length": args.t_length, "msize": args.msize}
    return LGNNet(**sizes, fdim=args.fdim, mdim=args.mdim)


def eval_args(dataset_root: Path, *extra: str):
    argv = ["--dataset_type", "ped2", "--dataset_path", str(dataset_root), "--precision", "fp32"]
    return evaluate.get_args_parser().parse_args([*argv, *extra])


def input_error(main, args) -> str:
    """The message of the InputError that ``main(args)`` raises; it must be one line."""
    return one_line_error(main, args)


def link_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of a run folder under ``<tmp>/exp/ped2/log`` (big files hard-linked: training
    replaces files by rename, so the original stays untouched); returns the output root."""
    output_root = tmp_path / "exp"

    def link_or_copy(source: str, target: str) -> None:
        if source.endswith(".pth"):
            os.link(source, target)
        else:
            shutil.copy2(source, target)

    shutil.copytree(run_dir, output_root / "ped2" / "log", copy_function=link_or_copy)
    return output_root


# --------------------------------------------------------------------------- data


def test_missing_dataset_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    message = input_error(train.main, train_args(missing, tmp_path / "exp", "--epochs", "1"))
    assert str(missing / "ped2") in message and "--dataset_path" in message


def test_unwritable_demo_dataset_folder_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    args = train_args(blocker / "data", tmp_path / "exp", "--epochs", "1")
    args.dataset_type = "demo"
    message = input_error(train.main, args)
    assert str(blocker / "data") in message and "--dataset_path" in message


def test_missing_split_folder_names_the_expected_folder(
    dataset_root: Path, checkpoint: Path, tmp_path: Path
) -> None:
    root = copy_dataset(dataset_root, tmp_path)
    shutil.rmtree(root / "ped2" / "training")
    message = input_error(train.main, train_args(root, tmp_path / "exp", "--epochs", "1"))
    assert "'training'" in message and str(root / "ped2" / "training") in message

    shutil.rmtree(root / "ped2" / "testing")
    message = input_error(evaluate.main, eval_args(root, "--checkpoint", str(checkpoint)))
    assert "'testing'" in message and str(root / "ped2" / "testing") in message


def test_empty_video_folder_is_named(dataset_root: Path, tmp_path: Path) -> None:
    root = copy_dataset(dataset_root, tmp_path)
    empty = root / "ped2" / "training" / "frames" / "02"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a frame")
    message = input_error(train.main, train_args(root, tmp_path / "exp", "--epochs", "1"))
    assert str(empty) in message and "no image files" in message


def test_truncated_image_is_named(dataset_root: Path, tmp_path: Path) -> None:
    root = copy_dataset(dataset_root, tmp_path)
    frame = root / "ped2" / "training" / "frames" / "01" / "003.png"
    data = frame.read_bytes()
    frame.write_bytes(data[: len(data) // 2])
    message = input_error(train.main, train_args(root, tmp_path / "exp", "--epochs", "1"))
    assert str(frame) in message and "cannot read image" in message


# --------------------------------------------------------------------------- labels


def test_labels_that_do_not_match_the_frame_tree_name_file_and_counts(
    dataset_root: Path, checkpoint: Path, tmp_path: Path
) -> None:
    # Found automatically: ped2.mat written for three videos, the tree has two.
    root = copy_dataset(dataset_root, tmp_path)
    label_file = root / "ped2" / "ped2.mat"
    write_ano_pred_mat(label_file, [np.zeros(FRAMES_PER_VIDEO, np.int64)] * 3)
    message = input_error(evaluate.main, eval_args(root, "--checkpoint", str(checkpoint)))
    assert str(label_file) in message
    assert "3 videos" in message and "2 test videos" in message

    # Given: a concatenated .npy one frame short of the 2 x 8 test frames.
    short = tmp_path / "frame_labels_ped2.npy"
    np.save(short, np.zeros((1, 2 * FRAMES_PER_VIDEO - 1), np.int64))
    args = eval_args(dataset_root, "--checkpoint", str(checkpoint), "--label_path", str(short))
    message = input_error(evaluate.main, args)
    assert str(short) in message
    assert f"{2 * FRAMES_PER_VIDEO - 1} frame labels" in message
    assert f"{2 * FRAMES_PER_VIDEO} frames" in message


def test_unknown_label_format_is_named(
    dataset_root: Path, checkpoint: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("0 0 0 1 1\n")
    args = eval_args(dataset_root, "--checkpoint", str(checkpoint), "--label_path", str(labels))
    message = input_error(evaluate.main, args)
    assert f"unknown label format {labels}" in message and "supported:" in message


# --------------------------------------------------------------------------- weights


def test_missing_weight_files_are_named(dataset_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    message = input_error(evaluate.main, eval_args(dataset_root, "--checkpoint", str(missing)))
    assert str(missing) in message and "does not exist" in message

    args = eval_args(dataset_root, "--model_dir", str(missing), "--m_items_dir", str(missing))
    assert "--model_dir" in input_error(evaluate.main, args)

    args = train_args(dataset_root, tmp_path / "exp", "--epochs", "1", "--resume", str(missing))
    message = input_error(train.main, args)
    assert str(missing) in message and "--resume" in message


def test_checkpoint_whose_entries_do_not_fit_names_the_entry(
    dataset_root: Path, trained_run: Path, checkpoint: Path, tmp_path: Path
) -> None:
    saved = torch.load(checkpoint, weights_only=True)
    missing_key = "decoder.moduleDeconv1.6.bias"
    del saved["model"][missing_key]
    no_key = tmp_path / "no_key.pth"
    torch.save(saved, no_key)
    message = input_error(evaluate.main, eval_args(dataset_root, "--checkpoint", str(no_key)))
    assert str(no_key) in message and repr(missing_key) in message and "missing" in message

    # The reference layout: a bare state_dict with one convolution of the wrong kernel size.
    weights = torch.load(trained_run / "model.pth")
    bad_key = "pred.convlstm_list.0.conv_o.0.weight"
    assert weights[bad_key].shape == (128, 256, 3, 3)
    weights[bad_key] = torch.zeros(128, 256, 1, 1)
    bad_shape = tmp_path / "model.pth"
    torch.save(weights, bad_shape)
    args = eval_args(
        dataset_root, *MODEL_FLAGS[:4], "--model_dir", str(bad_shape),
        "--m_items_dir", str(trained_run / "keys.pt"),
    )  # fmt: skip
    message = input_error(evaluate.main, args)
    assert str(bad_shape) in message and repr(bad_key) in message
    assert "(128, 256, 1, 1)" in message and "(128, 256, 3, 3)" in message


def test_memory_items_that_do_not_fit_name_file_and_shapes(
    dataset_root: Path, trained_run: Path, tmp_path: Path
) -> None:
    weights = ["--model_dir", str(trained_run / "model.pth")]
    # Items of another dimension than the network's 64-dim queries.
    narrow = tmp_path / "narrow_keys.pt"
    torch.save(torch.nn.functional.normalize(torch.rand(4, 32), dim=1), narrow)
    args = eval_args(dataset_root, *MODEL_FLAGS[:4], *weights, "--m_items_dir", str(narrow))
    message = input_error(evaluate.main, args)
    assert str(narrow) in message and "(4, 32)" in message and "(4, 64)" in message

    # The right items, but --msize asks for more of them.
    keys = trained_run / "keys.pt"
    args = eval_args(
        dataset_root, *MODEL_FLAGS[:4], *weights, "--m_items_dir", str(keys), "--msize", "6"
    )
    message = input_error(evaluate.main, args)
    assert str(keys) in message and "(4, 64)" in message and "(6, 64)" in message


def test_damaged_checkpoint_is_named(dataset_root: Path, trained_run: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "checkpoint.pth"
    with open(trained_run / "checkpoint.pth", "rb") as source:
        damaged.write_bytes(source.read(100_000))  # a copy cut short
    message = input_error(evaluate.main, eval_args(dataset_root, "--checkpoint", str(damaged)))
    assert str(damaged) in message and "cannot read" in message

    args = train_args(dataset_root, tmp_path / "exp", "--epochs", "2", "--resume", str(damaged))
    message = input_error(train.main, args)
    assert str(damaged) in message and "cannot read" in message

    # The run's own checkpoint, found by a bare --resume.
    own = tmp_path / "exp2" / "ped2" / "log" / "checkpoint.pth"
    own.parent.mkdir(parents=True)
    shutil.copy(damaged, own)
    message = input_error(train.main, train_args(dataset_root, tmp_path / "exp2", "--resume"))
    assert str(own) in message and "cannot read" in message

    # Weights in the reference layout, cut short.
    damaged_weights = tmp_path / "model.pth"
    with open(trained_run / "model.pth", "rb") as source:
        damaged_weights.write_bytes(source.read(100_000))
    args = eval_args(
        dataset_root, *MODEL_FLAGS[:4], "--model_dir", str(damaged_weights),
        "--m_items_dir", str(trained_run / "keys.pt"),
    )  # fmt: skip
    message = input_error(evaluate.main, args)
    assert str(damaged_weights) in message and "cannot read" in message


def test_resume_from_a_checkpoint_that_does_not_fit_names_file_and_entry(
    dataset_root: Path, trained_run: Path, tmp_path: Path
) -> None:
    output_root = link_run(trained_run, tmp_path)
    own = output_root / "ped2" / "log" / "checkpoint.pth"
    # Weights only (model.pth) instead of a resumable checkpoint.
    weights_only = str(trained_run / "model.pth")
    args = train_args(dataset_root, output_root, "--epochs", "2", "--resume", weights_only)
    message = input_error(train.main, args)
    assert weights_only in message and "'optimizer'" in message

    # Other sizes than the run's: refused, naming the run's (tests/test_resume_settings.py).
    args = train_args(dataset_root, output_root, "--epochs", "2", "--resume", "--msize", "5")
    message = input_error(train.main, args)
    assert str(own) in message and "--msize 5: the run has --msize 4" in message
    args = train_args(dataset_root, output_root, "--epochs", "2", "--resume", "--t_length", "3")
    message = input_error(train.main, args)
    assert str(own) in message and "--t_length 3: the run has --t_length 2" in message


# --------------------------------------------------------------------------- flags and outputs


def test_frame_size_must_be_a_multiple_of_8(
    dataset_root: Path, checkpoint: Path, tmp_path: Path
) -> None:
    args = train_args(dataset_root, tmp_path / "exp", "--epochs", "1", "--w", "20")
    assert "--w 20" in input_error(train.main, args)
    for height in ("12", "0"):
        args = eval_args(dataset_root, "--checkpoint", str(checkpoint), "--h", height)
        assert f"--h {height}" in input_error(evaluate.main, args)


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_lambda_outside_unit_interval(dataset_root: Path, checkpoint: Path, value: str) -> None:
    args = eval_args(dataset_root, "--checkpoint", str(checkpoint), "--lambda", value)
    assert f"--lambda {float(value)}" in input_error(evaluate.main, args)


def test_unwritable_output_is_named_before_any_work(dataset_root: Path, tmp_path: Path) -> None:
    # A path below a regular file cannot be created, not even by root.
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    message = input_error(train.main, train_args(dataset_root, blocker / "exp", "--epochs", "1"))
    assert str(blocker / "exp") in message and "--output_root" in message

    # The checkpoint does not exist either: the outputs are checked before anything is loaded.
    unused = ["--checkpoint", str(tmp_path / "not_loaded.pth")]
    for flag in ("--report", "--scores", "--plot_dir"):
        target = blocker / "out" / "result"
        message = input_error(evaluate.main, eval_args(dataset_root, *unused, flag, str(target)))
        assert flag in message and str(blocker / "out") in message
    message = input_error(
        evaluate.main, eval_args(dataset_root, *unused, "--report", str(tmp_path))
    )
    assert f"--report {tmp_path} is a folder" in message


def test_debug_flag_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = train_args(tmp_path / "nowhere", tmp_path / "exp")
    with pytest.raises(SystemExit) as exited:
        run_cli(train.main, args)
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("error: dataset folder ")
    args.debug = True
    with pytest.raises(InputError):
        run_cli(train.main, args)


def test_clis_exit_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    missing_data = tmp_path / "nowhere"
    missing_checkpoint = tmp_path / "missing.pth"
    commands = {
        "train.py": ["--dataset_path", str(missing_data), "--output_root", str(tmp_path)],
        "evaluate.py": ["--checkpoint", str(missing_checkpoint)],
    }
    # Both at once: most of the time goes into importing torch.
    running = {
        script: subprocess.Popen(
            [sys.executable, script, *argv],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script, argv in commands.items()
    }
    results = {script: process.communicate(timeout=120) for script, process in running.items()}
    for script, (_, stderr) in results.items():
        assert running[script].returncode == 2, stderr
        assert "Traceback" not in stderr
    train_error = results["train.py"][1].strip().splitlines()
    evaluate_error = results["evaluate.py"][1].strip().splitlines()
    assert len(train_error) == len(evaluate_error) == 1
    assert train_error[0].startswith(f"error: dataset folder {missing_data / 'ped2'} ")
    assert evaluate_error[0].startswith(f"error: checkpoint {missing_checkpoint} does not exist")


# --------------------------------------------------------------------------- failed runs


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(
    dataset_root: Path, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output_root = link_run(trained_run, tmp_path)
    run_dir = output_root / "ped2" / "log"
    before = (run_dir / "checkpoint.pth").stat()

    def nan_loss(*args: object, **kwargs: object) -> torch.Tensor:
        return torch.tensor(float("nan"))

    monkeypatch.setattr(training.loop.F, "mse_loss", nan_loss)
    args = train_args(dataset_root, output_root, "--epochs", "2", "--resume")
    message = input_error(train.main, args)
    assert "loss became nan at epoch 2, step 1" in message and "--lr" in message

    after = (run_dir / "checkpoint.pth").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    saved = torch.load(run_dir / "checkpoint.pth", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 0)
    load_model_weights(
        LGNNet(
            channels=args.c,
            t_length=args.t_length,
            msize=args.msize,
            fdim=args.fdim,
            mdim=args.mdim,
        ),
        saved["model"],
    )
    assert not [p.name for p in run_dir.iterdir() if TEMP_FILE.match(p.name)]


def test_failed_checkpoint_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = train_args(tmp_path, tmp_path, "--epochs", "1")
    model = LGNNet(
        channels=args.c, t_length=args.t_length, msize=args.msize, fdim=args.fdim, mdim=args.mdim
    )
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pth").write_bytes(b"previous checkpoint")

    def write_half_then_fail(obj: object, path: Path) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training.run_state.torch, "save", write_half_then_fail)
    items = torch.zeros(4, 64)
    with pytest.raises(InputError, match=r"could not write .*checkpoint\.pth .*No space left"):
        training.run_state.save_run_state(run_dir, model, items, optimizer, scheduler, args, 1, 0)
    assert (run_dir / "checkpoint.pth").read_bytes() == b"previous checkpoint"
    assert [p.name for p in run_dir.iterdir()] == ["checkpoint.pth"]


def test_failed_scores_write_keeps_the_previous_file(tmp_path: Path) -> None:
    row = {"video": "01", "frame": 4, "psnr": "30.0", "feature_distance": "0.1"}
    row |= {"normality": "0.5", "label": 0}
    scores = tmp_path / "scores.csv"
    write_scores_csv(scores, [row])
    previous = scores.read_text()
    # The second row has a field the CSV does not know: the writer fails after the first.
    with pytest.raises(ValueError):
        write_scores_csv(scores, [row, {**row, "extra": 1}])
    assert scores.read_text() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_sigint_saves_a_resumable_checkpoint(dataset_root: Path, tmp_path: Path) -> None:
    output_root = tmp_path / "exp"
    argv = ["--dataset_type", "ped2", "--dataset_path", str(dataset_root)]
    argv += ["--output_root", str(output_root), *TRAIN_FLAGS, "--epochs", "2"]
    log_path = tmp_path / "stderr.txt"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "train.py", *argv],
            cwd=REPO_ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    # Wait until the progress bar shows a finished step: the signal handler is in place then.
    step_done = re.compile(r"\|\s*[1-9]\d*/\d+ \[")
    deadline = time.monotonic() + 120
    while not step_done.search(log_path.read_text()):
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "training showed no finished step"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, log_path.read_text()

    run_dir = output_root / "ped2" / "log"
    last_line = log_path.read_text().strip().splitlines()[-1]
    assert "Traceback" not in log_path.read_text()
    assert last_line.startswith("SIGINT: saved ") and str(run_dir / "checkpoint.pth") in last_line
    assert "--resume" in last_line
    saved = torch.load(run_dir / "checkpoint.pth", weights_only=True)
    assert (saved["epoch"], saved["step"]) in {(0, 1), (1, 0), (1, 1)}
    assert not [p.name for p in run_dir.iterdir() if TEMP_FILE.match(p.name)]

    train.main(train_args(dataset_root, output_root, "--epochs", "2", "--resume"))
    finished = torch.load(run_dir / "checkpoint.pth", weights_only=True)
    assert (finished["epoch"], finished["step"]) == (2, 0)
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log][-1] == 2


@pytest.mark.parametrize(
    ("failure", "becomes_one_line"),
    [
        (OSError(28, "No space left on device"), True),
        (PermissionError(13, "Permission denied"), True),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), True),
        (RuntimeError("a bug in the writer"), False),
        (ValueError("bad row"), False),
    ],
)
def test_storage_failures_become_one_line_errors_and_bugs_do_not(
    tmp_path: Path, failure: Exception, becomes_one_line: bool
) -> None:
    target = tmp_path / "report.json"
    target.write_text("previous")

    def fail(path: Path) -> None:
        path.write_text("half")
        raise failure

    with pytest.raises(InputError if becomes_one_line else type(failure)) as raised:
        atomic_write(target, fail)
    if becomes_one_line:
        assert str(target) in str(raised.value) and "\n" not in str(raised.value)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


# --------------------------------------------------------------------------- round two


def test_resume_with_more_epochs_follows_the_longer_schedule(
    dataset_root: Path, trained_run: Path, tmp_path: Path
) -> None:
    """A finished 1-epoch run resumed with --epochs 2 trains its second epoch at the
    learning rate a 2-epoch run has there (cosine: lr/2), not at the finished run's 0."""
    output_root = link_run(trained_run, tmp_path)
    run_dir = output_root / "ped2" / "log"
    before = torch.load(run_dir / "checkpoint.pth", weights_only=True)
    assert before["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    train.main(train_args(dataset_root, output_root, "--epochs", "2", "--resume"))
    after = torch.load(run_dir / "checkpoint.pth", weights_only=True)
    assert after["epoch"] == 2
    moved = [
        name
        for name, tensor in after["model"].items()
        if tensor.is_floating_point()
        and "running" not in name
        and not torch.equal(tensor, before["model"][name])
    ]
    assert "decoder.moduleDeconv1.6.weight" in moved  # the weights trained, not only BN buffers
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2]
    assert log[0]["lr"] == pytest.approx(2e-4) and log[1]["lr"] == pytest.approx(1e-4)
    scheduler = after["scheduler"]
    assert scheduler["T_max"] == 2 and scheduler["last_epoch"] == 2

    message = input_error(
        train.main, train_args(dataset_root, output_root, "--epochs", "1", "--resume")
    )
    assert "already trained 2 epochs" in message and "--epochs" in message


def test_a_second_run_into_the_same_folder_needs_resume_or_overwrite(
    dataset_root: Path, trained_run: Path, tmp_path: Path
) -> None:
    output_root = link_run(trained_run, tmp_path)
    run_dir = output_root / "ped2" / "log"
    before = {
        name: (run_dir / name).stat().st_mtime_ns for name in ("checkpoint.pth", "config.json")
    }
    message = input_error(train.main, train_args(dataset_root, output_root, "--epochs", "1"))
    assert str(run_dir) in message and "--resume" in message and "--overwrite" in message
    assert {n: (run_dir / n).stat().st_mtime_ns for n in before} == before

    train.main(train_args(dataset_root, output_root, "--epochs", "1", "--overwrite", "--seed", "3"))
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1]  # the replaced run's line is gone
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 3


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--lr", "-0.1", "--lr -0.1 must be greater than 0"),
        ("--lr", "nan", "--lr nan must be a finite number"),
        ("--num_workers", "-1", "--num_workers must be 0 or positive"),
        ("--loss_compact", "inf", "--loss_compact inf must be a finite number"),
        ("--msize", "1", "--msize must be at least 2"),
    ],
)
def test_bad_training_flags_leave_no_run_folder(
    dataset_root: Path, tmp_path: Path, flag: str, value: str, expected: str
) -> None:
    args = train_args(dataset_root, tmp_path / "exp", "--epochs", "1")
    setattr(args, flag.lstrip("-"), type(getattr(args, flag.lstrip("-")))(value))
    assert expected in input_error(train.main, args)
    assert not (tmp_path / "exp").exists()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(
    dataset_root: Path, tmp_path: Path
) -> None:
    root = copy_dataset(dataset_root, tmp_path)
    shutil.rmtree(root / "ped2" / "training")
    input_error(train.main, train_args(root, tmp_path / "exp", "--epochs", "1"))
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["000.png", "001.png", "001.jpg", "002.png"], "carry the same frame number 1"),
        (["frame_aa.png", "frame_ab.png", "frame_ac.png"], "has no frame number"),
        (["b_1.png", "a_2.png", "a_3.png"], "sorts after"),
    ],
)
def test_ambiguous_frame_names_are_refused(tmp_path: Path, names: list[str], expected: str) -> None:
    from data.frame_folders import list_videos
    from data.sources import open_input

    video = tmp_path / "training" / "01"
    video.mkdir(parents=True)
    for name in names:
        cv2.imwrite(str(video / name), np.zeros((8, 8, 3), np.uint8))
    for read in (lambda: list_videos(tmp_path / "training"), lambda: open_input(str(video))):
        with pytest.raises(InputError, match=expected) as raised:
            read()
        assert str(video) in str(raised.value)


def test_damaged_jpeg_is_named_not_decoded_half_garbled(tmp_path: Path) -> None:
    """OpenCV decodes a damaged JPEG into a partly garbled frame, with a libjpeg warning
    that names no file; the loader refuses it, naming the file."""
    from data.decoding import decode_frame

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3)).astype(np.uint8), (5, 5), 0)
    path = tmp_path / "001.jpg"
    cv2.imwrite(str(path), image)
    intact = path.read_bytes()
    assert decode_frame(path, 16, 16).shape == (16, 16, 3)
    damaged = bytearray(intact)
    middle = len(damaged) // 2
    damaged[middle : middle + 40] = bytes(rng.integers(0, 256, 40).tolist())
    for data in (bytes(damaged), intact[: len(intact) * 2 // 3]):  # corrupt, truncated
        path.write_bytes(data)
        with pytest.raises(InputError, match=r"001\.jpg is damaged \(.*JPEG"):
            decode_frame(path, 16, 16)


def test_evaluate_refuses_another_frame_size_and_says_what_it_scores(
    dataset_root: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = input_error(
        evaluate.main, eval_args(dataset_root, "--checkpoint", str(checkpoint), "--h", "32")
    )
    assert "--h 32 differs from the 16x24 frames" in message
    evaluate.main(eval_args(dataset_root, "--checkpoint", str(checkpoint)))
    err = capsys.readouterr().err
    assert "at 16x24 with" in err and "ped2.mat" in err


def test_evaluate_names_a_mid_epoch_checkpoint(
    dataset_root: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = torch.load(checkpoint, weights_only=True)
    path = tmp_path / "checkpoint.pth"
    torch.save({**saved, "epoch": 3, "step": 7}, path)
    evaluate.main(eval_args(dataset_root, "--checkpoint", str(path)))
    assert "trained 3 epochs and 7 steps of epoch 4 (saved mid-epoch" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--gamma", "nan"], "--gamma nan must be a finite number"),
        (["--gamma", "inf"], "--gamma inf must be a finite number"),
        (["--smooth", "-1"], "--smooth -1.0 must be at least 0"),
    ],
)
def test_non_finite_or_negative_scoring_flags(
    dataset_root: Path, checkpoint: Path, flags: list[str], expected: str
) -> None:
    args = eval_args(dataset_root, "--checkpoint", str(checkpoint), *flags)
    assert expected in input_error(evaluate.main, args)


def test_one_path_for_two_outputs_is_refused(
    dataset_root: Path, checkpoint: Path, tmp_path: Path
) -> None:
    target = str(tmp_path / "x")
    args = eval_args(dataset_root, "--checkpoint", str(checkpoint))
    args.report = args.scores = target
    assert "--report and --scores both name" in input_error(evaluate.main, args)
    assert not (tmp_path / "x").exists()


def test_evaluate_outputs_are_checked_without_creating_folders(
    dataset_root: Path, tmp_path: Path
) -> None:
    missing = ["--checkpoint", str(tmp_path / "missing.pth")]
    plots = tmp_path / "new" / "plots"
    input_error(evaluate.main, eval_args(dataset_root, *missing, "--plot_dir", str(plots)))
    assert not (tmp_path / "new").exists()


def test_detect_flags_checked_before_any_work(tmp_path: Path, checkpoint: Path) -> None:
    import detect

    def detect_error(*argv: str) -> str:
        args = detect.get_args_parser().parse_args([str(a) for a in argv])
        return input_error(detect.main, args)

    blocker = tmp_path / "file"
    blocker.write_text("")
    unused = ["--checkpoint", str(tmp_path / "not_loaded.pth"), "--input", str(tmp_path)]
    for flag in ("--csv", "--events", "--report"):
        message = detect_error(*unused, flag, blocker / "out.txt")
        assert flag in message and str(blocker) in message
    assert "--video_out" in detect_error(*unused, "--video_out", blocker / "a.mp4")
    message = detect_error(*unused, "--csv", tmp_path)
    assert f"--csv {tmp_path} is a folder" in message
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    message = detect_error(*unused, "--calibrate", "--output_checkpoint", blocker / "c.pth")
    assert "--output_checkpoint" in message
    assert "add --calibrate" in detect_error(*unused, "--output_checkpoint", tmp_path / "c.pth")
    assert "--lambda is fixed" in detect_error(*unused, "--lambda", "0.3")
    assert "--gamma nan must be a finite" in detect_error(*unused, "--gamma", "nan")


def test_detect_outputs_get_the_usual_permissions(tmp_path: Path) -> None:
    from common.files import PendingFile

    umask = os.umask(0o022)
    try:
        pending = PendingFile(tmp_path / "scores.csv")
        pending.tmp.write_text("video,frame\n")
        pending.commit()
        atomic_write(tmp_path / "report.json", lambda p: p.write_text("{}"))
    finally:
        os.umask(umask)
    assert (tmp_path / "scores.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644


def test_wrong_advice_is_gone(dataset_root: Path, checkpoint: Path, trained_run: Path) -> None:
    # A folder as --checkpoint: say so, and point at the file inside.
    message = input_error(evaluate.main, eval_args(dataset_root, "--checkpoint", str(trained_run)))
    assert "is a folder" in message and "checkpoint.pth" in message
    # evaluate.py has --msize, not --mdim: the items error names only what exists.
    saved = torch.load(checkpoint, weights_only=True)
    bad = checkpoint.parent / "bad_items.pth"
    torch.save({**saved, "items": torch.zeros(3, 64)}, bad)
    message = input_error(evaluate.main, eval_args(dataset_root, "--checkpoint", str(bad)))
    assert "(3, 64)" in message and "--mdim" not in message


def test_help_names_the_script_and_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    import detect

    for script, module in (("train.py", train), ("evaluate.py", evaluate), ("detect.py", detect)):
        parser = module.get_args_parser()
        assert parser.format_usage().startswith(f"usage: {script} ")
        text = parser.format_help()
        for action in parser._actions:
            assert action.help, f"{script} {action.option_strings} has no help text"
        assert "(default: " in text
    assert "(default: 0.0002)" in train.get_args_parser().format_help()


def test_ctrl_c_ends_evaluate_with_one_line_and_130(
    dataset_root: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_split", interrupted)
    plots = tmp_path / "plots"
    args = eval_args(dataset_root, "--checkpoint", str(checkpoint), "--plot_dir", str(plots))
    with pytest.raises(SystemExit) as exited:
        run_cli(evaluate.main, args)
    assert exited.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("interrupted") and "Traceback" not in "\n".join(err)
    assert not plots.exists()


def test_storage_errors_from_a_file_size_limit(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pth"
    for failure in (OSError(27, "File too large"), RuntimeError("unexpected pos 832 vs 726")):

        def fail(path: Path, failure: Exception = failure) -> None:
            raise failure

        with pytest.raises(InputError, match="free disk space"):
            atomic_write(target, fail)
    assert not list(tmp_path.iterdir())


def test_only_three_channel_frames_are_accepted(dataset_root: Path, tmp_path: Path) -> None:
    message = input_error(train.main, train_args(dataset_root, tmp_path / "exp", "--c", "1"))
    assert "--c 1" in message and "3-channel BGR" in message
    assert not (tmp_path / "exp").exists()
    message = input_error(evaluate.main, eval_args(dataset_root, "--checkpoint", "x", "--c", "1"))
    assert "--c 1" in message


def test_a_missing_file_url_is_named_as_a_missing_file(
    dataset_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LGN_CACHE", str(tmp_path / "cache"))
    url = (tmp_path / "missing.pth").as_uri()
    message = input_error(evaluate.main, eval_args(dataset_root, "--checkpoint", url))
    assert "does not exist" in message and "connection" not in message and "resume" not in message


def test_torch_hub_needs_weights() -> None:
    with pytest.raises(InputError, match="give weights.*'untrained'"):
        torch.hub.load(str(REPO_ROOT), "lgn_net", source="local", device="cpu")


def test_calibrating_on_too_few_training_frames_is_refused_before_training(
    dataset_root: Path, tmp_path: Path
) -> None:
    args = train_args(dataset_root, tmp_path / "exp", "--epochs", "1", "--calibrate")
    message = input_error(train.main, args)
    assert "the training videos hold 7 normal frames" in message and "at least 100" in message
    assert not (tmp_path / "exp").exists()
