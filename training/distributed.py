"""Data-parallel training across processes, launched by ``torchrun``.

``train.py`` calls these helpers on every process. Outside ``torchrun`` (no ``RANK`` /
``WORLD_SIZE`` in the environment) no process group exists and every helper reduces to the
single-process behaviour: rank 0 of 1, collectives are no-ops, the model is not wrapped.

The memory items are state outside the network's parameters, so DistributedDataParallel
does not keep them in step: :func:`wrap_model` makes every process apply the same
memory update, computed from the queries of all processes together.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DistributedSampler

from common.errors import InputError
from model import LGNNet
from model.memory import update_memory_distributed

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (which sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by ``torchrun``; returns this process's device.

    On CUDA each process takes the GPU ``LOCAL_RANK`` of its node and the backend is NCCL;
    on CPU the backend is gloo. Outside ``torchrun`` ``device`` is returned unchanged.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise InputError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                "lower torchrun's --nproc_per_node to the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def teardown() -> None:
    """Leave the process group (if any)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes outputs and logs (global rank 0)."""
    return rank() == 0


def _collective_device() -> torch.device:
    """Where tensors for collectives must live: NCCL reduces only CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """``flag`` OR-ed over all processes, so that every process takes the same branch
    (a signal may reach the processes between different steps)."""
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(totals: dict[str, float], count: int) -> dict[str, float]:
    """Per-key means of values summed over ``count`` steps, pooled over all processes."""
    pooled, pooled_count = sum_over_ranks(totals, count)
    return {key: value / max(pooled_count, 1) for key, value in pooled.items()}


def sum_over_ranks(totals: dict[str, float], count: int) -> tuple[dict[str, float], int]:
    """Per-key sums over ``count`` steps and the count, each summed over all processes."""
    if not is_distributed():
        return dict(totals), count
    sums = torch.tensor(
        [*totals.values(), float(count)], dtype=torch.float64, device=_collective_device()
    )
    dist.all_reduce(sums)
    *pooled, pooled_count = sums.tolist()
    return dict(zip(totals, pooled, strict=True)), round(pooled_count)


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every process (in place; returned for convenience)."""
    if is_distributed():
        dist.broadcast(tensor, src=0)
    return tensor


def share_from_main(produce: Callable[[], T]) -> T:
    """Run ``produce`` on rank 0 only and give its result to every process.

    An :class:`InputError` raised by ``produce`` is raised on every process, so all of them
    exit with the same message instead of the others waiting forever. Used for work that
    touches the output folder, which may exist on rank 0's machine only.
    """
    if not is_distributed():
        return produce()
    shared: list[Any] = [None]
    if is_main():
        try:
            shared[0] = ("ok", produce())
        except InputError as error:
            shared[0] = ("error", str(error))
    dist.broadcast_object_list(shared, src=0)
    status, value = shared[0]
    if status == "error":
        raise InputError(value)
    return value


def gather_to_main(value: T) -> list[T]:
    """Every process's ``value`` in rank order on rank 0 (an empty list elsewhere)."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * world_size() if is_main() else []
    dist.gather_object(value, gathered if is_main() else None, dst=0)
    return gathered


def rank_batches(
    num_windows: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int
) -> list[list[int]]:
    """This process's batches of one epoch: a :class:`DistributedSampler` shard (shuffled
    with ``seed``, ``set_epoch(epoch)``, tail dropped so all processes get equally many
    windows) cut into full batches. A pure function of its arguments, so a resumed run
    with the same number of processes sees the same batches."""
    sampler = DistributedSampler(
        range(num_windows),
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    return list(BatchSampler(sampler, batch_size, drop_last=True))


def wrap_model(model: LGNNet, device: torch.device) -> nn.Module:
    """The module a training step calls: ``model`` itself outside a process group, else
    DistributedDataParallel around it, with the memory update combined over all processes
    (:func:`update_memory_distributed`) so that every process holds the same items."""
    if not is_distributed():
        return model
    model.memory_update = update_memory_distributed
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        # The reference's unused BatchNorm(512) never gets a gradient; a static graph lets
        # DDP learn that once instead of searching for unused parameters every step.
        static_graph=True,
    )


def parameter_digest(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """Per-parameter (sum, sum of squares) in float64, ``(P, 2)``: equal weights give equal
    digests bit for bit, and a drift between processes changes them."""
    rows = [
        torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
        for p in parameters
    ]
    return torch.stack(rows)


def check_in_sync(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raise ``RuntimeError`` on every process unless each tensor is bit-identical on all
    processes (a debugging check, ``train.py --sync_check_every``)."""
    if not is_distributed():
        return
    device = _collective_device()
    for name, tensor in tensors.items():
        local = tensor.detach().to(device).contiguous()
        copies = [torch.empty_like(local) for _ in range(world_size())]
        dist.all_gather(copies, local)
        for other_rank, copy in enumerate(copies[1:], start=1):
            if not torch.equal(copy, copies[0]):
                difference = float((copy.double() - copies[0].double()).abs().max())
                raise RuntimeError(
                    f"{name} differ between rank 0 and rank {other_rank} {where} "
                    f"(largest difference {difference:.3g}): the processes are out of step"
                )
