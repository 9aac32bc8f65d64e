"""Frames served from disk (data/frame_store.py): the same windows as in memory, a first pass
that resumes, the memory budget from cgroup files, and the choice between the two paths."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import evaluate_run
from torch.utils.data import DataLoader

import data.decoding as decoding
import data.frame_cache as frame_cache
import data.frame_store as store_module
import train
from common.errors import InputError
from data.decoding import decode_frame
from data.demo import ensure_demo_dataset
from data.device_frames import DeviceWindows, frames_nbytes
from data.frame_cache import FrameCache
from data.frame_folders import Video, list_videos
from data.frame_store import (
    FrameStore,
    MemoryBudget,
    choose_frames,
    default_store_dir,
    memory_budget,
)
from data.frames import FrameWindowDataset
from inference.benchmark import ScoringSettings, score_test_videos
from model import LGNNet, init_memory_items
from model import checkpoint as checkpoint_format
from training.loop import epoch_batches

H, W = 6, 8
LENGTHS = {"01": 9, "02": 6, "03": 12}


def _make_tree(root: Path, lengths: dict[str, int] = LENGTHS) -> list:
    """Videos of random 10x12 PNG frames (lossless, so decoding is exact) under ``root``."""
    for seed, (name, length) in enumerate(lengths.items()):
        for index in range(length):
            path = root / name / f"{index:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(seed * 1000 + index)
            assert cv2.imwrite(str(path), rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    return list_videos(root)


@pytest.fixture
def videos(tmp_path: Path) -> list:
    return _make_tree(tmp_path / "frames")


@pytest.fixture
def decode_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every decode_frame call appends the frame's path to a file: a count that also sees the
    calls made in forked worker processes."""
    log = tmp_path / "decodes.log"
    log.touch()
    real_decode = decoding.decode_frame

    def logging_decode(path, height, width):
        with open(log, "a") as handle:
            handle.write(f"{path}\n")
        return real_decode(path, height, width)

    monkeypatch.setattr(decoding, "decode_frame", logging_decode)
    return log


