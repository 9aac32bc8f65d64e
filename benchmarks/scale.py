"""Memory and speed of the training data path as a split grows: frames in memory vs on disk.

For every scale (N = scale x ``--base_frames`` frames in scale x ``--base_videos`` videos) the
script generates a synthetic frame tree (or takes ``--tree``), then runs in a fresh process per
path (``memory``: decoded up front as ``train.py --frames memory``; ``disk``: the frame store,
``--frames disk``) ``--batches`` training batches through a DataLoader like train.py's (the
same batches, ``--num_workers`` workers), then loads one video as evaluation does, and
optionally ``--train_steps`` real training steps of the full model. Meanwhile this process
samples the child's memory every ``--interval`` (0.1) s:

- ``RssAnon`` of the main process (``/proc/<pid>/status``): its anonymous resident memory,
  without the page cache that memory-mapped files bring in (``VmRSS`` counts those);
- the sum of ``Pss_Anon`` over the process and its children (DataLoader workers, decoding
  processes; ``/proc/<pid>/smaps_rollup``), which shares the pages that forked processes
  hold in common among them instead of counting them once per process.

Disk-path children find the store already written by a separate first-pass process, whose
frames/s is reported too. Examples::

    python benchmarks/scale.py --size 128x128 --scales 1,4,16
    python benchmarks/scale.py --shanghaitech --size 64x64 --paths disk --train_steps 300
    python benchmarks/scale.py --tree ../shared/datasets/ped2/training/frames --paths memory,disk
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SHANGHAITECH_TRAINING = (274_515, 330)  # frames, videos
PATTERNS = 64  # distinct encoded images a generated tree cycles through


# --------------------------------------------------------------------------- the frame tree


def generate_tree(root: Path, frames: int, videos: int, height: int, width: int) -> Path:
    """``videos`` folders of JPEG frames, ``frames`` in all (spread evenly), under ``root``.

    Deterministic; each file is one of ``PATTERNS`` images encoded once (writing 274,515
    frames costs file creation only). Reused when ``root/.complete`` records the same shape.
    """
    import cv2

    marker = root / ".complete"
    shape = f"{frames} {videos} {height} {width}"
    if marker.is_file() and marker.read_text() == shape:
        return root
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    encoded = []
    for k in range(PATTERNS):  # a blob moving over a textured background, plus noise
        cy, cx = height * (0.2 + 0.6 * k / PATTERNS), width * (0.5 + 0.3 * np.sin(k / 5))
        blob = 120 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (0.02 * height * width))
        base = 60 + 40 * np.sin(x / 7.0) * np.cos(y / 11.0) + blob
        image = base[..., None] + rng.normal(0, 6, (height, width, 3))
        ok, data = cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8))
        assert ok
        encoded.append(data.tobytes())
    per_video = np.full(videos, frames // videos)
    per_video[: frames % videos] += 1
    for video, count in enumerate(per_video):
        folder = root / f"{video + 1:03d}"
        folder.mkdir(parents=True)
        for t in range(int(count)):
            (folder / f"{t:04d}.jpg").write_bytes(encoded[(video * 7 + t) % PATTERNS])
    marker.write_text(shape)
    return root


# --------------------------------------------------------------------------- the measured child


def _mark(name: str, **values: object) -> None:
    """A timestamped record on stdout for the parent, with this process's RssAnon (kB)."""
    own = _status_kb(os.getpid(), "RssAnon")
    print(
        json.dumps({"mark": name, "t": time.monotonic(), "rss_anon_kb": own, **values}), flush=True
    )


