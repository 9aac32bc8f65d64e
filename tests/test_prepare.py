"""Dataset preparation end to end on miniature copies of the official releases.

Each builder writes a few 16x12 frames in the layout of the official archive; the tests run
``data.prepare`` through the download path (a loopback HTTP server) and through ``--source``
(archives and folders), then check the frame tree, the pixels and the labels against values
worked out by hand.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import tarfile
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from common.errors import InputError
from data import converters, official_sources
from data import prepare as prep
from data.frame_folders import find_split_dir, list_videos
from data.labels import load_frame_labels

H, W = 12, 16


def frame_image(k: int) -> np.ndarray:
    """A smooth BGR test frame (H, W, 3) uint8 whose brightness identifies frame ``k``."""
    y, x = np.mgrid[0:H, 0:W]
    base = 20 + 4 * x + 3 * y + 20 * (k % 6)  # stays within 20..213
    return np.stack([base, 250 - base, np.full_like(base, 60 + 10 * (k % 6))], -1).astype(np.uint8)


def read_frame(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.shape == (H, W, 3), path
    return image.astype(int)


def assert_close(decoded: np.ndarray, expected: np.ndarray, tolerance: float = 6.0) -> None:
    """Lossy (JPEG/MJPG) round trips stay within a few grey levels on average."""
    assert np.abs(decoded - expected.astype(int)).mean() < tolerance


def write_video(path: Path, first_k: int, n_frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (W, H))
    assert writer.isOpened()
    for k in range(first_k, first_k + n_frames):
        writer.write(frame_image(k))
    writer.release()


def read_gt(mat_path: Path) -> list[list[tuple[int, int]]]:
    """The ano_pred ``gt`` cell as [(first, last), ...] per video."""
    gt = scipy.io.loadmat(str(mat_path))["gt"]
    assert gt.dtype == object and gt.shape[0] == 1
    return [[tuple(int(v) for v in col) for col in np.asarray(c).reshape(2, -1).T] for c in gt[0]]


def frame_names(video_dir: Path) -> list[str]:
    return sorted(p.name for p in video_dir.iterdir())


def make_archive(folder: Path, arcname: str, archive: Path) -> Path:
    """tar.gz or zip of ``folder`` stored under ``arcname``."""
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w") as handle:
            for path in sorted(folder.rglob("*")):
                handle.write(path, str(Path(arcname) / path.relative_to(folder)))
    else:
        with tarfile.open(archive, "w:gz") as handle:
            handle.add(folder, arcname=arcname)
    return archive


# --------------------------------------------------------------------------- UCSD Ped2
# Frame k of the miniature: Train001 k=0..4, Train002 k=10..15, Test001 k=20..25,
# Test002 k=30..36. Ground truth: Test001 [3:5]; Test002 [1:2, 6:7].
PED2_VIDEOS = {"Train": [(0, 5), (10, 6)], "Test": [(20, 6), (30, 7)]}
PED2_M = (
    "TestVideoFile = {};\n"
    "TestVideoFile{end+1}.gt_frame = [3:5];\n"
    "TestVideoFile{end+1}.gt_frame = [1:2, 6:7];\n"
)
PED2_GT = [[(3, 5)], [(1, 2), (6, 7)]]


def build_ucsd(folder: Path) -> Path:
    """``folder/UCSD_Anomaly_Dataset.v1p2`` in the layout of the official tarball."""
    top = folder / "UCSD_Anomaly_Dataset.v1p2"
    for ped in ("UCSDped1", "UCSDped2"):
        for split, videos in PED2_VIDEOS.items():
            for number, (first_k, n_frames) in enumerate(videos, start=1):
                video = top / ped / split / f"{split}{number:03d}"
                video.mkdir(parents=True)
                for i in range(n_frames):
                    # Ped1 frames are darker decoys: converting the wrong folder shows up.
                    image = frame_image(first_k + i)[:, :, 0]
                    cv2.imwrite(str(video / f"{i + 1:03d}.tif"), image if ped == "UCSDped2" else 0)
                if split == "Test":  # pixel masks, not a video
                    gt_dir = video.with_name(video.name + "_gt")
                    gt_dir.mkdir()
                    for i in range(n_frames):
                        cv2.imwrite(str(gt_dir / f"{i + 1:03d}.bmp"), np.zeros((H, W), np.uint8))
        (top / ped / "Test" / f"{ped}.m").write_text(PED2_M)
    # A macOS resource fork that carries an image extension but no image.
    (top / "UCSDped2" / "Train" / "Train001" / "._001.tif").write_bytes(b"junk")
    return top


def check_ped2(dataset_dir: Path) -> None:
    assert sorted(p.name for p in dataset_dir.iterdir()) == ["ped2.mat", "testing", "training"]
    for split, source_split in (("training", "Train"), ("testing", "Test")):
        videos = sorted((dataset_dir / split / "frames").iterdir())
        assert [v.name for v in videos] == ["01", "02"]
        for video, (first_k, n_frames) in zip(videos, PED2_VIDEOS[source_split], strict=True):
            assert frame_names(video) == [f"{i:03d}.jpg" for i in range(n_frames)]
            for i in (0, n_frames - 1):
                gray = frame_image(first_k + i)[:, :, 0]
                assert_close(read_frame(video / f"{i:03d}.jpg"), np.dstack([gray] * 3))
    assert read_gt(dataset_dir / "ped2.mat") == PED2_GT
    # The project's label loader finds the file by itself.
    labels = load_frame_labels(dataset_dir, list_videos(find_split_dir(dataset_dir, "testing")))
    assert labels["01"].tolist() == [0, 0, 1, 1, 1, 0]
    assert labels["02"].tolist() == [1, 1, 0, 0, 0, 1, 1]


# --------------------------------------------------------------------------- CUHK Avenue
# training_videos 01.avi k=0..4, 02.avi k=10..13; testing_videos 01.avi k=20..25,
# 02.avi k=30..34. Masks: test 01 frames 2,3 (0-based) abnormal; test 02 frames 0 and 4.
AVENUE_VIDEOS = {"training": [(0, 5), (10, 4)], "testing": [(20, 6), (30, 5)]}
AVENUE_ABNORMAL = [{2, 3}, {0, 4}]
AVENUE_GT = [[(3, 4)], [(1, 1), (5, 5)]]


def build_avenue(folder: Path) -> tuple[Path, Path]:
    """``Avenue Dataset/`` and ``ground_truth_demo/`` as in the two official zips."""
    videos = folder / "Avenue Dataset"
    for split, specs in AVENUE_VIDEOS.items():
        for number, (first_k, n_frames) in enumerate(specs, start=1):
            write_video(videos / f"{split}_videos" / f"{number:02d}.avi", first_k, n_frames)
    gt = folder / "ground_truth_demo"
    (gt / "testing_label_mask").mkdir(parents=True)
    for number, ((_, n_frames), abnormal) in enumerate(
        zip(AVENUE_VIDEOS["testing"], AVENUE_ABNORMAL, strict=True), start=1
    ):
        cells = np.empty((1, n_frames), dtype=object)  # a MATLAB 1xT cell
        for i in range(n_frames):
            mask = np.zeros((H, W), np.uint8)
            if i in abnormal:
                mask[5, 7 + i] = 1  # one pixel is enough
            cells[0, i] = mask
        scipy.io.savemat(
            str(gt / "testing_label_mask" / f"{number}_label.mat"), {"volLabel": cells}
        )
    return videos, gt


def check_avenue(dataset_dir: Path) -> None:
    for split, specs in AVENUE_VIDEOS.items():
        videos = sorted((dataset_dir / split / "frames").iterdir())
        assert [v.name for v in videos] == ["01", "02"]
        for video, (first_k, n_frames) in zip(videos, specs, strict=True):
            assert frame_names(video) == [f"{i:03d}.jpg" for i in range(n_frames)]
            for i in range(n_frames):
                decoded = read_frame(video / f"{i:03d}.jpg")
                assert_close(decoded, frame_image(first_k + i))
    assert read_gt(dataset_dir / "avenue.mat") == AVENUE_GT


# --------------------------------------------------------------------------- ShanghaiTech
SHANGHAI_TRAIN = {"01_001": (0, 5), "01_002": (10, 4)}
SHANGHAI_TEST = {"01_0014": (20, 6, [0, 1, 1, 0, 0, 1]), "01_0015": (30, 5, [0, 0, 0, 0, 0])}
SHANGHAI_GT = [[(2, 3), (6, 6)], []]


def build_shanghai(folder: Path) -> Path:
    top = folder / "shanghaitech"
    for name, (first_k, n_frames) in SHANGHAI_TRAIN.items():
        write_video(top / "training" / "videos" / f"{name}.avi", first_k, n_frames)
    for name, (first_k, n_frames, labels) in SHANGHAI_TEST.items():
        frames = top / "testing" / "frames" / name
        frames.mkdir(parents=True)
        for i in range(n_frames):
            cv2.imwrite(str(frames / f"{i:03d}.jpg"), frame_image(first_k + i))
        for mask_folder in ("test_frame_mask", "test_pixel_mask"):
            (top / "testing" / mask_folder).mkdir(exist_ok=True)
        np.save(top / "testing" / "test_frame_mask" / f"{name}.npy", np.array(labels, np.int64))
        np.save(top / "testing" / "test_pixel_mask" / f"{name}.npy", np.zeros((n_frames, H, W)))
    return top


def check_shanghai(dataset_dir: Path, source: Path) -> None:
    videos = sorted((dataset_dir / "training" / "frames").iterdir())
    assert [v.name for v in videos] == list(SHANGHAI_TRAIN)
    for video, (first_k, n_frames) in zip(videos, SHANGHAI_TRAIN.values(), strict=True):
        assert frame_names(video) == [f"{i:03d}.jpg" for i in range(n_frames)]
        assert_close(read_frame(video / "001.jpg"), frame_image(first_k + 1))
    for name, (_, n_frames, labels) in SHANGHAI_TEST.items():
        out_video = dataset_dir / "testing" / "frames" / name
        assert frame_names(out_video) == [f"{i:03d}.jpg" for i in range(n_frames)]
        for i in range(n_frames):  # test frames are already JPEG: copied, not re-encoded
            original = source / "testing" / "frames" / name / f"{i:03d}.jpg"
            assert (out_video / f"{i:03d}.jpg").read_bytes() == original.read_bytes()
        mask = np.load(dataset_dir / "testing" / "test_frame_mask" / f"{name}.npy")
        assert mask.tolist() == labels
    assert not (dataset_dir / "testing" / "test_pixel_mask").exists()
    assert read_gt(dataset_dir / "shanghai.mat") == SHANGHAI_GT


def no_leftovers(root: Path) -> bool:
    """No temporary build or set-aside folders remain next to the data set."""
    return not [p for p in root.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def http_root(tmp_path):
    """(folder, base_url, requests): a loopback HTTP server over ``folder``."""
    folder = tmp_path / "www"
    folder.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- download path


def test_every_official_download_is_pinned_by_sha256_and_size():
    """A substituted archive (anyone on the plain-http path can serve one) must be refused
    before it is unpacked: every official file carries its SHA-256 and byte size."""
    downloads = [d for group in official_sources.OFFICIAL_DOWNLOADS.values() for d in group]
    names = sorted(d.url.rsplit("/", 1)[1] for d in downloads)
    assert names == ["Avenue_Dataset.zip", "UCSD_Anomaly_Dataset.tar.gz", "ground_truth_demo.zip"]
    for download in downloads:
        assert download.sha256 is not None and len(download.sha256) == 64
        assert int(download.sha256, 16) >= 0 and download.sha256 == download.sha256.lower()
        assert download.size is not None and download.size > 100_000


def test_ped2_download_end_to_end(tmp_path, http_root, monkeypatch, capsys):
    www, base, requests = http_root
    archive = make_archive(
        build_ucsd(tmp_path / "src"),
        "UCSD_Anomaly_Dataset.v1p2",
        www / "UCSD_Anomaly_Dataset.tar.gz",
    )
    download = official_sources.Download(
        f"{base}/UCSD_Anomaly_Dataset.tar.gz", archive.stat().st_size, sha256(archive)
    )
    monkeypatch.setitem(official_sources.OFFICIAL_DOWNLOADS, "ped2", (download,))
    root = tmp_path / "datasets"
    assert prep.main(["ped2", "--root", str(root), "--quiet"]) == 0
    assert "sha256" not in capsys.readouterr().err  # known: nothing to warn about
    check_ped2(root / "ped2")
    assert requests == ["/UCSD_Anomaly_Dataset.tar.gz"]
    assert not (root / "downloads").exists()  # archives go once converted...
    assert no_leftovers(root)


def test_avenue_download_keeps_archives_and_reuses_them(tmp_path, http_root, monkeypatch, capsys):
    www, base, requests = http_root
    videos, gt = build_avenue(tmp_path / "src")
    make_archive(videos, "Avenue Dataset", www / "Avenue_Dataset.zip")
    make_archive(gt, "ground_truth_demo", www / "ground_truth_demo.zip")
    monkeypatch.setitem(
        official_sources.OFFICIAL_DOWNLOADS,
        "avenue",
        (
            official_sources.Download(f"{base}/Avenue_Dataset.zip"),
            official_sources.Download(f"{base}/ground_truth_demo.zip"),
        ),
    )
    root = tmp_path / "datasets"
    prep.main(["avenue", "--root", str(root), "--keep_archive", "--quiet"])
    notes = [line for line in capsys.readouterr().err.splitlines() if "sha256" in line]
    # No hash known: one line per file says so before it is downloaded.
    assert notes == [
        f"note: no sha256 is known for {base}/{name}: the download cannot be checked against "
        "a substituted file"
        for name in ("Avenue_Dataset.zip", "ground_truth_demo.zip")
    ]
    check_avenue(root / "avenue")
    kept = root / "downloads" / "Avenue_Dataset.zip"
    assert kept.read_bytes() == (www / "Avenue_Dataset.zip").read_bytes()  # ...unless kept
    assert requests == ["/Avenue_Dataset.zip", "/ground_truth_demo.zip"]
    # A second run converts the kept archives again without downloading them.
    (root / "avenue" / "marker").write_text("old")
    prep.main(["avenue", "--root", str(root), "--quiet", "--overwrite"])
    check_avenue(root / "avenue")
    assert not (root / "avenue" / "marker").exists()
    assert len(requests) == 2
    assert no_leftovers(root)


def test_checksum_mismatch_stops_before_converting(tmp_path, http_root, monkeypatch, capsys):
    www, base, _ = http_root
    archive = make_archive(build_ucsd(tmp_path / "src"), "u", www / "UCSD_Anomaly_Dataset.tar.gz")
    wrong = "ab" * 32
    monkeypatch.setitem(
        official_sources.OFFICIAL_DOWNLOADS,
        "ped2",
        (official_sources.Download(f"{base}/UCSD_Anomaly_Dataset.tar.gz", sha256=wrong),),
    )
    root = tmp_path / "datasets"
    with pytest.raises(SystemExit) as info:
        prep.main(["ped2", "--root", str(root), "--quiet"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and wrong in err and sha256(archive) in err and base in err
    assert not (root / "ped2").exists()
    assert not list((root / "downloads").iterdir())


# --------------------------------------------------------------------------- --source


@pytest.mark.parametrize("as_archive", [True, False])
def test_ped2_from_source(tmp_path, as_archive):
    top = build_ucsd(tmp_path / "src")
    source = (
        make_archive(top, "UCSD_Anomaly_Dataset.v1p2", tmp_path / "UCSD.tgz") if as_archive else top
    )
    root = tmp_path / "datasets"
    assert prep.prepare("ped2", root, [source], progress=False) == root / "ped2"
    check_ped2(root / "ped2")
    assert source.exists()  # the user's own source is never deleted
    assert no_leftovers(root)


@pytest.mark.parametrize("as_archive", [True, False])
def test_avenue_from_source(tmp_path, as_archive):
    videos, gt = build_avenue(tmp_path / "src")
    if as_archive:
        sources = [
            make_archive(videos, "Avenue Dataset", tmp_path / "Avenue_Dataset.zip"),
            make_archive(gt, "ground_truth_demo", tmp_path / "ground_truth_demo.zip"),
        ]
    else:
        sources = [tmp_path / "src"]  # one folder holding both extracted archives
    prep.prepare("avenue", tmp_path / "out", sources, progress=False)
    check_avenue(tmp_path / "out" / "avenue")


@pytest.mark.parametrize("as_archive", [True, False])
def test_shanghai_from_source(tmp_path, as_archive):
    top = build_shanghai(tmp_path / "src")
    source = make_archive(top, "shanghaitech", tmp_path / "st.tar.gz") if as_archive else top
    prep.prepare("shanghai", tmp_path / "out", [source], progress=False)
    check_shanghai(tmp_path / "out" / "shanghai", top)
    dataset_dir = tmp_path / "out" / "shanghai"
    videos = list_videos(find_split_dir(dataset_dir, "testing"))
    labels = load_frame_labels(dataset_dir, videos)
    assert labels["01_0014"].tolist() == SHANGHAI_TEST["01_0014"][2]


# --------------------------------------------------------------------------- errors


def test_shanghai_requires_source(tmp_path):
    with pytest.raises(InputError, match="--source") as info:
        prep.prepare("shanghai", tmp_path, None, progress=False)
    assert official_sources.SHANGHAI_PAGE in str(info.value)
    assert not list(tmp_path.iterdir())


def test_wrong_layout_names_the_expected_one(tmp_path):
    wrong = tmp_path / "wrong"
    (wrong / "videos").mkdir(parents=True)
    with pytest.raises(InputError, match="UCSDped2/ with Train/Train001"):
        prep.prepare("ped2", tmp_path / "out", [wrong], progress=False)
    with pytest.raises(InputError, match="training_videos"):
        prep.prepare("avenue", tmp_path / "out", [wrong], progress=False)
    with pytest.raises(InputError, match="test_frame_mask"):
        prep.prepare("shanghai", tmp_path / "out", [wrong], progress=False)
    with pytest.raises(InputError, match="does not exist"):
        prep.prepare("ped2", tmp_path / "out", [tmp_path / "nothing.tar.gz"], progress=False)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="neither a folder nor"):
        prep.prepare("ped2", tmp_path / "out", [tmp_path / "notes.txt"], progress=False)
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="damaged"):
        prep.prepare("ped2", tmp_path / "out", [tmp_path / "broken.zip"], progress=False)
    archive = make_archive(build_ucsd(tmp_path / "src"), "u", tmp_path / "ucsd.tar.gz")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated.tar.gz.*damaged or incomplete"):
        prep.prepare("ped2", tmp_path / "out", [truncated], progress=False)
    assert no_leftovers(tmp_path / "out")


def test_video_frames_are_written_as_they_are_decoded(tmp_path, monkeypatch):
    """Memory does not grow with a video's length: each decoded frame is on disk before the
    next is decoded (a 1080p AVI of 400 frames held 2.9 GB when all were kept)."""
    n_frames, held, most_held = 1001, [0], [0]

    class Capture:  # a video of n_frames frames, counting those decoded but not yet written
        def __init__(self, _path: str) -> None:
            self.index = 0

        def read(self):
            if self.index == n_frames:
                return False, None
            held[0] += 1
            most_held[0] = max(most_held[0], held[0])
            self.index += 1
            return True, frame_image(self.index - 1)

        def release(self) -> None:
            pass

    real_write = converters._write_image

    def write(path: Path, image: np.ndarray) -> None:
        real_write(path, image)
        held[0] -= 1

    monkeypatch.setattr(converters.cv2, "VideoCapture", Capture)
    monkeypatch.setattr(converters, "_write_image", write)
    assert converters._decode_video(tmp_path / "long.avi", tmp_path / "out") == n_frames
    assert most_held[0] == 1
    # Four digits once the video needs them, and the frames in decoding order.
    assert frame_names(tmp_path / "out") == [f"{k:04d}.jpg" for k in range(n_frames)]
    for k in (0, 7, 1000):
        assert_close(read_frame(tmp_path / "out" / f"{k:04d}.jpg"), frame_image(k))


def test_avenue_without_ground_truth(tmp_path):
    videos, _ = build_avenue(tmp_path / "src")
    with pytest.raises(InputError, match="ground_truth_demo.zip"):
        prep.prepare("avenue", tmp_path / "out", [videos], progress=False)


def test_failure_keeps_the_previous_dataset(tmp_path):
    top = build_ucsd(tmp_path / "src")
    root = tmp_path / "datasets"
    prep.prepare("ped2", root, [top], progress=False)
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    # Ground truth that lists a third test video no longer matches: conversion fails late,
    # after all frames were written.
    (top / "UCSDped2" / "Test" / "UCSDped2.m").write_text(
        PED2_M + "TestVideoFile{end+1}.gt_frame = [1:2];\n"
    )
    with pytest.raises(InputError, match="UCSDped2.m"):
        prep.prepare("ped2", root, [top], progress=False)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
    check_ped2(root / "ped2")
    assert no_leftovers(root)


def test_source_inside_target_is_refused(tmp_path):
    root = tmp_path / "datasets"
    top = build_ucsd(root / "ped2")
    with pytest.raises(InputError, match="lies inside"):
        prep.prepare("ped2", root, [top], progress=False)
    assert top.is_dir()


def test_cli_prints_one_line_and_exits_nonzero(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        prep.main(["shanghai", "--root", str(tmp_path)])
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--source" in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_a_file_as_root_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match=r"--root .*file cannot hold the data set"):
        prep.prepare("ped2", blocker, [tmp_path / "missing.tgz"], progress=False)