def _decoded(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_disk_windows_equal_memory_windows_bit_for_bit(videos: list, tmp_path: Path) -> None:
    in_memory = FrameWindowDataset(videos, H, W, t_length=4)
    on_disk = FrameWindowDataset(
        videos, H, W, t_length=4, cache=FrameStore(tmp_path / "store", H, W, processes=2)
    )
    assert on_disk.windows == in_memory.windows and len(on_disk) == 6 + 3 + 9
    for index in range(len(in_memory)):
        assert torch.equal(on_disk[index], in_memory[index]), index
    assert torch.equal(on_disk[-1], in_memory[len(in_memory) - 1])
    for video_index, video in enumerate(videos):
        frames = on_disk.video_frames(video_index)
        assert isinstance(frames.base, np.memmap)  # a view of the mapped file
        for t, path in enumerate(video.frame_paths):  # independent of both datasets
            np.testing.assert_array_equal(frames[t], decode_frame(path, H, W))

    # Forked DataLoader workers read the mapped files: the same batches.
    batches = epoch_batches(len(in_memory), 4, seed=3, epoch=1)
    from_disk = list(DataLoader(on_disk, batch_sampler=batches, num_workers=2))
    from_memory = list(DataLoader(in_memory, batch_sampler=batches))
    assert len(from_disk) == len(batches)
    for a, b in zip(from_disk, from_memory, strict=True):
        assert torch.equal(a, b)


def test_store_files_are_the_cache_dir_files(videos: list, tmp_path: Path, decode_log) -> None:
    """A store in --cache_dir writes what FrameCache writes there, under the same names, so
    each reuses the other's files without decoding."""
    FrameStore(tmp_path / "cache", H, W, processes=1).fill(videos)
    assert len(_decoded(decode_log)) == sum(LENGTHS.values())
    stored = sorted((tmp_path / "cache").rglob("*.npy"))
    cached = FrameCache(H, W, tmp_path / "cache")
    assert stored == sorted(cached._disk_path(video) for video in videos)
    for video in videos:
        frames = cached.get(video)
        np.testing.assert_array_equal(
            frames, np.stack([decode_frame(p, H, W) for p in video.frame_paths])
        )
    assert len(_decoded(decode_log)) == sum(LENGTHS.values())  # FrameCache decoded nothing

    other = tmp_path / "cache2"
    FrameCache(H, W, other).get_all(videos)
    for path in (other / f"{H}x{W}").iterdir():  # np.save's bytes, written frame by frame
        assert path.read_bytes() == (tmp_path / "cache" / f"{H}x{W}" / path.name).read_bytes()


def test_a_stopped_first_pass_resumes_with_the_missing_videos(
    videos: list, tmp_path: Path, decode_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FrameStore(tmp_path / "store", H, W, processes=1)
    logging_decode = decoding.decode_frame
    calls = {"n": 0}

    def interrupted_decode(path, height, width):  # Ctrl-C during the second video
        calls["n"] += 1
        if calls["n"] == LENGTHS["03"] + 3:
            raise KeyboardInterrupt
        return logging_decode(path, height, width)

    monkeypatch.setattr(decoding, "decode_frame", interrupted_decode)
    with pytest.raises(KeyboardInterrupt):
        store.fill(videos)
    size_dir = tmp_path / "store" / f"{H}x{W}"
    # Longest video first: 03 is complete, 01 was interrupted and left nothing behind.
    assert [p.name for p in size_dir.iterdir()] == [store.file(videos[2]).name]
    first_pass = len(_decoded(decode_log))

    monkeypatch.setattr(decoding, "decode_frame", logging_decode)
    resumed = FrameStore(tmp_path / "store", H, W, processes=2)  # a new run, two processes
    files = resumed.fill(videos)
    decoded_again = _decoded(decode_log)[first_pass:]
    expected = {str(p) for video in videos[:2] for p in video.frame_paths}
    assert sorted(decoded_again) == sorted(expected)  # 01 and 02 only, each frame once
    assert files == [store.file(video) for video in videos]
    assert {p.name for p in size_dir.iterdir()} == {f.name for f in files}

    # A damaged file counts as missing and is written again; complete ones are not.
    files[1].write_bytes(files[1].read_bytes()[:100])
    before = len(_decoded(decode_log))
    resumed.fill(videos)
    assert len(_decoded(decode_log)) - before == LENGTHS["02"]
    assert resumed.is_stored(files[1], LENGTHS["02"])


def test_a_frame_that_cannot_be_decoded_stops_the_pass_naming_it(
    videos: list, tmp_path: Path
) -> None:
    broken = videos[0].frame_paths[4]
    broken.write_bytes(b"not an image")
    store = FrameStore(tmp_path / "store", H, W, processes=2)
    with pytest.raises(InputError, match=broken.name):
        store.fill(videos)
    leftovers = [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert store.file(videos[0]).name not in leftovers
    assert not [name for name in leftovers if name.endswith(".tmp")]


def test_too_little_disk_space_fails_before_decoding(
    videos: list, tmp_path: Path, decode_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    folder = tmp_path / "store"
    needed = sum(LENGTHS.values()) * H * W * 3  # plus a header per file
    with pytest.raises(
        InputError, match=r"frame store .*needs 4 kB for 3 videos .* 1 kB free"
    ) as error:
        FrameStore(folder, H, W).fill(videos)
    assert str(folder / f"{H}x{W}") in str(error.value) and needed > 1000
    assert _decoded(decode_log) == []


def test_a_pickled_dataset_carries_file_names_not_frames(videos: list, tmp_path: Path) -> None:
    big = _make_tree(tmp_path / "big", {"01": 12, "02": 14})
    size = (48, 64)
    frame_bytes = sum(len(v) for v in big) * size[0] * size[1] * 3
    on_disk = FrameWindowDataset(big, *size, 5, FrameStore(tmp_path / "store", *size))
    in_memory = FrameWindowDataset(big, *size, 5)
    assert frame_bytes == 239_616
    assert len(pickle.dumps(on_disk)) < frame_bytes / 20
    assert len(pickle.dumps(in_memory)) > frame_bytes  # what spawned workers would receive
    received = pickle.loads(pickle.dumps(on_disk))
    for index in range(len(in_memory)):
        assert torch.equal(received[index], in_memory[index])
    assert isinstance(received.video_frames(1).base, np.memmap)


def test_frames_nbytes_and_device_windows_from_a_store(videos: list, tmp_path: Path) -> None:
    on_disk = FrameWindowDataset(videos, H, W, 3, FrameStore(tmp_path / "store", H, W))
    in_memory = FrameWindowDataset(videos, H, W, 3)
    assert frames_nbytes(on_disk) == sum(
        in_memory.video_frames(i).nbytes for i in range(len(videos))
    )
    batches = epoch_batches(len(on_disk), 5, seed=0, epoch=0)
    served = DeviceWindows.of(on_disk, torch.device("cpu")).loader(batches)
    for a, b in zip(served, DataLoader(in_memory, batch_sampler=batches), strict=True):
        assert torch.equal(a, b)


def test_in_memory_decoding_in_processes_equals_one_process(
    videos: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frame_cache, "_POOL_MIN_FRAMES", 1)
    parallel = FrameCache(H, W, processes=3).get_all(videos)
    for video, frames in zip(videos, parallel, strict=True):
        np.testing.assert_array_equal(frames, FrameCache(H, W).get(video))


def test_preload_false_loads_one_video_per_call_and_keeps_none(videos: list, decode_log) -> None:
    cache = FrameCache(H, W)
    dataset = FrameWindowDataset(videos, H, W, 4, cache, preload=False)
    assert _decoded(decode_log) == []
    frames = dataset.video_frames(1)
    assert len(_decoded(decode_log)) == LENGTHS["02"] and not cache._memory
    np.testing.assert_array_equal(frames, FrameWindowDataset(videos, H, W, 4).video_frames(1))


# --------------------------------------------------------------------------- memory budget


def _fake_system(root: Path, cgroup: str, mem_available_kb: int = 40_000_000) -> dict:
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "cgroup").write_text(cgroup)
    (root / "proc" / "meminfo").write_text(
        f"MemTotal:       64000000 kB\nMemFree:  1000 kB\nMemAvailable:   {mem_available_kb} kB\n"
    )
    return {
        "cgroup_root": root / "cgroup",
        "proc_self_cgroup": root / "proc" / "cgroup",
        "meminfo": root / "proc" / "meminfo",
    }


def _write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)


def test_memory_budget_reads_the_cgroup_v2_limit_above_the_process(tmp_path: Path) -> None:
    paths = _fake_system(tmp_path, "0::/jobs/run7\n")
    root = paths["cgroup_root"]
    _write(root, cgroup__controllers="cpu memory")
    _write(root / "jobs", memory__max="8000000000", memory__current="3000000000",
           memory__stat="anon 2000000000\ninactive_file 1000000000\nactive_file 5\n")  # fmt: skip
    _write(root / "jobs" / "run7", memory__max="max", memory__current="100")
    budget = memory_budget(**paths)
    assert budget.available == 8_000_000_000 - 2_000_000_000
    assert budget.source == "cgroup v2 limit 8.0 GB less 2.0 GB in use"

    # A tighter limit on the process's own cgroup wins.
    _write(root / "jobs" / "run7", memory__max="4000000000", memory__current="500000000")
    assert memory_budget(**paths).available == 3_500_000_000


def test_memory_budget_reads_the_cgroup_v1_limit(tmp_path: Path) -> None:
    paths = _fake_system(tmp_path, "5:cpu,cpuacct:/\n4:memory:/process/abc\n0::/\n")
    v1 = paths["cgroup_root"] / "memory"
    _write(v1, memory__limit_in_bytes="9223372036854771712")  # no limit
    _write(v1 / "process" / "abc", memory__limit_in_bytes="9223372036854771712")
    assert memory_budget(**paths) == MemoryBudget(40_000_000 * 1024, "MemAvailable")

    _write(v1 / "process" / "abc", memory__limit_in_bytes="6000000000",
           memory__usage_in_bytes="2500000000",
           memory__stat="cache 1\ninactive_file 7\ntotal_inactive_file 500000000\n")  # fmt: skip
    budget = memory_budget(**paths)
    assert budget.available == 6_000_000_000 - 2_000_000_000
    assert budget.source == "cgroup v1 limit 6.0 GB less 2.0 GB in use"


def test_memory_budget_takes_the_smaller_of_cgroup_room_and_mem_available(tmp_path: Path) -> None:
    paths = _fake_system(tmp_path, "0::/\n", mem_available_kb=1_000_000)
    _write(paths["cgroup_root"], cgroup__controllers="memory", memory__max="8000000000",
           memory__current="0")  # fmt: skip
    assert memory_budget(**paths) == MemoryBudget(1_024_000_000, "MemAvailable")
    paths["meminfo"].write_text("nothing useful\n")  # not Linux-like: physical memory
    assert memory_budget(**paths).available is not None


def test_auto_keeps_the_frames_in_memory_when_half_the_budget_holds_them(
    videos: list, tmp_path: Path
) -> None:
    split_bytes = sum(LENGTHS.values()) * H * W * 3  # 3,888
    longest = max(LENGTHS.values()) * H * W * 3 * 5  # as uint8 and float32
    roomy = MemoryBudget(2 * split_bytes, "MemAvailable")
    tight = MemoryBudget(2 * split_bytes - 2, "cgroup v2 limit 1 GB less 1 GB in use")

    chosen = choose_frames("auto", videos, H, W, budget=roomy)
    assert isinstance(chosen.source, FrameCache) and not chosen.on_disk
    assert chosen.line.startswith("frames: in memory (") and "<=" in chosen.line

    chosen = choose_frames("auto", videos, H, W, tmp_path / "cache", budget=tight)
    assert isinstance(chosen.source, FrameStore) and chosen.on_disk
    assert chosen.source.size_dir == tmp_path / "cache" / f"{H}x{W}"
    assert chosen.line.startswith("frames: disk-backed (") and "cgroup v2" in chosen.line
    assert chosen.line.endswith(f" in {tmp_path / 'cache' / f'{H}x{W}'}")

    # Evaluation holds one video at a time, as uint8 and float32: that must fit, not the split.
    many = [Video(f"{i:02d}", tuple(Path(f"{t}.png") for t in range(10))) for i in range(20)]
    frame = H * W * 3
    budget = MemoryBudget(2 * 100 * frame, "MemAvailable")  # half: 100 frames' bytes
    assert choose_frames("auto", many, H, W, budget=budget).on_disk  # 200 frames
    one = choose_frames("auto", many, H, W, budget=budget, one_video_at_a_time=True)
    assert not one.on_disk and "one video at a time" in one.line  # 10 frames x 5 bytes
    enough = MemoryBudget(2 * longest, "MemAvailable")
    assert not choose_frames("auto", videos, H, W, budget=enough, one_video_at_a_time=True).on_disk
    small = MemoryBudget(2 * longest - 2, "MemAvailable")
    assert choose_frames("auto", videos, H, W, budget=small, one_video_at_a_time=True).on_disk

    # Under torchrun every process on the machine holds its own copy.
    twice = choose_frames("auto", videos, H, W, budget=roomy, copies=2)
    assert twice.on_disk and "2 processes x 4 kB decoded >" in twice.line

    # Forced paths, whatever the budget.
    assert choose_frames("disk", videos, H, W, budget=roomy).on_disk
    forced = choose_frames("memory", videos, H, W, budget=tight)
    assert not forced.on_disk and "may run out of memory" in forced.line
    with pytest.raises(InputError, match="--frames"):
        choose_frames("ram", videos, H, W, budget=roomy)


def test_default_store_folder_is_outside_the_dataset(
    videos: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LGN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_store_dir() == tmp_path / "xdg" / "lgn-net" / "frames"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_store_dir() == Path.home() / ".cache" / "lgn-net" / "frames"
    monkeypatch.setenv("LGN_CACHE", str(tmp_path / "lgn"))
    chosen = choose_frames("disk", videos, H, W, dataset_dir=tmp_path / "frames")
    assert chosen.source.size_dir == tmp_path / "lgn" / "frames" / f"{H}x{W}"
    monkeypatch.setenv("LGN_CACHE", str(tmp_path / "frames" / "01"))
    with pytest.raises(InputError, match="inside the dataset"):
        choose_frames("disk", videos, H, W, dataset_dir=tmp_path / "frames")


# --------------------------------------------------------------------------- end to end


def test_evaluation_scores_are_the_same_from_every_source(videos: list, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LGNNet(t_length=3, msize=4, fdim=16, mdim=16, hidden=8).eval()
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(1))
    labels = {v.name: (np.arange(len(v)) % 3 == 0).astype(np.int64) for v in videos}

    def score(dataset: FrameWindowDataset):
        results, final_items = score_test_videos(
            model, items.clone(), dataset, labels, ScoringSettings(gamma=1.0, batch_size=2)
        )
        return results, final_items

    before = score(FrameWindowDataset(videos, 16, 16, 3))  # all decoded up front
    cache = FrameCache(16, 16)
    sources = {
        "memory, one video at a time": FrameWindowDataset(videos, 16, 16, 3, cache, preload=False),
        "disk": FrameWindowDataset(
            videos, 16, 16, 3, FrameStore(tmp_path / "store", 16, 16), preload=False
        ),
    }
    for name, dataset in sources.items():
        results, final_items = score(dataset)
        assert torch.equal(final_items, before[1]), name
        for a, b in zip(results, before[0], strict=True):
            assert a.name == b.name
            np.testing.assert_array_equal(a.scores.psnr, b.scores.psnr)
            np.testing.assert_array_equal(a.scores.feature_distance, b.scores.feature_distance)
            np.testing.assert_array_equal(a.normality, b.normality)
    assert not cache._memory  # nothing held after the pass


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    demo = ensure_demo_dataset(
        root, height=32, width=48, train_videos=1, test_videos=2, min_frames=20, max_frames=20
    )
    demo.rename(root / "ped2")
    return root


def test_train_and_evaluate_give_the_same_numbers_from_disk(
    demo_root: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """train.py and evaluate.py with --frames disk: the weights, losses and scores of
    --frames memory, bit for bit; each says which path it took."""

    def run(frames: str, workers: str) -> tuple[Path, dict]:
        out = tmp_path / frames
        cache = ["--cache_dir", str(tmp_path / "store")] if frames == "disk" else []
        argv = [
            "--dataset_type", "ped2", "--dataset_path", str(demo_root), "--output_root",
            str(out), "--h", "16", "--w", "24", "--batch_size", "4", "--epochs", "1",
            "--precision", "fp32", "--num_workers", workers, "--frames", frames,
            "--msize", "4", *cache,
        ]  # fmt: skip
        run_dir = train.main(train.get_args_parser().parse_args(argv))
        report = evaluate_run(
            demo_root, run_dir / "checkpoint.pth", "--frames", frames, *cache,
            "--scores", str(tmp_path / f"{frames}.csv"),
        )  # fmt: skip
        return run_dir, report

    memory_run, memory_report = run("memory", "0")
    assert "frames: in memory (--frames memory" in capfd.readouterr().err
    disk_run, disk_report = run("disk", "2")
    err = capfd.readouterr().err
    assert f"frames: disk-backed (--frames disk) in {tmp_path / 'store' / '16x24'}" in err

    weights = torch.load(memory_run / "model.pth"), torch.load(disk_run / "model.pth")
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    logs = [json.loads((r / "log.jsonl").read_text()) for r in (memory_run, disk_run)]
    assert {k: v for k, v in logs[0].items() if k != "seconds"} == {
        k: v for k, v in logs[1].items() if k != "seconds"
    }
    assert disk_report["auc"] == memory_report["auc"]
    assert (tmp_path / "disk.csv").read_text() == (tmp_path / "memory.csv").read_text()


def test_a_ped2_video_through_the_store_equals_decode_frame(ped2_dir: Path, tmp_path: Path):
    video = list_videos(ped2_dir / "training" / "frames")[0]
    store = FrameStore(tmp_path / "store", 32, 48, processes=1)
    frames = store.load(video)
    assert frames.shape == (len(video), 32, 48, 3) and len(video) > 100
    for index in (0, 1, len(video) // 2, len(video) - 1):
        np.testing.assert_array_equal(frames[index], decode_frame(video.frame_paths[index], 32, 48))
    assert np.array_equal(frames, FrameCache(32, 48).get(video))


@pytest.mark.parametrize("frames", ["disk", "memory"])
def test_a_frame_edited_with_its_size_and_mtime_kept_is_decoded_afresh(
    frames: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    """evaluate.py --frames disk|memory --cache_dir: a frame rewritten in place at the same
    size (BMP) with its modification time set back, as ``cp -p``/``rsync -a`` or a
    fixed-size re-encode leave it, is not served from the cached frames: the scores equal a
    run with an empty cache, not the run before the edit."""
    torch.manual_seed(0)  # an untrained network scores an edited frame differently too
    network = LGNNet(t_length=2, msize=4, fdim=64, mdim=64)
    checkpoint = tmp_path / "checkpoint.pth"
    items = init_memory_items(4, 64, generator=torch.Generator().manual_seed(1))
    checkpoint_format.write(checkpoint_format.build(network, items, (16, 24), epoch=1), checkpoint)
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset / "ped2", root / "ped2")
    for png in sorted((root / "ped2" / "testing").rglob("*.png")):  # BMP: a fixed file size
        assert cv2.imwrite(str(png.with_suffix(".bmp")), cv2.imread(str(png)))
        png.unlink()
    video = sorted(p for p in (root / "ped2" / "testing" / "frames").iterdir() if p.is_dir())[0]
    frame = sorted(video.iterdir())[len(list(video.iterdir())) // 2]

    def scores(cache: Path) -> str:
        csv = tmp_path / "scores.csv"
        evaluate_run(
            root, checkpoint, "--frames", frames, "--cache_dir", str(cache), "--scores", str(csv)
        )
        return csv.read_text()

    before = scores(tmp_path / "cache")
    stat = frame.stat()
    edited = 255 - cv2.imread(str(frame))
    assert cv2.imwrite(str(tmp_path / "edited.bmp"), edited)
    frame.write_bytes((tmp_path / "edited.bmp").read_bytes())  # in place: the same inode
    os.utime(frame, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (frame.stat().st_size, frame.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    after = scores(tmp_path / "cache")
    assert after == scores(tmp_path / "fresh cache")
    assert after != before
