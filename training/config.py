"""Training settings: their defaults (the reference release's Train.py, which the paper
uses), defined here once for ``train.py``'s flags, the benchmarks and the tests, and the named
run configurations that RESULTS.md's commands and the tests use (``train.py --config NAME``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from model.config import FRAME_SIZE, ModelConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What a training run does, apart from where its data and outputs are."""

    model: ModelConfig = ModelConfig()
    h: int = FRAME_SIZE  # frame height fed to the model, pixels
    w: int = FRAME_SIZE  # frame width
    batch_size: int = 6  # windows per step and process; the last partial batch is dropped
    epochs: int = 60  # epochs; the cosine schedule spans them
    lr: float = 2e-4  # Adam's learning rate
    loss_compact: float = 10.0  # weight of the compactness loss (MNAD used 0.1)
    loss_separate: float = 5.0  # weight of the separateness loss (MNAD used 0.1)
    seed: int = 0  # initialisation and the per-epoch shuffling
    precision: str = "auto"  # autocast: see common.devices.resolve_precision
    fast_path: str = "auto"  # "auto": the CUDA fast path on CUDA; "off": plain eager
    compile: bool = False  # torch.compile the step on any device
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA)

    @classmethod
    def from_args(cls, args: Any) -> TrainConfig:
        """The configuration a ``train.py`` namespace describes."""
        model = ModelConfig(
            channels=args.c, t_length=args.t_length, msize=args.msize, fdim=args.fdim,
            mdim=args.mdim,
        )  # fmt: skip
        names = {field.name for field in dataclasses.fields(cls)} - {"model"}
        return cls(model=model, **{name: getattr(args, name) for name in names})


# Flag values of named runs; the flags given beside --config NAME win over them.
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    # The paper's configuration (the defaults, spelled out): 256x256, 60 epochs.
    "ped2_paper": {"dataset_type": "ped2", "h": 256, "w": 256, "epochs": 60, "batch_size": 6},
    # What a 2-core CPU trains in about a quarter of an hour (RESULTS.md): 32x48 (Ped2's 2:3
    # aspect ratio), 2 epochs, fp32 (what the earliest runs' CPU computed in).
    "ped2_cpu": {
        "dataset_type": "ped2", "h": 32, "w": 48, "epochs": 2, "batch_size": 6,
        "precision": "fp32", "num_workers": 0,
    },
    # The published CPU weights "ped2-32x48" (RESULTS.md): the largest of 32x48 / 48x72 / 64x64
    # at which 8 epochs fit 100 minutes at the training rate benchmarks/speed.py measured on a
    # 2-core AVX2 CPU without native bf16 (3.40 / 1.71 / 1.46 samples/s), fp32, calibrated.
    "ped2_cpu_32x48_e8": {
        "dataset_type": "ped2", "h": 32, "w": 48, "epochs": 8, "batch_size": 6,
        "precision": "fp32", "num_workers": 0, "calibrate": True,
    },
    # The quickstart: the synthetic demo scene, one epoch at 32x48.
    "demo": {"dataset_type": "demo", "h": 32, "w": 48, "epochs": 1, "num_workers": 0},
}  # fmt: skip
