"""Frame-level ground truth (1 = abnormal) from every label format in circulation.

Supported formats (see ``SUPPORTED_FORMATS``): the ano_pred ``.mat`` (``ped2.mat``,
``avenue.mat``), the official UCSD ``.m`` (``UCSDped2.m``), MNAD-style concatenated
``frame_labels_<dataset>.npy``, ShanghaiTech's ``test_frame_mask/`` folder and Avenue's
``testing_label_mask/`` folder of pixel masks. Every format is checked against the frame tree
(number of videos, frames per video) so a wrong label file fails loudly instead of silently
producing a meaningless AUC.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.io

from common.errors import InputError
from common.files import atomic_write
from data.frame_folders import SPLIT_FOLDER_NAMES, Video, natural_sort_key

SUPPORTED_FORMATS = (
    "ano_pred .mat with variable 'gt' (1xV cell of 2xK [first; last] 1-based frame ranges)",
    "official UCSD .m (lines 'TestVideoFile{end+1}.gt_frame = [61:180];')",
    "MNAD-style .npy with the labels of all test frames concatenated, shape (1, N) or (N,)",
    "ShanghaiTech folder test_frame_mask/ holding <video>.npy per test video",
    "Avenue folder testing_label_mask/ holding <n>_label.mat (variable volLabel)",
)
_FORMATS_HINT = "supported: " + "; ".join(SUPPORTED_FORMATS)

_GT_FRAME_LINE = re.compile(
    r"^\s*\w+\s*\{\s*(?:end\s*\+\s*1|\d+)\s*\}\s*\.\s*gt_frame\s*=\s*\[([^\]]*)\]", re.MULTILINE
)
_VOL_LABEL_FILE = re.compile(r"^(\d+)_label\.mat$", re.IGNORECASE)


def label_runs(labels: np.ndarray) -> np.ndarray:
    """Runs of 1s in a 0/1 vector as int32 ``(2, K)`` columns [first; last], 1-based inclusive."""
    padded = np.concatenate([[0], np.asarray(labels).astype(bool).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[0::2], edges[1::2]  # 0-based start, exclusive end
    return np.stack([starts + 1, ends]).astype(np.int32)


def write_ano_pred_mat(path: Path, labels: list[np.ndarray]) -> None:
    """Write per-video 0/1 frame labels as an ano_pred ``.mat`` (variable ``gt``), atomically.

    A video without anomalies gets an empty ``2x0`` array.
    """
    cells = np.empty((1, len(labels)), dtype=object)
    for index, video_labels in enumerate(labels):
        cells[0, index] = label_runs(video_labels)

    def write(tmp_path: Path) -> None:
        # A handle, because savemat would append ".mat" to the temporary name.
        with open(tmp_path, "wb") as handle:
            scipy.io.savemat(handle, {"gt": cells})

    atomic_write(path, write)


def _mat_variables(path: Path) -> set[str]:
    try:
        return {name for name, _, _ in scipy.io.whosmat(path)}
    except NotImplementedError as error:  # MATLAB v7.3 (HDF5) files
        raise InputError(
            f"{path} is a MATLAB v7.3 file, which scipy cannot read; re-save it in MATLAB "
            f"with save(..., '-v7')"
        ) from error
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"cannot read {path} as a MATLAB .mat file ({error})") from error


def _load_mat_variable(path: Path, name: str) -> np.ndarray:
    _mat_variables(path)  # turns unreadable/v7.3 files into InputError
    return scipy.io.loadmat(path, variable_names=[name])[name]


def _ranges_to_labels(ranges: np.ndarray, video: Video, label_file: Path) -> np.ndarray:
    """1-based inclusive [first; last] columns ``(2, K)`` -> int64 0/1 vector of len(video)."""
    labels = np.zeros(len(video), dtype=np.int64)
    for first, last in ranges.T.tolist():
        if first < 1 or last < first:
            raise InputError(
                f"{label_file}: video {video.name!r} has an invalid abnormal range "
                f"[{first}, {last}] (1-based, first <= last expected)"
            )
        if last > len(video):
            raise InputError(
                f"{label_file}: labels of video {video.name!r} reach frame {last} but the video "
                f"has {len(video)} frames; the label file does not match this frame tree"
            )
        labels[first - 1 : last] = 1
    return labels


def _as_range_columns(cell: np.ndarray, label_file: Path, index: int) -> np.ndarray:
    ranges = np.asarray(cell)
    if ranges.size == 0:
        return np.zeros((2, 0), dtype=np.int64)
    if ranges.ndim == 1 and ranges.size == 2:
        ranges = ranges.reshape(2, 1)
    if ranges.ndim != 2 or ranges.shape[0] != 2:
        raise InputError(
            f"{label_file}: entry {index + 1} of 'gt' has shape {ranges.shape}, expected 2xK "
            f"[first; last] frame ranges"
        )
    # Files in circulation store these as uint8/uint16/double; compute in int64.
    return np.rint(ranges.astype(np.float64)).astype(np.int64)


def _read_ano_pred_mat(path: Path) -> list[np.ndarray]:
    """Per-video ``(2, K)`` range arrays from the ``gt`` cell of an ano_pred ``.mat``."""
    gt = _load_mat_variable(path, "gt")
    if gt.dtype == object:
        cells = list(gt.ravel())
    elif gt.ndim == 3:  # a python writer that saved equal-shaped arrays as one numeric array
        cells = list(gt)
    else:
        raise InputError(
            f"{path}: variable 'gt' has shape {gt.shape}, expected a 1xV cell of 2xK arrays"
        )
    return [_as_range_columns(cell, path, index) for index, cell in enumerate(cells)]


def _read_ucsd_m(path: Path) -> list[np.ndarray]:
    """Per-video ``(2, K)`` range arrays from ``TestVideoFile{end+1}.gt_frame = [a:b, c];``."""
    text = path.read_text(errors="replace")
    text = re.sub(r"%.*", "", text)  # MATLAB comments
    per_video = []
    for match in _GT_FRAME_LINE.finditer(text):
        columns = []
        for token in re.split(r"[,\s]+", match.group(1).strip()):
            if not token:
                continue
            bounds = token.split(":")
            try:
                numbers = [int(float(bound)) for bound in bounds]
            except ValueError as error:
                raise InputError(f"{path}: cannot parse frame range {token!r}") from error
            if len(numbers) == 1:
                columns.append((numbers[0], numbers[0]))
            elif len(numbers) == 2:
                columns.append((numbers[0], numbers[1]))
            elif len(numbers) == 3 and numbers[1] == 1:  # a:1:b
                columns.append((numbers[0], numbers[2]))
            else:
                raise InputError(f"{path}: unsupported frame range {token!r} (use a:b)")
        per_video.append(np.array(columns, dtype=np.int64).reshape(-1, 2).T)
    if not per_video:
        raise InputError(f"{path}: no 'gt_frame = [...]' lines found; {_FORMATS_HINT}")
    return per_video


def _check_video_count(found: int, videos: Sequence[Video], label_file: Path, what: str) -> None:
    if found == len(videos):
        return
    if found < len(videos):
        detail = f"no labels for video {videos[found].name!r}"
    else:
        detail = f"the frame tree ends at video {videos[-1].name!r}"
    raise InputError(
        f"{label_file} has {what} for {found} videos but the frame tree has {len(videos)} test "
        f"videos ({detail}); use the label file of this dataset"
    )


def _binary_labels(values: np.ndarray, label_file: Path) -> np.ndarray:
    values = np.asarray(values)
    if values.size and not np.isin(values, (0, 1)).all():
        raise InputError(f"{label_file} holds values other than 0 and 1; expected frame labels")
    return values.astype(np.int64)


def _check_frame_count(labels: np.ndarray, video: Video, label_file: Path) -> np.ndarray:
    if len(labels) != len(video):
        raise InputError(
            f"{label_file} has {len(labels)} frame labels for video {video.name!r}, which has "
            f"{len(video)} frames; the label file does not match this frame tree"
        )
    return labels


def _read_concatenated_npy(path: Path, videos: Sequence[Video]) -> list[np.ndarray]:
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {path} as a .npy array ({error})") from error
    if values.ndim == 2 and 1 in values.shape:
        values = values.reshape(-1)
    if values.ndim != 1:
        raise InputError(f"{path} has shape {values.shape}; {_FORMATS_HINT}")
    values = _binary_labels(values, path)
    total = sum(len(video) for video in videos)
    if len(values) != total:
        raise InputError(
            f"{path} has {len(values)} frame labels but the {len(videos)} test videos "
            f"({videos[0].name!r}..{videos[-1].name!r}) have {total} frames; "
            f"the label file does not match this frame tree"
        )
    boundaries = np.cumsum([len(video) for video in videos])[:-1]
    return np.split(values, boundaries)


def _read_frame_mask_folder(folder: Path, videos: Sequence[Video]) -> list[np.ndarray]:
    labels = []
    for video in videos:
        mask_file = folder / f"{video.name}.npy"
        if not mask_file.is_file():
            raise InputError(
                f"no label file {mask_file} for video {video.name!r}; the label folder "
                f"{folder} does not match this frame tree"
            )
        try:
            values = np.load(mask_file, allow_pickle=False).reshape(-1)
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read {mask_file} as a .npy array ({error})") from error
        labels.append(_check_frame_count(_binary_labels(values, mask_file), video, mask_file))
    return labels


def _vol_label_files(folder: Path) -> list[tuple[int, Path]]:
    numbered = []
    for entry in folder.iterdir():
        match = _VOL_LABEL_FILE.match(entry.name)
        if match and entry.is_file():
            numbered.append((int(match.group(1)), entry))
    return sorted(numbered)


def _read_vol_label_folder(folder: Path, videos: Sequence[Video]) -> list[np.ndarray]:
    """Avenue's pixel masks: file ``<n>_label.mat`` belongs to the n-th video (1-based)."""
    numbered = _vol_label_files(folder)
    _check_video_count(len(numbered), videos, folder, "pixel masks (<n>_label.mat)")
    labels = []
    for position, ((number, mask_file), video) in enumerate(
        zip(numbered, videos, strict=True), start=1
    ):
        if number != position:
            raise InputError(
                f"{folder} has no {position}_label.mat for video {video.name!r} "
                f"(found {mask_file.name}); the files must be numbered 1..{len(videos)}"
            )
        if "volLabel" not in _mat_variables(mask_file):
            raise InputError(f"{mask_file} has no variable 'volLabel'; {_FORMATS_HINT}")
        masks = _load_mat_variable(mask_file, "volLabel")
        if masks.dtype == object:
            flags = [bool(np.any(mask)) for mask in masks.ravel()]
        elif masks.ndim == 3:  # H x W x T numeric array
            flags = list(np.any(masks, axis=(0, 1)))
        else:
            raise InputError(f"{mask_file}: 'volLabel' has shape {masks.shape}; {_FORMATS_HINT}")
        labels.append(_check_frame_count(np.array(flags, dtype=np.int64), video, mask_file))
    return labels


