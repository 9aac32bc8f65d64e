"""Published LGN-Net weights and how ``--checkpoint`` names are resolved to files.

``PUBLISHED_WEIGHTS`` maps a short name to the URL and sha256 of a ``checkpoint.pth``
written by ``train.py``. The project has not published trained weights yet, so it is
empty; add an entry (name, url, sha256) when a checkpoint is released.
"""

from __future__ import annotations

from pathlib import Path

from utils import InputError

PUBLISHED_WEIGHTS: dict[str, dict[str, str]] = {}


def resolve_checkpoint(spec: str, cache_dir: Path | None = None) -> Path:
    """A local path, an ``http(s)://``/``file://`` URL (downloaded once into the torch.hub
    cache and verified when a sha256 is known), or a name from ``PUBLISHED_WEIGHTS``."""
    from data.download import cached_download

    if spec in PUBLISHED_WEIGHTS:
        entry = PUBLISHED_WEIGHTS[spec]
        return cached_download(entry["url"], entry.get("sha256"), cache_dir)
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