def child(args: argparse.Namespace) -> None:
    """One measured run (in its own process): see the module notes."""
    import torch
    from torch.utils.data import DataLoader

    from data.decoding import usable_cpus
    from data.frame_cache import FrameCache
    from data.frame_folders import list_videos
    from data.frame_store import FrameStore
    from data.frames import FrameWindowDataset, frames_to_tensor
    from training.loop import epoch_batches

    torch.set_num_threads(1)  # the model steps below use the process's own setting
    height, width = args.h, args.w
    _mark("imported")
    began = time.monotonic()
    videos = list_videos(Path(args.tree))
    listed = time.monotonic()
    store = FrameStore(Path(args.store), height, width, processes=args.processes)
    if args.child == "fill":
        _mark("start")
        store.fill(videos)
        _mark("filled", frames=sum(map(len, videos)), seconds=time.monotonic() - listed)
        return
    _mark("start", list_seconds=listed - began)
    if args.child == "memory":
        source = FrameCache(height, width, processes=args.processes or usable_cpus())
    else:
        source = store
    dataset = FrameWindowDataset(videos, height, width, 5, source)
    frames = sum(len(video) for video in videos)
    _mark("dataset", seconds=time.monotonic() - listed, windows=len(dataset), frames=frames)

    batches = epoch_batches(len(dataset), args.batch_size, seed=0, epoch=0)[: args.batches]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=args.num_workers)
    first = None
    for count, batch in enumerate(loader):
        assert batch.shape[0] == args.batch_size
        if count == 0:
            first = time.monotonic()
    timed = (len(batches) - 1) * args.batch_size
    _mark("batches", windows_per_s=timed / (time.monotonic() - first), batches=len(batches))

    # Evaluation: one video loaded when its turn comes, as evaluate.py does.
    evaluation = FrameWindowDataset(videos[:1], height, width, 5, source, preload=False)
    start = time.monotonic()
    video = frames_to_tensor(torch.from_numpy(evaluation.video_frames(0)))
    _mark("evaluation_video", seconds=time.monotonic() - start, frames=len(video))
    del video

    if args.train_steps:
        from common.devices import resolve_precision
        from model import LGNNet, init_memory_items
        from training.loop import train_one_epoch

        torch.set_num_threads(args.threads)
        model = LGNNet(t_length=5)
        items = init_memory_items(10, 512)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
        steps = epoch_batches(len(dataset), args.batch_size, seed=1, epoch=0)[: args.train_steps]
        loader = DataLoader(dataset, batch_sampler=steps, num_workers=args.num_workers)

        def marked(batches):
            for step, batch in enumerate(batches):
                if step % args.mark_every == 0:
                    _mark("train_step", step=step)
                yield batch

        dtype = resolve_precision("auto", torch.device("cpu"))
        _mark("train_start")
        start = time.monotonic()
        train_one_epoch(model, marked(loader), items, optimizer, torch.device("cpu"), dtype=dtype)
        _mark("train_end", steps=len(steps), seconds=time.monotonic() - start)


# --------------------------------------------------------------------------- the sampler


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _pss_anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return _status_kb(pid, "RssAnon")  # kernels before 5.x: an upper bound


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        found.append(parent)
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
            except OSError:
                pass
    return found


