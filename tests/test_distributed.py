"""Multi-process training: the distributed memory update against the single-process rule on
the concatenated queries (2 gloo processes), the helpers' collectives, and a short torchrun
run of train.py whose processes are checked to hold identical items at every step."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import make_tiny_dataset

import evaluate
import train
from common.errors import InputError
from model import LGNNet, init_memory_items, update_memory
from model.memory import update_memory_distributed
from training import distributed

REPO_ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
# Uneven shares: the combined update must not depend on how the queries are split.
SPLIT = (30, 18)


def query_set(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """48 unit queries of dimension 32 clustered around 6 items, so that every item is the
    best match of queries on both processes and the per-item maxima come from either."""
    generator = torch.Generator().manual_seed(seed)
    items = F.normalize(torch.randn(6, 32, generator=generator), dim=1)
    owners = torch.arange(48) % 6
    noise = 0.6 * torch.randn(48, 32, generator=generator)
    return F.normalize(items[owners] + noise, dim=1), items


def two_process_checks(rank: int, rendezvous: str, out_dir: str) -> None:
    """Runs in each of the 2 spawned processes; results go to ``out_dir/rank<r>.pt``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=WORLD)
    try:
        queries, items = query_set()
        mine = queries.split(SPLIT)[rank]
        results: dict[str, object] = {
            "distributed": update_memory_distributed(mine, items),
            "local_only": update_memory(mine, items),
            "any_rank": distributed.any_rank(rank == 1),
            "none_rank": distributed.any_rank(False),
            # Rank r saw (r + 1) steps with loss values 1, 2, ... summed.
            "means": distributed.mean_over_ranks(
                {"loss": float(sum(range(1, rank + 2))), "pixel": 10.0 * (rank + 1)}, rank + 1
            ),
            "gathered": distributed.gather_to_main({"rank": rank}),
            "shared": distributed.share_from_main(lambda: f"made by {rank}"),
        }
        same = torch.arange(6.0)
        distributed.check_in_sync({"same": same}, "in the test")
        try:
            distributed.check_in_sync({"drifted": same + rank}, "in the test")
            results["drift_error"] = None
        except RuntimeError as error:
            results["drift_error"] = str(error)

        def refuse() -> None:
            raise InputError("the output folder is read-only")

        try:
            distributed.share_from_main(refuse)
            results["shared_error"] = None
        except InputError as error:
            results["shared_error"] = str(error)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("gloo")
    rendezvous = f"file://{out_dir / 'rendezvous'}"
    mp.spawn(two_process_checks, args=(rendezvous, str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_distributed_update_equals_the_update_on_the_concatenated_queries(
    two_process_results: list[dict],
) -> None:
    queries, items = query_set()
    expected = update_memory(queries, items)
    for result in two_process_results:
        assert torch.allclose(result["distributed"], expected, atol=1e-6)
    # Every process holds the same items, bit for bit.
    assert torch.equal(two_process_results[0]["distributed"], two_process_results[1]["distributed"])
    # The check has teeth: each process's own update differs from the combined one.
    for result in two_process_results:
        assert (result["local_only"] - expected).abs().max() > 1e-3


def test_helpers_agree_across_processes(two_process_results: list[dict]) -> None:
    for rank, result in enumerate(two_process_results):
        assert result["any_rank"] is True and result["none_rank"] is False
        # Pooled over 1 + 2 steps: loss (1 + 3) / 3, pixel (10 + 20) / 3.
        assert result["means"] == pytest.approx({"loss": 4 / 3, "pixel": 10.0})
        assert list(result["means"]) == ["loss", "pixel"]
        assert result["gathered"] == ([{"rank": 0}, {"rank": 1}] if rank == 0 else [])
        assert result["shared"] == "made by 0"
        assert result["shared_error"] == "the output folder is read-only"
        assert result["drift_error"] is not None
        assert "drifted differ between rank 0 and rank 1 in the test" in result["drift_error"]


def test_without_a_process_group_everything_is_single_process() -> None:
    assert not dist.is_initialized()
    queries, items = query_set(1)
    assert torch.equal(update_memory_distributed(queries, items), update_memory(queries, items))
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.mean_over_ranks({"loss": 3.0}, 2) == {"loss": 1.5}

    torch.manual_seed(0)
    net = LGNNet(msize=4, fdim=64, mdim=64, hidden=16)
    assert distributed.wrap_model(net, torch.device("cpu")) is net
    frames = torch.rand(2, 12, 16, 24) * 2 - 1
    items = init_memory_items(4, 64, generator=torch.Generator().manual_seed(1))
    outputs = []
    # Outside a process group the distributed update must be the plain one, bit for bit.
    for update in (update_memory, update_memory_distributed):
        net.memory_update = update
        torch.manual_seed(2)
        net.zero_grad()
        out = net(frames, items)
        (out.prediction.square().mean() + out.compactness + out.separateness).backward()
        outputs.append(
            (out, [p.grad.clone() for p in net.encoder.parameters() if p.grad is not None])
        )
    (expected, expected_grads), (actual, actual_grads) = outputs
    for name in ("prediction", "items", "compactness", "separateness"):
        assert torch.equal(getattr(actual, name), getattr(expected, name)), name
    assert len(actual_grads) == len(expected_grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(actual_grads, expected_grads, strict=True))


@pytest.mark.parametrize("epoch", [0, 3])
def test_rank_batches_are_distributed_sampler_shards(epoch: int) -> None:
    num_windows, batch_size, seed = 23, 3, 5
    shards = [
        distributed.rank_batches(num_windows, batch_size, seed, epoch, rank, WORLD)
        for rank in range(WORLD)
    ]
    # DistributedSampler's documented recipe: permute with seed + epoch, drop the tail that
    # does not divide evenly, deal the rest round-robin.
    order = torch.randperm(num_windows, generator=torch.Generator().manual_seed(seed + epoch))
    usable = order[: num_windows - num_windows % WORLD].tolist()
    for rank, batches in enumerate(shards):
        dealt = usable[rank::WORLD]
        assert len(batches) == len(dealt) // batch_size == 3
        assert [i for batch in batches for i in batch] == dealt[: 3 * batch_size]
    assert not set(np.ravel(shards[0])) & set(np.ravel(shards[1]))
    other_epoch = distributed.rank_batches(num_windows, batch_size, seed, epoch + 1, 0, 2)
    assert other_epoch != shards[0]


# --------------------------------------------------------------------------- torchrun


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny dataset's shape with 1 training video of 20 frames: 16 training
    windows, 4 steps of 2 windows per process and epoch."""
    root = tmp_path_factory.mktemp("data")
    return make_tiny_dataset(root, train_videos=1, test_videos=2, min_frames=20, max_frames=20)


def torchrun_train(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(WORLD), "train.py", "--dataset_type", "ped2"]
    command += ["--dataset_path", str(root), "--output_root", str(out), "--h", "16", "--w", "24"]
    command += ["--batch_size", "2", "--num_workers", "0", "--precision", "fp32", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def training_windows(root: Path) -> int:
    videos = sorted((root / "ped2" / "training" / "frames").iterdir())
    return sum(len(list(video.iterdir())) - 4 for video in videos)


def test_torchrun_keeps_items_identical_resumes_and_evaluates(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = torchrun_train(tiny_dataset, tmp_path, "--epochs", "1", "--sync_check_every", "1")
    run_dir = tmp_path / "ped2" / "log"
    # Each process trains on its half of the windows, in batches of 2.
    steps = training_windows(tiny_dataset) // WORLD // 2
    checked = re.findall(
        r"sync check after epoch 1, step (\d+): memory items and weights identical on 2 "
        r"processes",
        first.stderr,
    )
    assert [int(step) for step in checked] == list(range(1, steps + 1))
    assert "sync check at the end of training: memory items and weights identical" in first.stderr

    checkpoint = torch.load(run_dir / "checkpoint.pth", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["world_size"]) == (1, 0, 2)
    assert len(checkpoint["rng_by_rank"]) == 2
    assert torch.allclose(checkpoint["items"].norm(dim=1), torch.ones(10), atol=1e-5)
    # Rank 0 alone logs: one line per epoch.
    assert len((run_dir / "log.jsonl").read_text().splitlines()) == 1

    second = torchrun_train(tiny_dataset, tmp_path, "--epochs", "2", "--resume")
    assert "resuming at epoch 2, step 0" in second.stderr
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2]
    resumed = torch.load(run_dir / "checkpoint.pth", weights_only=True)
    assert resumed["epoch"] == 2 and not torch.equal(resumed["items"], checkpoint["items"])

    argv = ["--dataset_type", "ped2", "--dataset_path", str(tiny_dataset)]
    argv += ["--checkpoint", str(run_dir / "checkpoint.pth"), "--precision", "fp32"]
    report = evaluate.main(evaluate.get_args_parser().parse_args(argv))
    assert "Frame AUC: " in capsys.readouterr().out
    assert 0.0 <= report["auc"] <= 1.0 and (report["h"], report["w"]) == (16, 24)

    # A checkpoint saved mid-epoch by 2 processes cannot continue in 1.
    checkpoint["step"] = 1
    mid_epoch = tmp_path / "mid_epoch.pth"
    torch.save(checkpoint, mid_epoch)
    argv = ["--dataset_type", "ped2", "--dataset_path", str(tiny_dataset), "--h", "16"]
    argv += ["--w", "24", "--output_root", str(tmp_path / "single"), "--resume", str(mid_epoch)]
    argv += ["--epochs", "3"]  # the run had 1: resuming keeps it unless given
    with pytest.raises(InputError, match="saved mid-epoch by 2 processes, this run has 1"):
        train.main(train.get_args_parser().parse_args(argv))


def test_sync_bn_on_cpu_is_an_input_error(tmp_path: Path) -> None:
    argv = ["--dataset_type", "demo", "--device", "cpu", "--sync_bn"]
    argv += ["--output_root", str(tmp_path)]
    with pytest.raises(InputError, match="--sync_bn needs CUDA"):
        train.main(train.get_args_parser().parse_args(argv))
