"""Where each dataset type lives under ``--dataset_path``."""

from __future__ import annotations

from pathlib import Path

from common.errors import InputError
from data.frame_folders import SPLIT_FOLDER_NAMES

DATASET_TYPES = ("ped2", "avenue", "shanghai", "demo")


def dataset_dir_for(dataset_type: str, dataset_path: Path) -> Path:
    """``<dataset_path>/<dataset_type>``; the demo scene is generated there on first use."""
    if dataset_type == "demo":
        from data.demo import ensure_demo_dataset

        try:
            return ensure_demo_dataset(Path(dataset_path))
        except OSError as error:
            raise InputError(
                f"cannot create the demo dataset in {dataset_path} ({error.strerror}); "
                "choose a writable folder with --dataset_path"
            ) from None
    dataset_dir = Path(dataset_path) / dataset_type
    if not dataset_dir.is_dir() and is_dataset_folder(Path(dataset_path)):
        raise InputError(dataset_given_as_root(Path(dataset_path), dataset_type))
    if not dataset_dir.is_dir():
        raise InputError(
            f"dataset folder {dataset_dir} does not exist; prepare it with "
            f"`python -m data.prepare {dataset_type} --root {dataset_path}` or set --dataset_path"
        )
    return dataset_dir


def is_dataset_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a training and a testing split folder (``training/`` or
    ``train/``, ``testing/`` or ``test/``): a data set itself, not a folder of data sets."""
    return all(
        any((Path(folder) / name).is_dir() for name in names)
        for names in SPLIT_FOLDER_NAMES.values()
    )


def _split_names(folder: Path) -> str:
    held = [name for names in SPLIT_FOLDER_NAMES.values() for name in names]
    return " and ".join(f"{name}/" for name in held if (folder / name).is_dir())


def dataset_given_as_root(folder: Path, dataset_type: str) -> str:
    """The message for a ``--dataset_path`` that is the data set folder itself."""
    parent = folder.resolve().parent if folder.name in ("", ".", "..") else folder.parent
    fix = f"pass the folder above it: --dataset_path {parent}"
    if folder.resolve().name != dataset_type:
        fix = f"name it {dataset_type}/ and pass the folder above it ({parent})"
    return (
        f"--dataset_path {folder} is itself a data set folder (it holds {_split_names(folder)}), "
        f"while --dataset_path is the folder that holds <dataset_type>/ ({dataset_type}/); {fix}"
    )


def check_dataset_folder(folder: Path, flag: str = "--dataset") -> None:
    """Refuse a ``folder`` given as one data set that instead holds data set folders (such
    as ``datasets/`` holding ``ped2/``), naming the one to give; other problems are left to
    the readers, which name them."""
    folder = Path(folder)
    if not folder.is_dir() or is_dataset_folder(folder):
        return
    inside = sorted(child.name for child in folder.iterdir() if is_dataset_folder(child))
    if inside:
        raise InputError(
            f"{flag} {folder} holds data set folders ({', '.join(inside)}), not the split "
            f"folders training/ and testing/; give one of them: {flag} {folder / inside[0]}"
        )
