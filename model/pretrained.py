"""Published LGN-Net weights, how a checkpoint argument (a path, a URL or a published name)
becomes a local file, and how a trained checkpoint becomes a published file.

``PUBLISHED_WEIGHTS`` maps a short name (``--checkpoint ped2``) to a file kept in the
repository under ``weights/`` with its sha256, and optionally a download URL of a mirror: a
name resolves to the bundled file when it is there (checked against the sha256), else the file
is downloaded once into the torch.hub cache and checked.
Whatever the source, the file is then read as data only (``model.checkpoint.read``).

Make a published file from a ``train.py`` checkpoint with::

    python -m model.pretrained export exp/ped2/run/checkpoint.pth weights/lgn_net_ped2.pth

It keeps what inference needs (``model.checkpoint.for_publishing``: the weights in fp16, the
memory items in fp32, the sizes and flags, the epoch, the calibration if any) and prints the
sha256 and the entry to add below.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from common.download import cache_path_for, cached_download, check_url, file_sha256
from common.errors import InputError
from common.outputs import check_outputs
from model import checkpoint as checkpoint_format
from model.weights_file import LoadedModel, load_for_inference

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"

# name -> {"file": name under weights/, "sha256": ..., "url": optional mirror, "about": ...}
PUBLISHED_WEIGHTS: dict[str, dict[str, str]] = {
    # RESULTS.md: UCSD Ped2 at 32x48 for 8 epochs on a 2-core CPU; not the paper's configuration.
    "ped2-32x48": {
        "file": "lgn_net_ped2_32x48.pth",
        "sha256": "ad2aca33b936359c2004acf027123c1d4c8789ee71336d699539a61c161e22aa",
        "about": "UCSD Ped2, 32x48, 8 epochs on a 2-core CPU (fp32), calibrated",
    },
}


def published_names() -> str:
    """The published names for messages (``none published yet`` when there are none)."""
    return ", ".join(sorted(PUBLISHED_WEIGHTS)) or "none published yet"


def local_path(spec: str) -> Path | None:
    """Where the file that ``spec`` names lies, or will lie once downloaded, without
    downloading anything (for checking outputs against it); None when it cannot be known."""
    if spec in PUBLISHED_WEIGHTS:
        entry = PUBLISHED_WEIGHTS[spec]
        bundled = WEIGHTS_DIR / entry["file"]
        if bundled.is_file() or not entry.get("url"):
            return bundled
        return cache_path_for(entry["url"])
    scheme = urllib.parse.urlparse(spec).scheme
    if scheme == "file":
        check_url(spec)
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(spec).path))
    if "://" in spec:
        return cache_path_for(spec)
    return Path(spec)


def resolve_checkpoint(spec: str, cache_dir: Path | None = None) -> Path:
    """A local path, an ``http(s)://``/``file://`` URL (downloaded once into the torch.hub
    cache), or a name from ``PUBLISHED_WEIGHTS`` (the bundled file, else its mirror)."""
    spec = str(spec)
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
        raise InputError(
            f"checkpoint {spec} does not exist; give a checkpoint.pth path, a URL, or a "
            f"published name ({published_names()})"
        )
    return path


def load_weights(
    checkpoint: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
    m_items_dir: str | os.PathLike | None = None,
    **options: Any,
) -> LoadedModel:
    """:func:`model.weights_file.load_for_inference` of a checkpoint given as a path, a URL or
    a published name (resolved here, downloading once), or of the reference pair;
    ``options`` are that function's keyword arguments."""
    path = resolve_checkpoint(str(checkpoint)) if checkpoint else None
    try:
        return load_for_inference(path, model_dir, m_items_dir, **options)
    except InputError as error:
        downloaded = path is not None and "://" in str(checkpoint)
        if not downloaded or str(path) not in str(error):
            raise
        # A copy that is wrong sits in the cache and fails every later run the same way.
        raise InputError(
            f"{error}; it is the cached download of {checkpoint}: delete {path} to download "
            "it again"
        ) from error


def export_weights(checkpoint: str | Path, output: str | Path) -> dict[str, Any]:
    """Write the inference part of a ``train.py`` checkpoint to ``output`` (atomically; see
    :func:`model.checkpoint.for_publishing`). The output may not be the checkpoint itself.
    Returns what was written."""
    check_outputs(
        {"output": output}, inputs={"checkpoint": checkpoint}, kinds={"output": "checkpoint"}
    )
    saved = checkpoint_format.read(checkpoint)
    published = checkpoint_format.for_publishing(saved, str(checkpoint))
    checkpoint_format.write(published, output)
    return published


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.pretrained", description="Publish trained LGN-Net weights."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="a train.py checkpoint -> a published file")
    export.add_argument("checkpoint", help="checkpoint.pth written by train.py")
    export.add_argument("output", help="where the published file goes, e.g. weights/x.pth")
    args = parser.parse_args(argv)
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
