"""Frame label formats (data/labels.py) on hand-made files and on the real Ped2 labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from common.errors import InputError
from data.frame_folders import Video, find_split_dir, list_videos
from data.labels import label_runs, load_frame_labels, write_ano_pred_mat

# Three test videos of 6, 4 and 5 frames, with these hand-written labels (1 = abnormal).
LENGTHS = {"01": 6, "02": 4, "03": 5}
EXPECTED = {
    "01": [0, 1, 1, 0, 1, 1],  # frames 2-3 and 5-6 (1-based)
    "02": [0, 0, 0, 0],  # no anomaly
    "03": [1, 1, 1, 1, 1],  # whole video
}


def _videos(root: Path) -> list[Video]:
    """Fake videos: labels only need names and frame counts, never pixels."""
    return [
        Video(name, tuple(root / name / f"{i:03d}.jpg" for i in range(n)))
        for name, n in LENGTHS.items()
    ]


def _assert_expected(labels: dict[str, np.ndarray]) -> None:
    assert list(labels) == list(EXPECTED)
    for name, values in labels.items():
        assert values.dtype == np.int64
        assert values.tolist() == EXPECTED[name], name


def _cell(arrays: list[np.ndarray]) -> np.ndarray:
    cells = np.empty((1, len(arrays)), dtype=object)
    for index, array in enumerate(arrays):
        cells[0, index] = array
    return cells


def _write_gt_mat(path: Path) -> None:
    ranges = [
        np.array([[2, 5], [3, 6]], dtype=np.uint8),  # columns [first; last]
        np.zeros((2, 0), dtype=np.uint8),
        np.array([[1], [5]], dtype=np.uint16),
    ]
    scipy.io.savemat(path, {"gt": _cell(ranges)})


def test_ano_pred_mat(tmp_path):
    _write_gt_mat(tmp_path / "toy.mat")
    # What loadmat returns for a 1xV cell: an object array of 2xK arrays.
    gt = scipy.io.loadmat(tmp_path / "toy.mat")["gt"]
    assert gt.shape == (1, 3) and gt.dtype == object and gt[0, 0].shape == (2, 2)
    _assert_expected(load_frame_labels(tmp_path, _videos(tmp_path), tmp_path / "toy.mat"))


def test_ucsd_m_with_several_ranges_and_single_frames(tmp_path):
    label_file = tmp_path / "UCSDtoy.m"
    label_file.write_text(
        "TestVideoFile = {};\n"
        "% video 1: two ranges, one of them a single number\n"
        "TestVideoFile{end+1}.gt_frame = [2:3, 5, 6];\n"
        "TestVideoFile{end+1}.gt_frame = [];\n"
        "TestVideoFile{end+1}.gt_frame = [1:5];\n"
    )
    _assert_expected(load_frame_labels(tmp_path, _videos(tmp_path), label_file))


@pytest.mark.parametrize("shape", [(1, 15), (15,)])
def test_concatenated_npy(tmp_path, shape):
    flat = np.concatenate([EXPECTED[name] for name in LENGTHS]).reshape(shape)
    np.save(tmp_path / "frame_labels_toy.npy", flat)
    labels = load_frame_labels(tmp_path, _videos(tmp_path), tmp_path / "frame_labels_toy.npy")
    _assert_expected(labels)


def test_test_frame_mask_folder(tmp_path):
    mask_dir = tmp_path / "testing" / "test_frame_mask"
    mask_dir.mkdir(parents=True)
    for name, values in EXPECTED.items():
        np.save(mask_dir / f"{name}.npy", np.array(values, dtype=np.int8))
    _assert_expected(load_frame_labels(tmp_path, _videos(tmp_path), mask_dir))
    _assert_expected(load_frame_labels(tmp_path, _videos(tmp_path)))  # found automatically


def _write_vol_label_folder(folder: Path) -> None:
    folder.mkdir(parents=True)
    for number, name in enumerate(LENGTHS, start=1):  # 1_label.mat belongs to video "01"
        masks = []
        for abnormal in EXPECTED[name]:
            mask = np.zeros((4, 5), dtype=np.uint8)
            if abnormal:
                mask[3, number] = 1  # one pixel is enough
            masks.append(mask)
        scipy.io.savemat(folder / f"{number}_label.mat", {"volLabel": _cell(masks)})


def test_avenue_vol_label_folder(tmp_path):
    _write_vol_label_folder(tmp_path / "testing_label_mask")
    videos = _videos(tmp_path)
    _assert_expected(load_frame_labels(tmp_path, videos, tmp_path / "testing_label_mask"))
    _assert_expected(load_frame_labels(tmp_path, videos))  # found automatically
    with pytest.raises(InputError, match="pass its folder"):
        load_frame_labels(tmp_path, videos, tmp_path / "testing_label_mask" / "1_label.mat")


def test_write_ano_pred_mat_round_trips(tmp_path):
    path = tmp_path / "out" / "toy.mat"
    write_ano_pred_mat(path, [np.array(EXPECTED[name]) for name in LENGTHS])
    gt = scipy.io.loadmat(path)["gt"]
    assert gt.shape == (1, 3)
    assert gt[0, 0].tolist() == [[2, 5], [3, 6]]
    assert gt[0, 1].shape == (2, 0)
    assert gt[0, 2].tolist() == [[1], [5]]
    _assert_expected(load_frame_labels(tmp_path, _videos(tmp_path), path))
    assert [p.name for p in path.parent.iterdir()] == ["toy.mat"]  # no temp files left


def test_label_runs_against_a_slow_loop():
    rng = np.random.default_rng(0)
    for _ in range(50):
        labels = rng.integers(0, 2, int(rng.integers(0, 30)))
        runs, start = [], None
        for index, value in enumerate(list(labels) + [0]):
            if value and start is None:
                start = index + 1
            if not value and start is not None:
                runs.append((start, index))
                start = None
        assert [tuple(column) for column in label_runs(labels).T.tolist()] == runs


def test_frame_count_mismatch_names_video_file_and_counts(tmp_path):
    mask_dir = tmp_path / "test_frame_mask"
    mask_dir.mkdir()
    for name, values in EXPECTED.items():
        np.save(mask_dir / f"{name}.npy", np.array(values + [0] * (name == "02")))
    with pytest.raises(InputError) as error:
        load_frame_labels(tmp_path, _videos(tmp_path), mask_dir)
    message = str(error.value)
    assert "'02'" in message and "02.npy" in message and " 5 " in message and " 4 " in message

    label_file = tmp_path / "short.m"
    label_file.write_text("TestVideoFile{end+1}.gt_frame = [7:9];\n" * 3)
    with pytest.raises(InputError, match=r"short\.m.*'01'.*9.*6 frames"):
        load_frame_labels(tmp_path, _videos(tmp_path), label_file)

    np.save(tmp_path / "flat.npy", np.zeros(14, dtype=np.int64))
    with pytest.raises(InputError, match=r"flat\.npy has 14 .* 15 frames"):
        load_frame_labels(tmp_path, _videos(tmp_path), tmp_path / "flat.npy")


def test_video_count_mismatch(tmp_path):
    _write_gt_mat(tmp_path / "toy.mat")
    with pytest.raises(InputError, match=r"toy\.mat has labels for 3 videos .* 2 test videos"):
        load_frame_labels(tmp_path, _videos(tmp_path)[:2], tmp_path / "toy.mat")
    four = _videos(tmp_path) + [Video("04", (tmp_path / "x.jpg",))]
    with pytest.raises(InputError, match=r"no labels for video '04'"):
        load_frame_labels(tmp_path, four, tmp_path / "toy.mat")


def test_unknown_format_and_nothing_found(tmp_path):
    (tmp_path / "labels.csv").write_text("0,1")
    with pytest.raises(InputError, match=r"labels\.csv.*supported:.*ano_pred"):
        load_frame_labels(tmp_path, _videos(tmp_path), tmp_path / "labels.csv")
    scipy.io.savemat(tmp_path / "other.mat", {"scores": np.zeros(3)})
    with pytest.raises(InputError, match=r"other\.mat.*supported"):
        load_frame_labels(tmp_path, _videos(tmp_path), tmp_path / "other.mat")
    np.save(tmp_path / "scores.npy", np.array([0.5, 0.2]))
    with pytest.raises(InputError, match="other than 0 and 1"):
        load_frame_labels(tmp_path, _videos(tmp_path), tmp_path / "scores.npy")
    (tmp_path / "testing").mkdir()
    with pytest.raises(InputError) as error:
        load_frame_labels(tmp_path, _videos(tmp_path))
    assert "--label_path" in str(error.value) and str(tmp_path / "testing") in str(error.value)


def test_auto_discovery_order(tmp_path):
    # A *.m and a frame_labels npy that disagree with the .mat: the .mat must win.
    wrong = np.zeros(15, dtype=np.int64)
    np.save(tmp_path / "frame_labels_toy.npy", wrong)
    (tmp_path / "UCSDtoy.m").write_text("TestVideoFile{end+1}.gt_frame = [];\n" * 3)
    _write_gt_mat(tmp_path / "toy.mat")
    _assert_expected(load_frame_labels(tmp_path, _videos(tmp_path), dataset_type="toy"))
    _assert_expected(load_frame_labels(tmp_path, _videos(tmp_path)))  # the only .mat with gt

    (tmp_path / "toy.mat").unlink()
    np.save(tmp_path / "frame_labels_toy.npy", np.concatenate(list(EXPECTED.values())))
    _assert_expected(load_frame_labels(tmp_path, _videos(tmp_path), dataset_type="toy"))

    (tmp_path / "frame_labels_toy.npy").unlink()
    assert all(v.sum() == 0 for v in load_frame_labels(tmp_path, _videos(tmp_path)).values())

    # Two candidates of the same rank: ask the user to choose.
    (tmp_path / "UCSDother.m").write_text("TestVideoFile{end+1}.gt_frame = [];\n" * 3)
    with pytest.raises(InputError, match="--label_path"):
        load_frame_labels(tmp_path, _videos(tmp_path))


# Real data: the three Ped2 label files in circulation must agree frame by frame.
SHARED_LABELS = Path(__file__).resolve().parents[2] / "shared" / "labels"


def test_ped2_label_formats_agree(ped2_dir):
    videos = list_videos(find_split_dir(ped2_dir, "testing"))
    assert len(videos) == 12 and sum(len(video) for video in videos) == 2010
    from_mat = load_frame_labels(ped2_dir, videos)  # finds ped2.mat
    label_files = [SHARED_LABELS / "UCSDped2.m", SHARED_LABELS / "frame_labels_ped2.npy"]
    for label_file in label_files:
        if not label_file.is_file():
            pytest.skip(f"{label_file} not found")
        other = load_frame_labels(ped2_dir, videos, label_file)
        assert all(np.array_equal(from_mat[name], other[name]) for name in from_mat), label_file
    kept = np.concatenate([labels[4:] for labels in from_mat.values()])
    assert len(kept) == 1962 and int(kept.sum()) == 1620
