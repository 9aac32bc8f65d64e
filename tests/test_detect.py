"""detect.py: streaming scores, calibration, decisions and outputs on synthetic videos."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import detect
from common.cli import run_cli
from common.errors import InputError
from data import sources as frame_sources
from data.decoding import decode_frame
from data.frame_folders import list_videos
from data.frames import FrameWindowDataset, frames_to_tensor
from data.labels import write_ano_pred_mat
from inference import calibration as calib
from inference import detection, events, streaming
from inference.video import evaluate_video
from model import LGNNet, init_memory_items
from model import checkpoint as checkpoint_format
from model.lgn_net import Encoded, InferOutput
from model.memory import feature_distance, flatten_query

SIZE = 32  # stub scenes are SIZE x SIZE
TINY = 8  # the real model runs at TINY x TINY


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # On a busy 2-core machine two OpenMP threads per process thrash: one is ~20x faster
    # for these tiny convolutions.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- synthetic data


def scene(
    num_frames: int,
    seed: int,
    anomaly: tuple[int, int] | None = None,
    noise: tuple[float, ...] = (5.0,),
    size: int = SIZE,
) -> list[np.ndarray]:
    """A fixed camera: colour gradient, a dark square walking 1 px/frame (normal), sensor noise
    cycling through ``noise`` (grey levels). Frames ``anomaly[0]..anomaly[1]`` add a large
    white block jumping to a new random place every frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] * (32 / size)
    background = np.stack([60 + 2 * xx, 80 + 2 * yy, 100 + xx + yy], -1).astype(np.float32)
    frames = []
    for t in range(num_frames):
        frame = background.copy()
        x = int((4 + t) % 28 * size / 32)
        frame[size * 3 // 8 : size // 2, x : x + size // 8] = 40
        if anomaly is not None and anomaly[0] <= t <= anomaly[1]:
            ax, ay = rng.integers(0, size * 5 // 8, 2)
            frame[ay : ay + size * 3 // 8, ax : ax + size * 3 // 8] = 255
        frame += rng.normal(0, noise[t % len(noise)], frame.shape)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def write_frames(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{index + 1:03d}.png"), frame)
    return folder


def read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


class PreviousFramePredictor(torch.nn.Module):
    """Scoring stub with LGNNet's inference interface: predicts the next frame as the last
    input frame; its queries are the 8x8-pooled colours of that frame (plus a constant), so a
    memory of the normal scene's pooled colours gives small distances on normal content."""

    t_length = 3
    channels = 3

    def encode(self, frames: torch.Tensor) -> Encoded:
        last = frames[:, -self.channels :]
        pooled = F.avg_pool2d(last, 8)
        return Encoded(torch.cat([pooled, torch.ones_like(pooled[:, :1])], 1), last)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """LGNNet's per-frame part: nothing to reuse here, so the frames themselves."""
        return frames

    def encode_with_gates(self, windows: torch.Tensor, gates: object) -> Encoded:
        return self.encode(windows)

    def infer_from_encoded(self, encoded: Encoded, items: torch.Tensor) -> InferOutput:
        queries = flatten_query(encoded.features)
        return InferOutput(encoded.spatiotemporal, queries, feature_distance(queries, items))


def stub_scorer(**kwargs) -> streaming.StreamingScorer:
    model = PreviousFramePredictor()
    empty_scene = frame_sources.preprocess(scene(1, seed=99, noise=(0.0,))[0], SIZE, SIZE)[None]
    items = flatten_query(model.encode(torch.cat([empty_scene] * 2, 1)).features)
    return streaming.StreamingScorer(model, items, SIZE, SIZE, **kwargs)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised LGNNet (t_length 3, 8x8 frames), written by the checkpoint
    writer train.py uses."""
    torch.manual_seed(0)
    model = LGNNet(t_length=3, msize=3, fdim=16, mdim=16)
    items = init_memory_items(3, 16, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    checkpoint_format.write(checkpoint_format.build(model, items, (TINY, TINY), epoch=7), path)
    return path


FP32 = ("--precision", "fp32")


def cli(*argv: str) -> dict:
    return detect.main(detect.get_args_parser().parse_args([str(a) for a in argv]))


# --------------------------------------------------------------------------- calibration maths


def test_calibration_statistics_and_threshold_by_hand():
    psnr = np.array([30.0, 32.0, 34.0, 36.0])
    distance = np.array([0.4, 0.3, 0.2, 0.1])
    calibration = calib.calibration_from_scores(psnr, distance, lambda_=0.5, false_alarm_rate=0.5)
    std_psnr, std_distance = np.sqrt(5.0), np.sqrt(0.0125)
    assert calibration["psnr_mean"] == pytest.approx(33.0)
    assert calibration["psnr_std"] == pytest.approx(std_psnr)
    assert calibration["distance_mean"] == pytest.approx(0.25)
    assert calibration["distance_std"] == pytest.approx(std_distance)
    # Each frame: 0.5 z(psnr) - 0.5 z(distance) = z(psnr), as distance mirrors psnr here.
    expected = (psnr - 33.0) / std_psnr
    normality = calib.normality_from_calibration(psnr, distance, calibration)
    np.testing.assert_allclose(normality, expected)
    assert calibration["threshold"] == pytest.approx(np.median(expected))
    assert calibration["normality_quantiles"][0] == pytest.approx(expected.min())
    assert calibration["normality_quantiles"][-1] == pytest.approx(expected.max())
    json.dumps(calibration)  # plain floats and lists only


def test_threshold_flags_the_requested_share_of_normal_frames():
    rng = np.random.default_rng(0)
    psnr, distance = rng.normal(30, 2, 20_000), rng.gamma(2.0, 0.01, 20_000)
    calibration = calib.calibration_from_scores(psnr, distance)
    normality = calib.normality_from_calibration(psnr, distance, calibration)
    for rate in (0.005, 0.01, 0.05, 0.2):
        flagged = (normality < calib.threshold_for_rate(calibration, rate)).mean()
        assert flagged == pytest.approx(rate, abs=0.0015)
    with pytest.raises(InputError, match="false_alarm_rate"):
        calib.threshold_for_rate(calibration, 0.0)


def test_events_are_runs_of_consecutive_anomalous_frames():
    tracker = events.EventTracker()
    decisions = [("a", 3, 0.5, False), ("a", 4, -3.0, True), ("a", 5, -5.0, True)]
    decisions += [("a", 6, -4.0, True), ("a", 7, 0.1, False), ("a", 9, -2.0, True)]
    decisions += [("b", 2, -6.0, True)]
    for video, frame, normality, anomaly in decisions:
        tracker.update(video, frame, normality, anomaly)
    tracker.close()
    assert tracker.events == [
        {"video": "a", "start": 4, "end": 6, "peak_frame": 5, "peak_score": -5.0},
        {"video": "a", "start": 9, "end": 9, "peak_frame": 9, "peak_score": -2.0},
        {"video": "b", "start": 2, "end": 2, "peak_frame": 2, "peak_score": -6.0},
    ]


def test_decision_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 0])
    anomaly = np.array([0, 1, 1, 1, 0, 0])
    normality = np.array([2.0, -1.0, -3.0, -2.0, 0.5, 1.0])
    metrics = events.decision_metrics(normality, anomaly, labels)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["false_alarm_rate"] == pytest.approx(1 / 3)
    # Normal frames' normality {2, -1, 1} vs abnormal {-3, -2, 0.5}: 8 of 9 pairs ordered.
    assert metrics["auc_calibrated"] == pytest.approx(8 / 9)


# --------------------------------------------------------------------------- detection


def test_injected_anomaly_is_flagged_there_and_nowhere_else(tmp_path):
    # Normal footage with sensor noise varying from frame to frame; the test video's noise
    # lies inside that range, so its normal frames are ordinary for the calibration.
    # 100 scored frames: the fewest that support a 1 % false-alarm rate.
    calibration_video = write_video(tmp_path / "normal.avi", scene(102, 1, noise=(2, 4, 6, 8)))
    first, last = 20, 27
    test_video = write_video(tmp_path / "street.avi", scene(40, 2, anomaly=(first, last)))

    scorer = stub_scorer(keep_error_maps=True)
    calibration = calib.calibrate(scorer, frame_sources.open_input(str(calibration_video)))
    assert calibration["frames"] == 102 - 2 and calibration["videos"] == 1
    outputs = detection.DetectionOutputs(
        scores=tmp_path / "out" / "scores.csv", video=tmp_path / "out" / "annotated.mp4"
    )
    result = detection.detect(
        scorer,
        frame_sources.open_input(str(test_video)),
        calibration,
        false_alarm_rate=0.01,
        outputs=outputs,
    )
    outputs.commit(result.events)

    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert rows[0] == "video,frame,psnr,feature_distance,normality,anomaly"
    table = [row.split(",") for row in rows[1:]]
    assert [int(row[1]) for row in table] == list(range(2, 40))  # first t_length-1 unscored
    flagged = {int(row[1]) for row in table if row[5] == "1"}
    # The predictor still shows the block one frame after it vanished, hence last + 1.
    assert flagged == set(range(first, last + 2))
    assert result.frames == 38 and result.anomalous_frames == len(flagged)
    for row in table:  # decisions follow the stored threshold
        assert (float(row[4]) < result.threshold) == (row[5] == "1")
    assert [(e["start"], e["end"]) for e in result.events] == [(first, last + 1)]
    peak = min(table, key=lambda row: float(row[4]))
    assert result.events[0]["peak_frame"] == int(peak[1])
    assert result.events[0]["peak_score"] == pytest.approx(float(peak[4]), abs=1e-5)

    video = read_video(tmp_path / "out" / "annotated.mp4")
    assert len(video) == 40
    assert video[0].shape[1] > 2 * video[0].shape[0]  # frame | heat map | plot

    def red_border(frame: np.ndarray) -> bool:
        blue, green, red = frame[2, 20:200].astype(int).mean(0)
        return red > 150 and blue < 80 and green < 80

    assert red_border(video[24]) and not red_border(video[10])
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_streaming_scores_equal_evaluate_video_and_cli_round_trip(tmp_path, tiny_checkpoint):
    """The real model through the CLI: calibrate, then detect; the CSV's PSNR and distances
    equal evaluate_video's on the same decoded frames. Both run in fp32: with --precision auto
    the CLI would compute in bf16 on CPUs that have it natively, and compare unlike with like."""
    checkpoint = tmp_path / "calibrated.pth"
    normal = write_video(tmp_path / "normal.avi", scene(6, 3, noise=(2, 6), size=16))
    # 4 scored frames support a false-alarm rate of 1 in 4 at the least.
    rate = ("--false_alarm_rate", "0.25")
    cli("--calibrate", "--checkpoint", tiny_checkpoint, "--input", normal, *rate, *FP32)
    cli(
        "--calibrate",
        "--checkpoint",
        tiny_checkpoint,
        "--input",
        normal,
        "--output_checkpoint",
        checkpoint,
        *rate,
        *FP32,
    )
    saved = torch.load(checkpoint, weights_only=True)
    original = torch.load(tiny_checkpoint, weights_only=True)  # calibrated in place above
    assert saved["calibration"] == original["calibration"]  # deterministic
    assert saved["epoch"] == 7 and torch.equal(saved["items"], original["items"])
    calibration = saved["calibration"]
    assert calibration["frames"] == 4 and calibration["h"] == TINY
    assert len(calibration["normality_quantiles"]) == 1001

    test_frames = scene(5, 4, size=16)
    clip = write_video(tmp_path / "clip.avi", test_frames)
    csv_path, events, report = tmp_path / "s.csv", tmp_path / "e.json", tmp_path / "r.json"
    summary = cli(
        "--checkpoint", checkpoint, "--input", clip, "--csv", csv_path, "--events", events,
        "--report", report, "--false_alarm_rate", "0.3", *FP32,
    )  # fmt: skip
    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]

    model = LGNNet(t_length=3, msize=3, fdim=16, mdim=16)
    model.load_state_dict(saved["model"])
    decoded = torch.stack(
        [frame_sources.preprocess(frame, TINY, TINY) for frame in read_video(clip)]
    )
    reference = evaluate_video(model, decoded, saved["items"], gamma=0.009, batch_size=2)
    np.testing.assert_allclose([float(r[2]) for r in rows], reference.psnr, rtol=1e-5)
    np.testing.assert_allclose([float(r[3]) for r in rows], reference.feature_distance, rtol=1e-4)
    threshold = calib.threshold_for_rate(calibration, 0.3)
    expected_normality = calib.normality_from_calibration(
        reference.psnr, reference.feature_distance, calibration
    )
    np.testing.assert_allclose([float(r[4]) for r in rows], expected_normality, atol=1e-4)
    assert [int(r[5]) for r in rows] == [int(n < threshold) for n in expected_normality]
    assert json.loads(report.read_text())["threshold"] == pytest.approx(threshold)
    assert summary["frames"] == 3
    assert isinstance(json.loads(events.read_text()), list)


def test_preprocessing_matches_the_training_loader(tmp_path):
    frame = scene(1, 5, size=40)[0][:, :36]  # odd aspect: resized, not cropped
    path = tmp_path / "f.png"
    cv2.imwrite(str(path), frame)
    expected = frames_to_tensor(decode_frame(path, 16, 24))
    assert torch.equal(frame_sources.preprocess(frame, 16, 24), expected)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert frame_sources.preprocess(grey, 16, 24).shape == (3, 16, 24)


def test_calibrate_training_run_reuses_the_training_frames(tmp_path):
    split = tmp_path / "training"
    write_frames(split / "01", scene(8, 6, noise=(2, 6)))
    write_frames(split / "02", scene(6, 7, noise=(4,)))
    dataset = FrameWindowDataset(list_videos(split), SIZE, SIZE, t_length=3)
    scorer = stub_scorer()
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {}, "items": scorer.trained_items, "epoch": 3}, path)

    calibration = calib.calibrate_training_run(
        path, scorer.model, scorer.trained_items, dataset, false_alarm_rate=0.1
    )
    saved = torch.load(path, weights_only=True)
    assert saved["calibration"] == calibration and saved["epoch"] == 3
    assert calibration["frames"] == (8 - 2) + (6 - 2) and calibration["videos"] == 2

    # The same frames read from the folders give the same statistics.
    again = calib.calibrate(stub_scorer(), frame_sources.open_input(str(split)), 0.6, 0.1)
    assert again["psnr_mean"] == pytest.approx(calibration["psnr_mean"])
    assert again["distance_std"] == pytest.approx(calibration["distance_std"])


def test_max_frames_stops_a_stream_and_videos_restart_from_the_trained_memory(tmp_path):
    folder = tmp_path / "clips"
    write_frames(folder / "a", scene(10, 8))
    write_frames(folder / "b", scene(10, 8))  # identical to "a"
    scorer = stub_scorer()
    calibration = calib.calibration_from_scores(
        np.linspace(30.0, 32.0, 100), np.linspace(0.001, 0.003, 100)
    )
    result = detection.detect(
        scorer, frame_sources.open_input(str(folder)), calibration, keep_scores=True, max_frames=16
    )
    a, b = result.per_video["a"], result.per_video["b"]
    assert a["frame"] == list(range(2, 10)) and b["frame"] == list(range(2, 6))
    assert b["psnr"] == a["psnr"][:4] and b["distance"] == a["distance"][:4]


def test_dataset_mode_scores_decisions_against_the_frame_labels(tmp_path):
    """The benchmark path: calibrate on training/ only, detect on testing/, metrics against
    the dataset's own label file."""
    root = tmp_path / "toy"
    write_frames(root / "training" / "frames" / "01", scene(102, 10, noise=(2, 4, 6, 8)))
    write_frames(root / "testing" / "frames" / "01", scene(24, 11, anomaly=(10, 14)))
    write_frames(root / "testing" / "frames" / "02", scene(16, 12))
    labels = [np.zeros(24, int), np.zeros(16, int)]
    labels[0][10:15] = 1
    write_ano_pred_mat(root / "toy.mat", labels)

    scorer = stub_scorer()
    calibration = calib.calibrate(scorer, frame_sources.dataset_sources(root, "training"))
    assert calibration["frames"] == 100
    result, metrics = detection.score_dataset(scorer, calibration, root, false_alarm_rate=0.01)

    flagged = [
        (name, frame)
        for name, scores in result.per_video.items()
        for frame, anomaly in zip(scores["frame"], scores["anomaly"], strict=True)
        if anomaly
    ]
    # Flagged: the 5 abnormal frames and the one after them (the stub's lag), nothing else.
    assert flagged == [("01", f) for f in range(10, 16)]
    assert metrics["frames"] == (24 - 2) + (16 - 2) and metrics["abnormal_frames"] == 5
    assert metrics["precision"] == pytest.approx(5 / 6)
    assert metrics["recall"] == 1.0
    assert metrics["f1"] == pytest.approx(10 / 11)
    assert metrics["false_alarm_rate"] == pytest.approx(1 / 31)
    assert 0.9 < metrics["auc_calibrated"] <= 1.0
    assert 0.0 <= metrics["auc_minmax_per_video"] <= 1.0


# --------------------------------------------------------------------------- bad inputs


def test_unreadable_inputs_give_one_line_errors_naming_them(tmp_path):
    with pytest.raises(InputError, match="nowhere.mp4 does not exist"):
        frame_sources.open_input(str(tmp_path / "nowhere.mp4"))

    garbage = tmp_path / "broken.avi"
    garbage.write_bytes(b"RIFF" + bytes(np.random.default_rng(0).integers(0, 256, 4000)))
    with pytest.raises(InputError, match="broken.avi"):
        sources = frame_sources.open_input(str(garbage))
        list(sources[0].frames())

    truncated = write_video(tmp_path / "cut.avi", scene(20, 1))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.warns(UserWarning, match="cut.avi ended after .* of its 20 announced frames"):
        frames = list(frame_sources.open_input(str(truncated))[0].frames())
    assert 0 < len(frames) < 20

    folder = write_frames(tmp_path / "frames", scene(4, 9))
    (folder / "003.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="003.png"):
        list(frame_sources.open_input(str(folder))[0].frames())

    with pytest.raises(InputError, match="cannot open camera 97"):
        frame_sources.open_input("97")

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        frame_sources.open_input(str(tmp_path / "empty"))


def test_checkpoint_without_calibration_says_how_to_calibrate(tmp_path, tiny_checkpoint):
    bare = tmp_path / "bare.pth"
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint.pop("calibration", None)
    torch.save(checkpoint, bare)
    clip = write_video(tmp_path / "clip.avi", scene(4, 1, size=16))
    with pytest.raises(InputError, match="--calibrate"):
        cli("--checkpoint", bare, "--input", clip)


def test_stream_ending_before_one_window_writes_empty_outputs_and_exits_2(
    tmp_path, tiny_checkpoint, capsys
):
    calibrated = calibrated_copy(tiny_checkpoint, tmp_path)
    short = write_video(tmp_path / "short.avi", scene(2, 1, size=16))  # t_length is 3
    csv_path, events = tmp_path / "s.csv", tmp_path / "e.json"
    argv = ["--checkpoint", calibrated, "--input", short, "--csv", csv_path, "--events", events]
    args = detect.get_args_parser().parse_args([str(a) for a in argv])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(detect.main, args)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "fewer than the 3 needed" in stderr and "no frame of" in stderr
    assert csv_path.read_text().splitlines() == [",".join(detection.CSV_FIELDS)]
    assert json.loads(events.read_text()) == []


def calibrated_copy(tiny_checkpoint: Path, folder: Path) -> Path:
    """The tiny checkpoint with a 100-frame calibration, written to ``folder``."""
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["calibration"] = calib.calibration_from_scores(
        np.linspace(20.0, 21.0, 100), np.linspace(0.1, 0.2, 100)
    )
    torch.save(checkpoint, folder / "calibrated.pth")
    return folder / "calibrated.pth"


def stop_after_four_frames(monkeypatch, stop) -> None:
    """Make detection call ``stop()`` when the fifth frame arrives."""
    import inference.detection

    real = inference.detection.iter_scores

    def stopping(*args, **kwargs):
        for index, item in enumerate(real(*args, **kwargs)):
            if index == 4:
                stop()
            yield item

    monkeypatch.setattr(inference.detection, "iter_scores", stopping)


def test_ctrl_c_keeps_the_outputs_so_far_and_exits_130(
    tmp_path, tiny_checkpoint, monkeypatch, capsys
):
    calibrated = calibrated_copy(tiny_checkpoint, tmp_path)
    clip = write_video(tmp_path / "clip.avi", scene(8, 1, size=16))

    def ctrl_c():
        raise KeyboardInterrupt

    stop_after_four_frames(monkeypatch, ctrl_c)
    csv_path = tmp_path / "s.csv"
    argv = ["--checkpoint", calibrated, "--input", clip, "--csv", csv_path, *FP32]
    with pytest.raises(SystemExit) as exited:
        run_cli(detect.main, detect.get_args_parser().parse_args([str(a) for a in argv]))
    assert exited.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("interrupted: the outputs")
    assert len(csv_path.read_text().splitlines()) == 1 + 2  # header, frames 2 and 3


def test_sigterm_keeps_the_outputs_so_far_and_exits_143(tmp_path, tiny_checkpoint, monkeypatch):
    import signal

    calibrated = calibrated_copy(tiny_checkpoint, tmp_path)
    clip = write_video(tmp_path / "clip.avi", scene(8, 1, size=16))
    # As `timeout`, `docker stop` or systemd would: a real signal, handled by run_cli.
    stop_after_four_frames(monkeypatch, lambda: signal.raise_signal(signal.SIGTERM))
    out = tmp_path / "out"
    out.mkdir()
    argv = ["--checkpoint", calibrated, "--input", clip, "--scores", out / "s.csv"]
    argv += ["--events", out / "e.json", *FP32]
    with pytest.raises(SystemExit) as exited:
        run_cli(detect.main, detect.get_args_parser().parse_args([str(a) for a in argv]))
    assert exited.value.code == 143
    assert len((out / "s.csv").read_text().splitlines()) == 1 + 2  # header, frames 2 and 3
    assert all(event["end"] <= 3 for event in json.loads((out / "e.json").read_text()))
    assert sorted(p.name for p in out.iterdir()) == ["e.json", "s.csv"]  # no temporary files


def test_calibration_refuses_a_rate_its_frames_cannot_support(tmp_path, tiny_checkpoint):
    before = tiny_checkpoint.read_bytes()
    clip = write_video(tmp_path / "clip.avi", scene(12, 1, size=16))
    argv = ["--calibrate", "--checkpoint", tiny_checkpoint, "--input", clip, "--max_frames", "6"]
    with pytest.raises(InputError, match="scored 4 normal frames.*needs at least 100"):
        cli(*argv, "--output_checkpoint", tmp_path / "calibrated.pth")
    assert not (tmp_path / "calibrated.pth").exists() and tiny_checkpoint.read_bytes() == before
    # A rate they do support is accepted, and detection refuses rates below it.
    cli(*argv, "--false_alarm_rate", "0.25", "--output_checkpoint", tmp_path / "calibrated.pth")
    with pytest.raises(InputError, match="holds 4 normal frames.*at least 100"):
        cli("--checkpoint", tmp_path / "calibrated.pth", "--input", clip, *FP32)


def test_the_scores_csv_quotes_what_needs_quoting(tmp_path, tiny_checkpoint):
    import csv

    calibrated = tmp_path / "calibrated.pth"
    folder = write_frames(tmp_path / "street, north", scene(5, 2, size=16))
    cli("--calibrate", "--checkpoint", tiny_checkpoint, "--input", folder,
        "--false_alarm_rate", "0.5", "--output_checkpoint", calibrated, *FP32)  # fmt: skip
    cli("--checkpoint", calibrated, "--input", folder, "--false_alarm_rate", "0.5",
        "--scores", tmp_path / "s.csv", *FP32)  # fmt: skip
    with open(tmp_path / "s.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["video"] for row in rows] == ["street, north"] * 3
    assert [int(row["frame"]) for row in rows] == [2, 3, 4]