def _positional(
    read: Callable[[Path], list[np.ndarray]], path: Path, videos: Sequence[Video]
) -> list[np.ndarray]:
    per_video = read(path)
    _check_video_count(len(per_video), videos, path, "labels")
    return [
        _ranges_to_labels(ranges, video, path)
        for ranges, video in zip(per_video, videos, strict=True)
    ]


def _load_from(path: Path, videos: Sequence[Video]) -> list[np.ndarray]:
    """Labels per video (in ``videos`` order) from a label file or folder of any format."""
    if path.is_dir():
        if _vol_label_files(path):
            return _read_vol_label_folder(path, videos)
        if any((path / f"{video.name}.npy").is_file() for video in videos):
            return _read_frame_mask_folder(path, videos)
        found = _discover([path], dataset_type=None)
        if found is not None:
            return _load_from(found, videos)
        raise InputError(f"label folder {path} holds no recognised label files; {_FORMATS_HINT}")
    if not path.is_file():
        raise InputError(f"label path {path} does not exist; fix --label_path")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        variables = _mat_variables(path)
        if "gt" in variables:
            return _positional(_read_ano_pred_mat, path, videos)
        if "volLabel" in variables:
            raise InputError(
                f"{path} holds the pixel masks of one video; pass its folder "
                f"({path.parent}) as --label_path"
            )
        raise InputError(
            f"{path} has neither 'gt' nor 'volLabel' (variables: {sorted(variables)}); "
            f"{_FORMATS_HINT}"
        )
    if suffix == ".m":
        return _positional(_read_ucsd_m, path, videos)
    if suffix == ".npy":
        return _read_concatenated_npy(path, videos)
    raise InputError(f"unknown label format {path}; {_FORMATS_HINT}")


