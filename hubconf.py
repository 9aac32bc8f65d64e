"""torch.hub entry points::

    scorer = torch.hub.load("<owner>/<repository>", "lgn_net", weights="ped2")
    scorer = torch.hub.load(".", "lgn_net", weights="ped2", source="local")  # a checkout
    scores = scorer.score("clip.mp4")  # per-frame PSNR, feature distance, normality

See ``inference/api.py`` for what a scorer does.
"""

from __future__ import annotations

dependencies = ["torch", "cv2", "numpy", "scipy", "sklearn", "tqdm"]


def lgn_net(weights: str | None = None, device: str = "auto", precision: str = "auto", **kw):
    """LGN-Net with its memory items, ready to score videos (an ``inference.api.Scorer``;
    its ``model`` is the network).

    Args:
        weights: a published name (``"ped2"``), a ``checkpoint.pth`` path or a URL; None for
            an untrained network at the paper's sizes with fresh memory items.
        device, precision: as ``--device`` / ``--precision`` (``auto``: CUDA when present).
        **kw: scoring settings of ``Scorer`` (``gamma``, ``memory_update``, ``lambda_``,
            ``false_alarm_rate``).
    """
    from inference.api import Scorer, load_scorer
    from model import LGNNet, init_memory_items
    from model.checkpoint import LoadedModel
    from utils import resolve_device

    if weights is not None:
        return load_scorer(weights, device=device, precision=precision, **kw)
    target = resolve_device(device)
    model = LGNNet().to(target).eval()
    items = init_memory_items(model.msize, model.mdim, device=target)
    return Scorer(LoadedModel(model, items, 256, 256, "untrained", {}, None), precision, **kw)
