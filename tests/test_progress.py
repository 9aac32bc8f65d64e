"""An error printed after a progress bar is the last line of stderr: the bars are closed
before the message, instead of redrawing themselves after it when they are collected."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, make_tiny_dataset
from tqdm import tqdm

from common.cli import run_cli
from common.errors import InputError
from model import LGNNet, init_memory_items
from model import checkpoint as checkpoint_format


def last_visible_line(stderr: str) -> str:
    """What a terminal shows last: the text after the last newline or carriage return."""
    return stderr.replace("\r", "\n").rstrip().splitlines()[-1]


def test_an_error_raised_inside_a_bar_is_the_last_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def main(_args: object) -> None:
        bar = tqdm(total=10, desc="working", file=sys.stderr, mininterval=0)
        bar.update(3)  # a bar advanced by hand, as evaluation's and training's are
        raise InputError("frame 003.png is damaged; replace it")

    with pytest.raises(SystemExit) as stopped:
        run_cli(main, None)
    gc.collect()  # where an open bar would redraw itself
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "working" in err
    assert last_visible_line(err) == "error: frame 003.png is damaged; replace it"


def test_evaluate_with_a_corrupt_frame_ends_with_the_one_line_error(tmp_path: Path) -> None:
    root = make_tiny_dataset(tmp_path / "data")
    # A frame of the second test video: the bar has been drawn for the first one.
    second = sorted((root / "ped2" / "testing" / "frames").iterdir())[1]
    corrupt = sorted(second.iterdir())[5]
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    torch.manual_seed(0)
    model = LGNNet(t_length=2, msize=4, fdim=64, mdim=64)
    checkpoint = tmp_path / "untrained.pth"
    checkpoint_format.write(
        checkpoint_format.build(model, init_memory_items(4, 64), (16, 24)), checkpoint
    )
    argv = ["--dataset_type", "ped2", "--dataset_path", str(root), "--checkpoint", str(checkpoint)]
    result = subprocess.run(
        [sys.executable, "evaluate.py", *argv, "--precision", "fp32", "--device", "cpu"],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "evaluating" in result.stderr  # the bar was drawn before the error
    last = last_visible_line(result.stderr)
    assert last.startswith("error: ") and corrupt.name in last, result.stderr
    assert "Traceback" not in result.stderr