def _search_dirs(dataset_dir: Path) -> list[Path]:
    candidates = [dataset_dir] + [dataset_dir / name for name in SPLIT_FOLDER_NAMES["testing"]]
    return [folder for folder in candidates if folder.is_dir()]


def _single(paths: list[Path], what: str) -> Path | None:
    if len(paths) > 1:
        names = ", ".join(str(path) for path in paths)
        raise InputError(f"several {what} found ({names}); choose one with --label_path")
    return paths[0] if paths else None


def _discover(search_dirs: list[Path], dataset_type: str | None) -> Path | None:
    """First label file or folder found, in the order documented in ``load_frame_labels``."""

    def files(folder: Path, pattern: str) -> list[Path]:
        found = (path for path in folder.glob(pattern) if path.is_file())
        return sorted(found, key=lambda path: natural_sort_key(path.name))

    for folder in search_dirs:
        if dataset_type and (folder / f"{dataset_type}.mat").is_file():
            return folder / f"{dataset_type}.mat"

    def has_gt(path: Path) -> bool:
        try:
            return "gt" in _mat_variables(path)
        except InputError:  # an unrelated or unreadable .mat is not a candidate
            return False

    for folder in search_dirs:
        with_gt = [path for path in files(folder, "*.mat") if has_gt(path)]
        if found := _single(with_gt, f"label .mat files with 'gt' in {folder}"):
            return found
    for folder in search_dirs:
        named = [folder / f"frame_labels_{dataset_type}.npy"] if dataset_type else []
        named = [path for path in named if path.is_file()] or files(folder, "frame_labels_*.npy")
        if found := _single(named, f"frame_labels_*.npy files in {folder}"):
            return found
    for folder in search_dirs:
        if found := _single(files(folder, "*.m"), f".m label files in {folder}"):
            return found
    for mask_folder_name in ("test_frame_mask", "testing_label_mask"):
        for folder in search_dirs:
            if (folder / mask_folder_name).is_dir():
                return folder / mask_folder_name
    return None