class Sampler(threading.Thread):
    """Samples (time, main RssAnon, tree Pss_Anon) of a process every ``interval`` s, in kB."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            main = _status_kb(self.pid, "RssAnon")
            tree = sum(_pss_anon_kb(pid) for pid in _descendants(self.pid))
            if main:
                self.samples.append((time.monotonic(), main, tree))
            time.sleep(self.interval)

    def peak(self, start: float = 0.0, end: float = float("inf")) -> tuple[int, int]:
        """Peak main RssAnon and tree Pss_Anon between two times, MB."""
        window = [s for s in self.samples if start <= s[0] <= end] or [(0, 0, 0)]
        return max(s[1] for s in window) // 1024, max(s[2] for s in window) // 1024


def measure(argv: list[str], interval: float) -> tuple[dict[str, dict], Sampler]:
    """Run this script as a child with ``argv``; its marks by name and the sampler."""
    command = [sys.executable, str(Path(__file__).resolve()), *argv]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    sampler = Sampler(process.pid, interval)
    sampler.start()
    marks: dict[str, dict] = {}
    steps: list[dict] = []
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            record = json.loads(line)
            if record["mark"] == "train_step":
                steps.append(record)
            marks[record["mark"]] = record
    if process.wait() != 0:
        raise SystemExit(f"child failed: {' '.join(command)}")
    sampler.done.set()
    sampler.join()
    marks["train_steps"] = {"list": steps}
    return marks, sampler


# --------------------------------------------------------------------------- the driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="128x128", help="frame size HxW (trees and model)")
    parser.add_argument("--base_frames", type=int, default=2550, help="frames at scale 1")
    parser.add_argument("--base_videos", type=int, default=16, help="videos at scale 1")
    parser.add_argument("--scales", default="1,4,16", help="multiples of the base")
    parser.add_argument("--shanghaitech", action="store_true",
                        help="one tree shaped as ShanghaiTech's training split (330 videos, "
                        "274,515 frames) instead of --scales")  # fmt: skip
    parser.add_argument("--tree", default=None, help="measure this split folder instead")
    parser.add_argument("--paths", default="memory,disk", help="memory, disk or both")
    parser.add_argument("--batches", type=int, default=500, help="training batches per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per path (medians shown)")
    parser.add_argument("--batch_size", type=int, default=6)
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--processes", type=int, default=None, help="decoding processes")
    parser.add_argument("--train_steps", type=int, default=0, help="model steps after")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of model steps")
    parser.add_argument("--mark_every", type=int, default=25, help="memory mark every N steps")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.1,
        help="seconds between memory samples (reading Pss_Anon walks the page tables of the "
        "mapped files: on a large store, sample less often)",
    )
    parser.add_argument(
        "--work_dir",
        default=None,
        help="where trees and the store go; generated trees are kept there for later runs "
        "(default: a temporary folder, removed at the end)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the store (and temp folder)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--h", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--w", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    height, width = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="lgn-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "store"
    if args.tree:
        trees = [("given", Path(args.tree))]
    elif args.shanghaitech:
        frames, videos = SHANGHAITECH_TRAINING
        trees = [("ShanghaiTech-shaped", (frames, videos))]
    else:
        trees = [
            (f"{s}x", (s * args.base_frames, s * args.base_videos))
            for s in (int(v) for v in args.scales.split(","))
        ]
    common = ["--h", str(height), "--w", str(width), "--store", str(store)]
    common += ["--batch_size", str(args.batch_size), "--num_workers", str(args.num_workers)]
    common += ["--batches", str(args.batches), "--train_steps", str(args.train_steps)]
    common += ["--threads", str(args.threads), "--mark_every", str(args.mark_every)]
    if args.processes:
        common += ["--processes", str(args.processes)]
    rows = []
    try:
        for label, spec in trees:
            if isinstance(spec, Path):
                tree = spec
            else:
                began = time.monotonic()
                tree = generate_tree(work / f"tree_{spec[0]}", spec[0], spec[1], height, width)
                print(f"{label}: tree of {spec[0]} frames ready in "
                      f"{time.monotonic() - began:.0f} s", file=sys.stderr)  # fmt: skip
            runs = [(r, path) for r in range(args.repeats) for path in args.paths.split(",")]
            for repeat, path in runs:  # alternating paths, so that load changes hit both
                row = {"tree": label, "size": f"{height}x{width}", "path": path}
                row["repeat"] = repeat
                if path == "disk" and repeat == 0:
                    marks, sampler = measure(
                        ["--child", "fill", "--tree", str(tree), *common], args.interval
                    )
                    filled = marks["filled"]
                    row["first_pass_frames_per_s"] = round(
                        filled["frames"] / max(filled["seconds"], 1e-9), 1
                    )
                    row["first_pass_s"] = round(filled["seconds"], 1)
                    row["first_pass_peak_tree_pss_anon_mb"] = sampler.peak()[1]
                marks, sampler = measure(
                    ["--child", path, "--tree", str(tree), *common], args.interval
                )
                main_peak, tree_peak = sampler.peak()
                row.update(
                    frames=marks["dataset"]["frames"],
                    windows=marks["dataset"]["windows"],
                    setup_s=round(marks["dataset"]["seconds"], 1),
                    windows_per_s=round(marks["batches"]["windows_per_s"], 1),
                    peak_main_rss_anon_mb=main_peak,
                    peak_tree_pss_anon_mb=tree_peak,
                    main_rss_anon_mb_imported_listed_ready=[
                        marks[name]["rss_anon_kb"] // 1024
                        for name in ("imported", "start", "dataset")
                    ],
                    evaluation_video_frames=marks["evaluation_video"]["frames"],
                    evaluation_video_s=round(marks["evaluation_video"]["seconds"], 3),
                )
                if args.train_steps:
                    step_marks = marks["train_steps"]["list"]
                    first, last = step_marks[min(1, len(step_marks) - 1)], step_marks[-1]
                    row["train_steps"] = marks["train_end"]["steps"]
                    row["train_s_per_step"] = round(
                        marks["train_end"]["seconds"] / marks["train_end"]["steps"], 2
                    )
                    early = sampler.peak(marks["train_start"]["t"], first["t"])
                    late = sampler.peak(last["t"], marks["train_end"]["t"])
                    row["train_tree_pss_anon_mb_early_late"] = [early[1], late[1]]
                    row["train_main_rss_anon_mb_early_late"] = [early[0], late[0]]
                    row["train_marks"] = [
                        (m["step"], sampler.peak(m["t"] - 0.5, m["t"] + 0.5)[1]) for m in step_marks
                    ]
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.keep:
            shutil.rmtree(store, ignore_errors=True)

    header = ("tree", "path", "frames", "setup s", "1st pass frames/s", "windows/s",
              "main RssAnon MB", "tree PssAnon MB", "eval video s")  # fmt: skip
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["tree"], row["path"]), []).append(row)
    for (tree_label, path), group in groups.items():
        rates = sorted(row["windows_per_s"] for row in group)
        rate = f"{np.median(rates):.0f}" + (f" ({rates[0]:.0f}-{rates[-1]:.0f})" * (len(rates) > 1))
        cells = (
            tree_label, path, group[0]["frames"],
            f"{np.median([r['setup_s'] for r in group]):.1f}",
            group[0].get("first_pass_frames_per_s", ""), rate,
            max(r["peak_main_rss_anon_mb"] for r in group),
            max(r["peak_tree_pss_anon_mb"] for r in group),
            f"{np.median([r['evaluation_video_s'] for r in group]):.3f}",
        )  # fmt: skip
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
