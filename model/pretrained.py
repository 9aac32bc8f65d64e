"""Published LGN-Net weights, how ``--checkpoint`` names resolve to files, and how a trained
checkpoint becomes a published file.

``PUBLISHED_WEIGHTS`` maps a short name (``--checkpoint ped2``) to a file kept in the
repository under ``weights/`` with its sha256, and optionally a download URL of a mirror: a
name resolves to the bundled file when it is there (checked against the sha256), else the file
is downloaded once into the torch.hub cache and checked. No trained weights are published yet.

Make a published file from a ``train.py`` checkpoint with::

    python -m model.pretrained export exp/ped2/run/checkpoint.pth weights/lgn_net_ped2.pth

It keeps what inference needs (the weights in fp16, the memory items in fp32, the sizes and
flags, the epoch, the calibration if any) and prints the sha256 and the entry to add below.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from utils import InputError, atomic_write

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
EXPORT_FORMAT = "lgn-net-inference-1"

# name -> {"file": name under weights/, "sha256": ..., "url": optional mirror, "about": ...}
PUBLISHED_WEIGHTS: dict[str, dict[str, str]] = {}


def resolve_checkpoint(spec: str, cache_dir: Path | None = None) -> Path:
    """A local path, an ``http(s)://``/``file://`` URL (downloaded once into the torch.hub
    cache), or a name from ``PUBLISHED_WEIGHTS`` (the bundled file, else its mirror)."""
    from data.download import cached_download, file_sha256

    if spec in PUBLISHED_WEIGHTS:
        entry = PUBLISHED_WEIGHTS[spec]
        bundled = WEIGHTS_DIR / entry["file"]
        if bundled.is_file():
            if file_sha256(bundled) != entry["sha256"].lower():
                raise InputError(
                    f"{bundled} (published weights {spec!r}) does not match its sha256; "
                    "restore it with `git checkout -- weights/` (or delete it to download it)"
                )
            return bundled
        if entry.get("url"):
            return cached_download(entry["url"], entry["sha256"], cache_dir)
        raise InputError(
            f"published weights {spec!r} should be at {bundled}, which is missing, and have no "
            "download address; restore the file with `git checkout -- weights/`"
        )
    if "://" in spec:
        return cached_download(spec, None, cache_dir)
    path = Path(spec)
    if path.is_dir():
        inside = path / "checkpoint.pth"
        fix = f"did you mean {inside}?" if inside.is_file() else "give the checkpoint.pth file"
        raise InputError(f"checkpoint {spec} is a folder; {fix}")
    if not path.is_file():
        known = ", ".join(sorted(PUBLISHED_WEIGHTS)) or "none published yet"
        raise InputError(
            f"checkpoint {spec} does not exist; give a checkpoint.pth path, a URL, or a "
            f"published name ({known})"
        )
    return path


def export_weights(checkpoint: str | Path, output: str | Path) -> dict[str, Any]:
    """Write the inference part of a ``train.py`` checkpoint to ``output`` (atomically):
    floating-point weights as fp16, memory items as fp32, sizes, flags, epoch, calibration.
    :func:`model.checkpoint.load_for_inference` reads it like any checkpoint. Returns it."""
    from model.checkpoint import read_checkpoint

    saved = read_checkpoint(checkpoint)
    if saved.get("step"):
        raise InputError(
            f"{checkpoint} was saved mid-epoch (step {saved['step']}); publish a finished run"
        )
    weights = {
        name: tensor.half() if tensor.is_floating_point() else tensor.clone()
        for name, tensor in saved["model"].items()
    }
    exported = {
        "format": EXPORT_FORMAT,
        "model": weights,
        "items": saved["items"].float().clone(),
        "args": dict(saved.get("args") or {}),
        "epoch": saved.get("epoch"),
    }
    if "calibration" in saved:
        exported["calibration"] = saved["calibration"]
    atomic_write(Path(output), lambda path: torch.save(exported, path))
    return exported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.pretrained", description="Publish trained LGN-Net weights."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="a train.py checkpoint -> a published file")
    export.add_argument("checkpoint", help="checkpoint.pth written by train.py")
    export.add_argument("output", help="where the published file goes, e.g. weights/x.pth")
    args = parser.parse_args(argv)
    from data.download import file_sha256

    try:
        export_weights(args.checkpoint, args.output)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output = Path(args.output)
    digest = file_sha256(output)
    print(f"{output}: {output.stat().st_size / 1e6:.1f} MB, sha256 {digest}")
    print(f'entry: "<name>": {{"file": "{output.name}", "sha256": "{digest}", "about": "..."}}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
