"""A small synthetic surveillance scene for the quickstart: trains and evaluates in minutes.

A fixed camera looks at a paved square with a lawn, lamp posts and a bench. Pedestrians (dark
figures with a head and swinging legs) walk along three fixed lanes in both directions at
0.5-1.5 px/frame (at 96 px width), one to four at a time. Test videos add labelled anomalous
segments: fast bikes, carts and tumbling odd shapes (4-8 px/frame), moving along the lanes or
crossing them, bright against the pavement. Every test video has normal and abnormal frames
after its first four, and about 30-50 % of its frames abnormal (at the default lengths).

Layout, like the real benchmarks::

    <dataset_path>/demo/training/frames/01/001.png ...
    <dataset_path>/demo/testing/frames/01/001.png ...
    <dataset_path>/demo/demo.mat            (ano_pred labels, 1 = abnormal)

Generation is deterministic in ``seed`` and all other parameters: a video's pixels depend only
on the seed, its split, its index and the frame size, never on the number of videos.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from common.files import exclusive_lock
from data.labels import write_ano_pred_mat

DEMO_NAME = "demo"
COMPLETE_MARKER = ".complete"
_FORMAT_VERSION = 1  # part of the marker: bump when the scene changes to regenerate old copies

# Lanes as (x, y) end points in fractions of the frame, extending past both side edges.
_LANES = (((-0.2, 0.40), (1.2, 0.46)), ((-0.2, 0.63), (1.2, 0.60)), ((-0.2, 0.86), (1.2, 0.80)))
_LAWN_EDGE = 0.27  # fraction of the height above which the lawn lies
_NOISE_SIGMA = 1.5  # per-frame sensor noise, grey levels
_SHIFT = 4  # OpenCV drawing with 4 fractional bits: smooth sub-pixel motion
_MIN_VISIBLE_PIXELS = 6  # at 64x96; an object covering fewer pixels is not "in view" yet


@dataclass
class _Mover:
    """Anything moving in a straight line at constant velocity (pixels, frames)."""

    kind: str
    start_frame: int
    x0: float
    y0: float
    vx: float
    vy: float
    colour: tuple[int, int, int]
    spin: float = 0.0  # odd shapes: rotation, radians per frame

    def position(self, frame: int) -> tuple[float, float]:
        elapsed = frame - self.start_frame
        return self.x0 + self.vx * elapsed, self.y0 + self.vy * elapsed


def _fixed(value: float) -> int:
    return int(round(value * (1 << _SHIFT)))


def _point(x: float, y: float) -> tuple[int, int]:
    return _fixed(x), _fixed(y)


def _figure_height(y: float, height: int) -> float:
    """Apparent height of a person whose feet are at row y (nearer = lower = larger)."""
    return height * (0.11 + 0.11 * min(max(y / height, 0.0), 1.0))


def _render_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Static scene, uint8 (H, W, 3) BGR: lawn, kerb, paving, lamp posts, bench, planter."""
    rows = np.arange(height, dtype=np.float32)[:, None, None]
    pavement = np.array([122, 128, 132], np.float32)  # slightly warm grey
    lawn = np.array([62, 104, 74], np.float32)
    image = np.where(rows < _LAWN_EDGE * height, lawn, pavement) * np.ones(
        (1, width, 1), np.float32
    )

    # Low-frequency shading (uneven light) and fine grain (texture), both blurred.
    coarse = rng.normal(0.0, 9.0, (height // 8 + 2, width // 8 + 2)).astype(np.float32)
    coarse = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.normal(0.0, 7.0, (height, width)).astype(np.float32), (0, 0), 0.7)
    image += (coarse + grain)[:, :, None]
    # Drawing on uint8: OpenCV anti-aliases only 8-bit images.
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    scale = height / 64.0
    kerb_y = _LAWN_EDGE * height
    cv2.line(
        image, _point(0, kerb_y), _point(width, kerb_y), (170, 172, 175), 1, cv2.LINE_AA, _SHIFT
    )
    tile = 11.0 * scale  # faint paving joints
    for y in np.arange(kerb_y + tile, height, tile):
        cv2.line(image, _point(0, y), _point(width, y), (104, 108, 112), 1, cv2.LINE_AA, _SHIFT)
    for x in np.arange(rng.uniform(0, tile), width, 1.6 * tile):
        cv2.line(
            image, _point(x, kerb_y), _point(x, height), (108, 112, 116), 1, cv2.LINE_AA, _SHIFT
        )

    for fraction in (0.18, 0.71):  # lamp posts standing on the kerb
        x = fraction * width
        cv2.line(
            image,
            _point(x, kerb_y + 2 * scale),
            _point(x, 0.03 * height),
            (45, 45, 48),
            max(1, round(scale)),
            cv2.LINE_AA,
            _SHIFT,
        )
        cv2.circle(
            image,
            _point(x, 0.03 * height),
            _fixed(1.6 * scale),
            (215, 225, 230),
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
    bench_top = (0.44 * width, kerb_y - 4.5 * scale)
    cv2.rectangle(
        image,
        _point(*bench_top),
        _point(0.58 * width, kerb_y - 2 * scale),
        (40, 58, 80),
        -1,
        cv2.LINE_AA,
        _SHIFT,
    )
    cv2.rectangle(
        image,
        _point(0.88 * width, 0.9 * height),
        _point(1.1 * width, 1.1 * height),
        (52, 78, 96),
        -1,
        cv2.LINE_AA,
        _SHIFT,
    )
    cv2.circle(
        image,
        _point(0.95 * width, 0.93 * height),
        _fixed(3 * scale),
        (48, 96, 60),
        -1,
        cv2.LINE_AA,
        _SHIFT,
    )
    return image


def _lane_geometry(lane: int, height: int, width: int) -> tuple[float, float, float, float]:
    """(x_start, y_start, unit dx, unit dy) of a lane in pixels, pointing left to right."""
    (xa, ya), (xb, yb) = _LANES[lane]
    dx, dy = (xb - xa) * width, (yb - ya) * height
    length = math.hypot(dx, dy)
    return xa * width, ya * height, dx / length, dy / length


def _lane_y(lane: int, x: float, height: int, width: int) -> float:
    x_start, y_start, ux, uy = _lane_geometry(lane, height, width)
    return y_start + (x - x_start) * uy / ux


def _new_pedestrian(
    frame: int, rng: np.random.Generator, height: int, width: int, at_edge: bool
) -> _Mover:
    lane = int(rng.integers(len(_LANES)))
    direction = 1 if rng.random() < 0.5 else -1
    speed = rng.uniform(0.5, 1.5) * width / 96.0
    _, _, ux, uy = _lane_geometry(lane, height, width)
    if at_edge:
        x = -0.06 * width if direction > 0 else 1.06 * width
    else:
        x = rng.uniform(0.05, 0.95) * width
    y = _lane_y(lane, x, height, width) + rng.uniform(-0.025, 0.025) * height
    tone = rng.uniform(25, 75)
    tint = rng.uniform(-12, 12, 3)
    colour = tuple(int(np.clip(tone + t, 0, 255)) for t in tint)
    return _Mover("pedestrian", frame, x, y, direction * speed * ux, direction * speed * uy, colour)


def _draw_pedestrian(image: np.ndarray, walker: _Mover, frame: int, height: int) -> None:
    x, y = walker.position(frame)
    size = _figure_height(y, height)
    stride_phase = math.hypot(walker.vx, walker.vy) * (frame - walker.start_frame) / (0.35 * size)
    swing = 0.13 * size * math.sin(stride_phase)
    bob = 0.03 * size * abs(math.cos(stride_phase))
    hip_y = y - 0.42 * size - bob
    leg_width = max(1, round(size / 12))
    for offset in (swing, -swing):
        cv2.line(
            image,
            _point(x, hip_y),
            _point(x + offset, y),
            walker.colour,
            leg_width,
            cv2.LINE_AA,
            _SHIFT,
        )
    body_centre = _point(x, y - 0.62 * size - bob)
    axes = (_fixed(0.14 * size), _fixed(0.22 * size))
    cv2.ellipse(image, body_centre, axes, 0, 0, 360, walker.colour, -1, cv2.LINE_AA, _SHIFT)
    head = _point(x, y - 0.91 * size - bob)
    skin = tuple(min(255, c + 45) for c in walker.colour)
    cv2.circle(image, head, _fixed(0.1 * size), skin, -1, cv2.LINE_AA, _SHIFT)


def _anomaly_size(kind: str, y: float, height: int) -> tuple[float, float]:
    """Half extents (rx, ry) of an anomalous object with its base near row y."""
    size = _figure_height(y, height)
    return {"bike": (0.8 * size, 0.55 * size), "cart": (1.0 * size, 0.5 * size)}.get(
        kind, (0.6 * size, 0.6 * size)
    )


def _draw_anomaly(image: np.ndarray, mover: _Mover, frame: int, height: int) -> None:
    x, y = mover.position(frame)
    rx, ry = _anomaly_size(mover.kind, y, height)
    line = max(1, round(ry / 5))
    dark = (30, 30, 30)
    if mover.kind == "bike":
        wheel = 0.45 * ry
        for wx in (x - rx + wheel, x + rx - wheel):
            cv2.circle(image, _point(wx, y - wheel), _fixed(wheel), dark, line, cv2.LINE_AA, _SHIFT)
        frame_pts = np.array(
            [
                _point(x - rx + wheel, y - wheel),
                _point(x, y - 1.1 * ry),
                _point(x + rx - wheel, y - wheel),
            ]
        )
        cv2.polylines(image, [frame_pts], False, mover.colour, line + 1, cv2.LINE_AA, _SHIFT)
        cv2.ellipse(
            image,
            _point(x, y - 1.45 * ry),
            (_fixed(0.3 * ry), _fixed(0.5 * ry)),
            0,
            0,
            360,
            mover.colour,
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
    elif mover.kind == "cart":
        cv2.rectangle(
            image,
            _point(x - rx, y - 1.8 * ry),
            _point(x + rx, y - 0.35 * ry),
            mover.colour,
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
        for wx in (x - 0.6 * rx, x + 0.6 * rx):
            cv2.circle(
                image, _point(wx, y - 0.3 * ry), _fixed(0.3 * ry), dark, -1, cv2.LINE_AA, _SHIFT
            )
    else:  # a tumbling five-pointed star
        angles = mover.spin * (frame - mover.start_frame) + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, rx, 0.45 * rx)
        centre_y = y - ry
        star = [
            _point(x + r * math.cos(a), centre_y + r * math.sin(a))
            for r, a in zip(radii, angles, strict=True)
        ]
        cv2.fillPoly(image, [np.array(star)], mover.colour, cv2.LINE_AA, _SHIFT)


def _new_anomaly(frame: int, rng: np.random.Generator, height: int, width: int) -> _Mover:
    kind = ("bike", "cart", "odd")[int(rng.integers(3))]
    speed = rng.uniform(4.0, 8.0) * width / 96.0
    colour = (
        (235, 235, 240),  # white
        (40, 210, 245),  # yellow
        (60, 60, 235),  # red
        (230, 120, 40),  # blue
        (220, 80, 220),  # magenta
    )[int(rng.integers(5))]
    spin = rng.uniform(0.15, 0.4) * (1 if rng.random() < 0.5 else -1)
    if rng.random() < 0.6:  # along a lane, either way, far too fast
        lane = int(rng.integers(len(_LANES)))
        direction = 1 if rng.random() < 0.5 else -1
        _, _, ux, uy = _lane_geometry(lane, height, width)
        rx, _ = _anomaly_size(kind, _lane_y(lane, width / 2, height, width), height)
        x = -rx if direction > 0 else width + rx
        y = _lane_y(lane, x, height, width)
        return _Mover(
            kind, frame, x, y, direction * speed * ux, direction * speed * uy, colour, spin
        )
    # Across the lanes, off every path: from the lawn down to the bottom edge or back up.
    x_top = rng.uniform(0.2, 0.8) * width
    x_bottom = x_top + rng.uniform(-0.25, 0.25) * width
    going_down = rng.random() < 0.5
    _, ry = _anomaly_size(kind, height, height)
    y_top, y_bottom = _LAWN_EDGE * height, height + 2.2 * ry
    (xa, ya), (xb, yb) = ((x_top, y_top), (x_bottom, y_bottom))
    if not going_down:
        (xa, ya), (xb, yb) = (xb, yb), (xa, ya)
    length = math.hypot(xb - xa, yb - ya)
    return _Mover(
        kind, frame, xa, ya, speed * (xb - xa) / length, speed * (yb - ya) / length, colour, spin
    )


def _in_view(mover: _Mover, frame: int, height: int, width: int) -> bool:
    """Geometric check used for planning; final labels come from the rendered pixels."""
    x, y = mover.position(frame)
    rx, ry = _anomaly_size(mover.kind, y, height)
    return x + rx > 0 and x - rx < width and y > 0 and y - 2 * ry < height


def _plan_anomalies(
    num_frames: int, rng: np.random.Generator, height: int, width: int
) -> list[_Mover]:
    """Overlapping anomalous objects covering one contiguous stretch of 30-50 % of the video.

    Plans are drawn until one meets the target, keeping normal frames before (past the first
    four, which evaluation drops) and usually after the stretch.
    """
    first_start = max(5, round(0.12 * num_frames))
    last_start = max(first_start + 1, round(0.45 * num_frames))
    fallback = None
    for _ in range(200):
        start = int(rng.integers(first_start, last_start))
        target_frames = rng.uniform(0.3, 0.5) * num_frames
        movers: list[_Mover] = []
        spawn = start
        while spawn < num_frames:
            mover = _new_anomaly(spawn, rng, height, width)
            movers.append(mover)
            visible = [t for t in range(spawn, num_frames) if _in_view(mover, t, height, width)]
            if not visible or visible[-1] - start + 1 >= 0.85 * target_frames:
                break
            spawn = visible[0] + max(1, int(len(visible) * rng.uniform(0.5, 0.85)))
        abnormal = np.zeros(num_frames, dtype=bool)
        for mover in movers:
            for t in range(mover.start_frame, num_frames):
                abnormal[t] |= _in_view(mover, t, height, width)
        has_both = abnormal[4:].any() and not abnormal[4:].all()
        if has_both and 0.3 <= abnormal.mean() <= 0.5:
            return movers
        if has_both and fallback is None:
            fallback = movers
    if fallback is None:
        raise ValueError(f"cannot place anomalies in a {num_frames}-frame video; use longer videos")
    return fallback


def _render_video(
    num_frames: int,
    background: np.ndarray,
    rng: np.random.Generator,
    with_anomalies: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 (T, H, W, 3) BGR and per-frame labels int64 (T,), 1 = anomaly in view."""
    height, width = background.shape[:2]
    walkers = [
        _new_pedestrian(0, rng, height, width, at_edge=False) for _ in range(rng.integers(1, 5))
    ]
    anomalies = _plan_anomalies(num_frames, rng, height, width) if with_anomalies else []
    min_visible = max(2, round(_MIN_VISIBLE_PIXELS * height * width / (64 * 96)))
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    labels = np.zeros(num_frames, dtype=np.int64)
    for t in range(num_frames):
        walkers = [w for w in walkers if -0.1 * width <= w.position(t)[0] <= 1.1 * width]
        if not walkers or (len(walkers) < 4 and rng.random() < 0.05):
            walkers.append(_new_pedestrian(t, rng, height, width, at_edge=True))
        scene = background.copy()
        # Far figures first, so nearer ones overlap them.
        for walker in sorted(walkers, key=lambda w: w.position(t)[1]):
            _draw_pedestrian(scene, walker, t, height)
        before = scene.copy()
        for mover in anomalies:
            if mover.start_frame <= t:
                _draw_anomaly(scene, mover, t, height)
        changed = np.count_nonzero(cv2.absdiff(scene, before).max(axis=2) > 20)
        labels[t] = int(changed >= min_visible)
        noisy = scene + rng.normal(0.0, _NOISE_SIGMA, scene.shape)
        frames[t] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return frames, labels


def _write_frames(video_dir: Path, frames: np.ndarray) -> None:
    video_dir.mkdir(parents=True)
    digits = max(3, len(str(len(frames))))
    for index, frame in enumerate(frames, start=1):
        if not cv2.imwrite(str(video_dir / f"{index:0{digits}d}.png"), frame):
            raise OSError(f"could not write {video_dir / f'{index:0{digits}d}.png'}")


def _generate(root: Path, params: dict) -> None:
    height, width, seed = params["height"], params["width"], params["seed"]
    background = _render_background(height, width, np.random.default_rng([seed, 0]))
    splits = (("training", 1, params["train_videos"]), ("testing", 2, params["test_videos"]))
    test_labels = []
    total = params["train_videos"] + params["test_videos"]
    with tqdm(total=total, desc="generating demo videos", unit="video", disable=None) as bar:
        for split, split_id, count in splits:
            for index in range(count):
                rng = np.random.default_rng([seed, split_id, index])
                num_frames = int(rng.integers(params["min_frames"], params["max_frames"] + 1))
                frames, labels = _render_video(num_frames, background, rng, split == "testing")
                _write_frames(root / split / "frames" / f"{index + 1:02d}", frames)
                if split == "testing":
                    test_labels.append(labels)
                bar.update(1)
    write_ano_pred_mat(root / f"{DEMO_NAME}.mat", test_labels)


def _is_complete(demo_dir: Path, params: dict) -> bool:
    try:
        return json.loads((demo_dir / COMPLETE_MARKER).read_text()) == params
    except (OSError, ValueError):
        return False


def ensure_demo_dataset(
    dataset_path: Path,
    height: int = 64,
    width: int = 96,
    seed: int = 0,
    train_videos: int = 6,
    test_videos: int = 4,
    min_frames: int = 50,
    max_frames: int = 64,
) -> Path:
    """``<dataset_path>/demo``, generated first unless a complete copy with the same
    parameters exists (a copy made with other parameters is replaced).

    Frames are ``height x width`` PNGs; each video has between ``min_frames`` and
    ``max_frames`` frames (at least 20). The folder appears in one rename when complete,
    so an interrupted run leaves no half-made dataset behind.
    """
    if min_frames < 20 or max_frames < min_frames:
        raise ValueError(f"need 20 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    if train_videos < 1 or test_videos < 1:
        raise ValueError("need at least one training and one test video")
    dataset_path = Path(dataset_path)
    demo_dir = dataset_path / DEMO_NAME
    params = {
        "version": _FORMAT_VERSION,
        "height": int(height),
        "width": int(width),
        "seed": int(seed),
        "train_videos": int(train_videos),
        "test_videos": int(test_videos),
        "min_frames": int(min_frames),
        "max_frames": int(max_frames),
    }
    if _is_complete(demo_dir, params):
        return demo_dir
    dataset_path.mkdir(parents=True, exist_ok=True)
    # One process generates while others starting at the same time (torchrun, two
    # quickstarts) wait for it, then find the finished copy.
    with exclusive_lock(demo_dir):
        if _is_complete(demo_dir, params):
            return demo_dir
        staging = Path(tempfile.mkdtemp(prefix=f".{DEMO_NAME}-", dir=dataset_path))
        try:
            _generate(staging, params)
            (staging / COMPLETE_MARKER).write_text(json.dumps(params))
            _install(staging, demo_dir, params)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return demo_dir


def _install(staging: Path, demo_dir: Path, params: dict) -> None:
    """Move the finished ``staging`` folder to ``demo_dir``, replacing an outdated copy (never
    a complete one with the same parameters, which another process may be reading)."""
    if _is_complete(demo_dir, params):
        return
    if demo_dir.exists():
        outdated = Path(tempfile.mkdtemp(prefix=f".{DEMO_NAME}-old-", dir=demo_dir.parent))
        try:
            os.replace(demo_dir, outdated / DEMO_NAME)
        except FileNotFoundError:
            pass  # another process moved it first
        shutil.rmtree(outdated, ignore_errors=True)
    try:
        os.rename(staging, demo_dir)
    except OSError:
        # Another process installed its copy between our check and the rename.
        if not _is_complete(demo_dir, params):
            raise
