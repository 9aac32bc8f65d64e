"""Where a benchmark's raw release comes from: the official archives (downloaded, their sizes
and sha256 checked) or the archives and folders a user gives with ``--source``.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.download import download_file, file_sha256
from common.errors import InputError
from data.archives import ARCHIVE_SUFFIXES, extract_archive, is_archive


@dataclass(frozen=True)
class Download:
    """An official archive. ``size`` (bytes) and ``sha256`` are checked when not None; a
    download with no known sha256 is announced as unchecked in one line before it starts."""

    url: str
    size: int | None = None
    sha256: str | None = None


# The one place that names the official download locations. The providers publish no
# checksums and serve plain http only; the sha256 of each archive is the one anomalib's video
# data modules pin for the same URL (anomalib/data/datamodules/video/ucsd_ped.py, avenue.py),
# so a substituted archive is refused before it is unpacked. The sizes are those of the files
# with these hashes (the hosts' Content-Length).
OFFICIAL_DOWNLOADS: dict[str, tuple[Download, ...]] = {
    "ped2": (
        Download(
            "http://www.svcl.ucsd.edu/projects/anomaly/UCSD_Anomaly_Dataset.tar.gz",
            size=740_306_953,
            sha256="2329af326951f5097fdd114c50e853957d3e569493a49d22fc082a9fd791915b",
        ),
    ),
    "avenue": (
        Download(
            "http://www.cse.cuhk.edu.hk/leojia/projects/detectabnormal/Avenue_Dataset.zip",
            size=813_227_845,
            sha256="fc9cb8432a11ca79c18aa180c72524011411b69d3b0ff27c8816e41c0de61531",
        ),
        Download(
            "http://www.cse.cuhk.edu.hk/leojia/projects/detectabnormal/ground_truth_demo.zip",
            size=931_269,
            sha256="60fec1728ec8f73a58aad3aeb5729d70a805a47e0b8eb4bf91ab67ef06386d77",
        ),
    ),
    # Hosted on cloud drives behind a landing page: no direct URL, --source is required.
    "shanghai": (),
}
SHANGHAI_PAGE = "https://svip-lab.github.io/dataset/campus_dataset.html"
DATASETS = tuple(OFFICIAL_DOWNLOADS)


def source_folders(sources: Sequence[Path], scratch: Path, progress: bool) -> list[Path]:
    """Folders to look for the data set in: extracted archives and source folders as given."""
    roots = []
    for index, source in enumerate(sources):
        if source.is_dir():
            roots.append(source)
        elif source.is_file() and is_archive(source):
            extract_archive(source, scratch / str(index), progress)
            roots.append(scratch / str(index))
        elif source.exists():
            raise InputError(
                f"--source {source} is neither a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive"
            )
        else:
            raise InputError(f"--source {source} does not exist; check the path")
    return roots


def fetch_official(download: Download, folder: Path, progress: bool) -> Path:
    """The official archive in ``folder``, downloaded unless a complete, verified copy is there."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(download.url).path)).name
    dest = folder / name
    if (
        dest.is_file()
        and (download.size is None or dest.stat().st_size == download.size)
        and (download.sha256 is None or file_sha256(dest) == download.sha256.lower())
    ):
        return dest
    if download.sha256 is None:
        print(
            f"note: no sha256 is known for {download.url}: the download cannot be checked "
            "against a substituted file",
            file=sys.stderr,
        )
    return download_file(
        download.url,
        dest,
        sha256=download.sha256,
        progress=progress,
        size=download.size,
        hint=f"download {download.url} by hand and pass it with --source",
    )
