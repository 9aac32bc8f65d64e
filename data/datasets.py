"""Where each dataset type lives under ``--dataset_path``."""

from __future__ import annotations

from pathlib import Path

from common.errors import InputError

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
    if not dataset_dir.is_dir():
        raise InputError(
            f"dataset folder {dataset_dir} does not exist; prepare it with "
            f"`python -m data.prepare {dataset_type} --root {dataset_path}` or set --dataset_path"
        )
    return dataset_dir
