"""torch.hub entry points::

    scorer = torch.hub.load(".", "lgn_net", weights="exp/ped2/log/checkpoint.pth", source="local")
    scorer = torch.hub.load("<owner>/<repository>", "lgn_net", weights="<published name>")
    scorer = torch.hub.load(".", "lgn_net", weights="untrained", source="local")  # random
    scores = scorer.score("clip.mp4")  # per-frame PSNR, feature distance, normality

See ``inference/api.py`` for what a scorer does and accepts. ``model.pretrained`` lists the
published names (``ped2-32x48``: Ped2 at 32x48, trained on a CPU).
"""

from __future__ import annotations

dependencies = ["torch", "cv2", "numpy", "scipy", "sklearn", "tqdm"]

UNTRAINED = "untrained"


def lgn_net(weights: str | None = None, device: str = "auto", precision: str = "auto", **kw):
    """LGN-Net with its memory items, ready to score videos (an ``inference.api.Scorer``;
    its ``model`` is the network).

    Args:
        weights: a published name, a ``checkpoint.pth`` path or a URL (read as data only);
            ``"untrained"`` for a network at the paper's sizes with random weights and fresh
            memory items (its scores mean nothing). Required: there is no silent default.
        device, precision: as ``--device`` / ``--precision`` (``auto``: CUDA when present).
        **kw: scoring settings of ``Scorer`` (``gamma``, ``memory_update``, ``lambda_``,
            ``false_alarm_rate``).
    """
    from common.devices import resolve_device
    from common.errors import InputError
    from inference.api import Scorer, load_scorer
    from model import LGNNet, init_memory_items
    from model.checkpoint import build
    from model.config import FRAME_SIZE
    from model.pretrained import published_names
    from model.weights_file import LoadedModel

    if weights is None:
        raise InputError(
            f"give weights: a published name ({published_names()}), a checkpoint path or URL, "
            f"or {UNTRAINED!r} for a network with random weights"
        )
    if weights != UNTRAINED:
        return load_scorer(weights, device=device, precision=precision, **kw)
    target = resolve_device(device, flag="device")
    model = LGNNet().to(target).eval()
    items = init_memory_items(model.msize, model.mdim, device=target)
    checkpoint = build(model, items, (FRAME_SIZE, FRAME_SIZE))
    loaded = LoadedModel(model, items, FRAME_SIZE, FRAME_SIZE, UNTRAINED, checkpoint, None)
    return Scorer(loaded, precision, **kw)