def load_frame_labels(
    dataset_dir: Path,
    videos: list[Video],
    label_path: Path | None = None,
    dataset_type: str | None = None,
) -> dict[str, np.ndarray]:
    """Per test video name, an int64 0/1 vector (1 = abnormal) with one entry per frame.

    ``videos`` must be every test video in sorted order (also those later skipped as too
    short), because several formats are positional. ``label_path`` may be a file or a folder;
    without it the labels are looked up in ``dataset_dir`` and then in its ``testing/`` (or
    ``test/``) folder, in this order, taking the first hit:

    1. ``<dataset_type>.mat`` (``dataset_type`` defaults to the name of ``dataset_dir``);
    2. the only ``*.mat`` file holding a variable ``gt``;
    3. ``frame_labels_<dataset_type>.npy``, else the only ``frame_labels_*.npy``;
    4. the only ``*.m`` file (official UCSD format);
    5. a ``test_frame_mask/`` folder (ShanghaiTech);
    6. a ``testing_label_mask/`` folder (Avenue).

    Raises InputError when nothing is found, the format is unknown, or the labels do not
    match the frame tree (number of videos or frames per video).
    """
    dataset_dir = Path(dataset_dir)
    videos = list(videos)
    if not videos:
        raise InputError(f"no test videos given to label (dataset {dataset_dir})")
    label_path = locate_labels(dataset_dir, label_path, dataset_type)
    per_video = _load_from(label_path, videos)
    return {video.name: labels for video, labels in zip(videos, per_video, strict=True)}


def locate_labels(
    dataset_dir: Path, label_path: Path | None = None, dataset_type: str | None = None
) -> Path:
    """The label file or folder :func:`load_frame_labels` reads: ``label_path`` when given,
    else the first hit of the search described there."""
    if label_path is not None:
        return Path(label_path)
    search_dirs = _search_dirs(Path(dataset_dir))
    found = _discover(search_dirs, dataset_type or Path(dataset_dir).name)
    if found is None:
        where = ", ".join(str(folder) for folder in search_dirs) or str(dataset_dir)
        raise InputError(
            f"no frame labels found in {where} (looked for <dataset_type>.mat, a .mat with "
            f"'gt', frame_labels_*.npy, a UCSD .m, test_frame_mask/, testing_label_mask/); "
            f"pass the label file or folder with --label_path"
        )
    return found
