"""Faults while a run writes its files: a write killed outright, a full disk, two runs on one
folder. Each keeps the previous checkpoint readable and ends in one line, and nothing a
killed write left behind outlives the run's next write."""

from __future__ import annotations

import gc
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_TRAIN_FLAGS, one_line_error

import common.files as files
import train
from common.errors import InputError
from common.files import folder_lock, save_torch
from model import LGNNet
from model import checkpoint as checkpoint_format
from training.run_state import save_run_state


def temporaries(folder: Path, name: str = "checkpoint.pth") -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


def test_a_write_reaches_the_disk_before_its_rename(tmp_path, monkeypatch):
    """The temporary is flushed (fsync) before it replaces the file, and the folder after,
    so a power loss right after the rename cannot leave an empty checkpoint."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(source, target) -> None:
        events.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    save_torch({"weights": torch.arange(6.0)}, tmp_path / "checkpoint.pth")
    assert events == ["fsync file", "rename", "fsync folder"]
    assert torch.equal(torch.load(tmp_path / "checkpoint.pth")["weights"], torch.arange(6.0))


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from common.files import atomic_write

    def write(tmp):
        with open(tmp, "wb") as handle:
            handle.write(b"half a checkpoint" * 100_000)
        print("writing", flush=True)
        time.sleep(120)  # killed here, mid-write

    atomic_write(sys.argv[1], write)
    """
)


def kill_mid_write(path: Path) -> None:
    """Start writing ``path`` the way every checkpoint is written, and SIGKILL the writer
    once its temporary holds data."""
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path), str(REPO_ROOT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    assert writer.returncode == -signal.SIGKILL


def save_tiny_run_state(run_dir: Path, epoch: int) -> None:
    """What train.py saves after ``epoch`` epochs, for an untrained tiny network."""
    model = LGNNet(msize=4, fdim=16, mdim=16, hidden=8)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 2)
    args = train.get_args_parser().parse_args(["--h", "16", "--w", "24", "--msize", "4"])
    items = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    save_run_state(run_dir, model, items, optimizer, scheduler, args, epoch, 0)


def test_a_killed_checkpoint_write_keeps_the_previous_one_and_the_next_write_cleans_up(
    tmp_path: Path,
) -> None:
    run = tmp_path / "exp" / "ped2" / "log"
    save_tiny_run_state(run, epoch=1)
    before = (run / "checkpoint.pth").read_bytes()
    kill_mid_write(run / "checkpoint.pth")
    kill_mid_write(run / "model.pth")
    # The previous checkpoint is untouched and still resumes; the kill left its temporaries.
    assert (run / "checkpoint.pth").read_bytes() == before
    assert checkpoint_format.read(run / "checkpoint.pth")["epoch"] == 1
    assert len(temporaries(run)) == 1 and len(temporaries(run, "model.pth")) == 1
    # The run's next write removes them (they are up to a checkpoint's size each).
    save_tiny_run_state(run, epoch=2)
    assert checkpoint_format.read(run / "checkpoint.pth")["epoch"] == 2
    assert temporaries(run) == [] and temporaries(run, "model.pth") == []
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pth", "config.json", "keys.pt", "model.pth"
    ]  # fmt: skip


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 320 kB tmpfs, where the platform lets this process mount one (Linux, as root);
    else the test is skipped."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    if not sys.platform.startswith("linux"):
        pytest.skip("tmpfs needs Linux")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=320k", f"lgn-test-{uuid.uuid4().hex[:8]}",
         str(mount_point)],
        capture_output=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield mount_point
    finally:
        gc.collect()  # a failed write's traceback may still hold its (deleted) file open
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_disk_during_a_checkpoint_write_ends_in_one_line_and_keeps_the_previous(
    small_disk: Path,
) -> None:
    path = small_disk / "checkpoint.pth"
    previous = {"epoch": 1, "weights": torch.zeros(30_000)}  # 120 kB
    checkpoint_format.write(previous, path)
    # 240 kB more does not fit beside it: the disk fills up mid-write.
    message = one_line_error(
        checkpoint_format.write, {"epoch": 2, "weights": torch.ones(60_000)}, path
    )
    assert message.startswith(f"could not write {path}") and "previous file" in message
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["weights"], previous["weights"])
    assert sorted(p.name for p in small_disk.iterdir()) == ["checkpoint.pth"]


# --------------------------------------------------------------------------- one run per folder


def test_a_folder_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    folder = tmp_path / "exp" / "ped2" / "run"
    with folder_lock(folder, "training run", "another --exp_dir"):
        message = one_line_error(folder_lock(folder, "training run").__enter__)
        assert message == (
            f"{folder} is in use by another training run (process {os.getpid()}); wait for it "
            "to end, or choose another folder"
        )
        assert (folder / ".lock").read_text().strip() == str(os.getpid())
    # Left as it was found: the folders created for the lock go again when left empty.
    assert not (tmp_path / "exp").exists()
    with folder_lock(folder, "training run"):  # free again
        (folder / "checkpoint.pth").write_bytes(b"x")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pth"]


def test_two_train_runs_on_one_exp_dir_the_second_is_refused(tiny_dataset, tmp_path):
    """The second run starts (on another thread) while the first trains; flock locks of two
    opens of the lock file exclude each other even within one process, as across two."""
    output_root = tmp_path / "exp"
    run = output_root / "ped2" / "log"
    argv = ["--dataset_type", "ped2", "--dataset_path", str(tiny_dataset)]
    argv += ["--output_root", str(output_root), *TINY_TRAIN_FLAGS]
    first = train.get_args_parser().parse_args([*argv, "--epochs", "1"])
    second = train.get_args_parser().parse_args([*argv, "--epochs", "1", "--overwrite"])
    outcome: list[str] = []

    def start_second_run() -> None:
        deadline = time.time() + 300
        while not ((run / ".lock").exists() and (run / ".lock").read_text().strip()):
            if time.time() > deadline:
                outcome.append("the first run never took the lock")
                return
            time.sleep(0.01)
        try:
            train.main(second)
            outcome.append("the second run trained")
        except InputError as error:
            outcome.append(str(error))

    thread = threading.Thread(target=start_second_run)
    thread.start()
    try:
        train.main(first)
    finally:
        thread.join(timeout=300)
    assert outcome == [
        f"{run} is in use by another training run (process {os.getpid()}); wait for it to "
        "end, or choose another --exp_dir"
    ]
    # Only the first run's files, complete, and the lock gone with the run.
    assert checkpoint_format.read(run / "checkpoint.pth")["epoch"] == 1
    assert [json.loads(line)["epoch"] for line in (run / "log.jsonl").open()] == [1]
    names = {p.name for p in run.iterdir()}  # beside them, the monitor's pictures and events
    assert {"checkpoint.pth", "config.json", "keys.pt", "log.jsonl", "model.pth"} <= names
    assert not [name for name in names if name.startswith(".")]  # no lock, no temporaries


def test_an_early_failure_leaves_no_run_folder(tmp_path):
    args = train.get_args_parser().parse_args(
        ["--dataset_path", str(tmp_path / "missing"), "--output_root", str(tmp_path / "exp")]
    )
    with pytest.raises(InputError):
        train.main(args)
    assert not (tmp_path / "exp").exists()
