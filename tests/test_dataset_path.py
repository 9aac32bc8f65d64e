"""A data set folder given where its parent is expected (``--dataset_path``), or a folder of
data sets given where one data set is expected (``detect.py --dataset``): one line naming
what to pass instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_TRAIN_FLAGS, one_line_error

import detect
import train
from data.datasets import dataset_dir_for


@pytest.fixture
def datasets(tmp_path: Path) -> Path:
    """``<tmp>/datasets/ped2`` with (empty) training/ and testing/ video folders."""
    for split in ("training", "testing"):
        (tmp_path / "datasets" / "ped2" / split / "frames" / "01").mkdir(parents=True)
    return tmp_path / "datasets"


def test_the_data_set_folder_given_as_dataset_path_names_its_parent(
    datasets: Path, tmp_path: Path
) -> None:
    folder = datasets / "ped2"
    argv = ["--dataset_path", str(folder), "--output_root", str(tmp_path / "exp")]
    message = one_line_error(train.main, train.parse_args([*argv, *TINY_TRAIN_FLAGS]))
    assert f"--dataset_path {folder} is itself a data set folder" in message
    assert "training/ and testing/" in message
    assert message.endswith(f"pass the folder above it: --dataset_path {datasets}")
    assert "data.prepare" not in message  # no second copy nested inside the first
    assert not (tmp_path / "exp").exists()
    # evaluate.py reads its --dataset_path through the same function.
    assert one_line_error(dataset_dir_for, "ped2", folder) == message
    # Named otherwise than the data set type: it must be renamed as well.
    (datasets / "ped2").rename(datasets / "UCSDped2")
    message = one_line_error(dataset_dir_for, "ped2", datasets / "UCSDped2")
    assert message.endswith(f"name it ped2/ and pass the folder above it ({datasets})")


def test_a_folder_of_data_sets_given_to_detect_names_the_one_to_give(datasets: Path) -> None:
    argv = ["--dataset", str(datasets), "--checkpoint", "checkpoint.pth"]
    message = one_line_error(detect.validate_args, detect.get_args_parser().parse_args(argv))
    assert message == (
        f"--dataset {datasets} holds data set folders (ped2), not the split folders training/ "
        f"and testing/; give one of them: --dataset {datasets / 'ped2'}"
    )
    # The data set folder itself passes this check.
    given = ["--dataset", str(datasets / "ped2"), "--checkpoint", "checkpoint.pth"]
    detect.validate_args(detect.get_args_parser().parse_args(given))
