"""The prototype memory of MNAD / LGN-Net: M unit-norm items of dimension D, no learnable weights.

Everything here works on plain tensors and runs in fp32 (inputs in lower precision are
upcast), because the item update divides and re-normalises small differences.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F


def init_memory_items(
    msize: int = 10,
    mdim: int = 512,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Fresh items: L2-normalised uniform[0, 1) noise, ``(msize, mdim)`` fp32."""
    items = torch.rand(msize, mdim, generator=generator)
    return F.normalize(items, dim=1).to(device)


def flatten_query(features: torch.Tensor) -> torch.Tensor:
    """Encoder features ``(B, D, h, w)`` -> unit-norm queries ``(B*h*w, D)`` fp32.

    Rows are ordered batch-major, then row, then column (the reference's permute order).
    """
    queries = features.float().permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    return F.normalize(queries, dim=1)


def _fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device`` (nothing to switch off where it has none)."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def similarity(queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Raw scores ``S = q · Mᵀ``, ``(N, M)``, in fp32 even inside an autocast region."""
    with _fp32_region(queries.device):
        return queries.float() @ items.float().t()


def read_memory(
    queries: torch.Tensor, items: torch.Tensor, feature_shape: torch.Size
) -> torch.Tensor:
    """Memory read: softmax over items (per query), weights detached, times the items.

    The decoder consumes this read alone (:meth:`model.lgn_net.LGNNet.decode`), unlike MNAD,
    which concatenates it with the query.

    Args:
        queries: ``(N, D)`` unit-norm queries, N = B*h*w.
        items: ``(M, D)``.
        feature_shape: ``(B, D, h, w)`` of the encoder features the queries came from.

    Returns:
        The read ``(B, D, h, w)``. It carries no gradient to the items (the memory has no
        learnable parameters; it changes only through :func:`update_memory`).
    """
    items = items.detach()
    score_memory = torch.softmax(similarity(queries, items), dim=1).detach()
    batch, dim, height, width = feature_shape
    with _fp32_region(queries.device):
        read = score_memory @ items.float()
    return read.reshape(batch, height, width, dim).permute(0, 3, 1, 2)


def item_update_terms(
    queries: torch.Tensor, items: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-item pieces of the update rule, before any cross-process reduction.

    Returns ``(scores, assignment, column_max)``: raw scores ``(N, M)``, each query's best
    item ``(N,)``, and the maximum raw score of each item over the N queries ``(M,)``.
    """
    scores = similarity(queries, items)
    return scores, scores.argmax(dim=1), scores.max(dim=0).values


def summed_query_updates(
    queries: torch.Tensor,
    scores: torch.Tensor,
    assignment: torch.Tensor,
    column_max: torch.Tensor,
) -> torch.Tensor:
    """``Σ_j (score_query[j,i] / max_k score_query[k,i]) · q_j`` over queries assigned to item i.

    score_query is a softmax over the N queries, so its ratio to the column maximum is
    ``exp(S[j,i] - max_k S[k,i])``: the softmax denominator cancels. Computing it this way
    is stabler, and lets several processes combine their queries with a max and a sum.
    Items with no query get a zero row. Returns ``(M, D)``.
    """
    ratio = torch.exp(scores - column_max.unsqueeze(0))
    weight = ratio.gather(1, assignment.unsqueeze(1))
    updates = queries.new_zeros(scores.shape[1], queries.shape[1])
    return updates.index_add_(0, assignment, weight * queries)


@torch.no_grad()
def update_memory(queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """The memory update rule, vectorised: each query is assigned to its best item; item i
    receives ``Σ_j (score_query[j,i] / max_k score_query[k,i]) · q_j`` over its assigned
    queries j (score_query: softmax over the N queries, per item); items with no query
    receive nothing; the sums are added to the items, which are then L2-normalised.

    Args:
        queries: ``(N, D)`` unit-norm queries (from :func:`flatten_query`).
        items: ``(M, D)`` current items.

    Returns:
        New items ``normalise(M + Σ weighted assigned queries)``, ``(M, D)``, detached.
    """
    queries, items = queries.float(), items.float()
    scores, assignment, column_max = item_update_terms(queries, items)
    updates = summed_query_updates(queries, scores, assignment, column_max)
    return F.normalize(items + updates, dim=1)


@torch.no_grad()
def update_memory_distributed(
    queries: torch.Tensor, items: torch.Tensor, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """:func:`update_memory` over the queries of every process in ``group`` together.

    Each process passes its own queries ``(N_r, D)`` (N_r may differ between processes) and
    the same items ``(M, D)``; each gets back the items :func:`update_memory` would return on
    the concatenation of all processes' queries (equal up to float summation order), and all
    processes get bit-identical items. Two collectives: the per-item score maxima are
    all-reduced with MAX (the normaliser of the weights, see :func:`summed_query_updates`),
    then the weighted query sums with SUM. Without an initialised process group, or with a
    single process, this is :func:`update_memory` exactly.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return update_memory(queries, items)
    queries, items = queries.float(), items.float()
    scores, assignment, column_max = item_update_terms(queries, items)
    dist.all_reduce(column_max, op=dist.ReduceOp.MAX, group=group)
    updates = summed_query_updates(queries, scores, assignment, column_max)
    dist.all_reduce(updates, op=dist.ReduceOp.SUM, group=group)
    return F.normalize(items + updates, dim=1)


class MemoryLosses(NamedTuple):
    compactness: torch.Tensor
    separateness: torch.Tensor


def memory_losses(queries: torch.Tensor, items: torch.Tensor) -> MemoryLosses:
    """Compactness (MSE to the best item) and separateness (triplet margin 1.0, L2, with the
    best item as positive and the second best as negative). Items are detached."""
    items = items.detach()
    top2 = similarity(queries, items).topk(2, dim=1).indices
    best, second = items[top2[:, 0]], items[top2[:, 1]]
    compactness = F.mse_loss(queries, best)
    separateness = F.triplet_margin_loss(queries, best, second, margin=1.0)
    return MemoryLosses(compactness, separateness)


def feature_distance(queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between each query and its best item over all N·D values
    (a scalar)."""
    best = similarity(queries, items).argmax(dim=1)
    return ((queries - items[best]) ** 2).mean()
