"""Evaluate a trained LGN-Net on a benchmark's test videos: frame-level AUC (SPEC protocol).

Example::

    python evaluate.py --dataset_type ped2 --checkpoint exp/ped2/log/checkpoint.pth
    python evaluate.py --dataset_type ped2 --model_dir model.pth --m_items_dir keys.pt

Protocol: videos in order, windows in order, test-time memory update when a frame's point
score is below gamma, per-video min-max normalisation, the first t_length-1 frames of every
video dropped, frame AUC pooled over all videos.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from data.datasets import dataset_dir_for
from data.frames import (
    FrameCache,
    FrameWindowDataset,
    find_split_dir,
    frames_to_tensor,
    list_videos,
)
from data.labels import load_frame_labels
from model import LGNNet
from model.checkpoint import (
    extract_state_dict,
    infer_model_sizes,
    load_memory_items,
    load_model_weights,
)
from model.lgn_net import Encoded
from model.pretrained import resolve_checkpoint
from model.test_time import score_next_frame
from utils import (
    InputError,
    atomic_write,
    autocast,
    equal_error_rate,
    frame_auc,
    normality_scores,
    resolve_device,
    resolve_precision,
    run_cli,
    smooth_scores,
)

DATASET_TYPES = ("ped2", "avenue", "shanghai", "demo")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("LGN-Net evaluation", add_help=True)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_type", default="ped2", choices=DATASET_TYPES)
    data.add_argument("--dataset_path", default="./datasets", help="folder holding <dataset_type>/")
    data.add_argument("--label_path", default=None, help="label file or folder (default: found)")
    data.add_argument("--cache_dir", default=None, help="keep decoded, resized frames here")
    data.add_argument("--h", type=int, default=None, help="frame height (default: as trained)")
    data.add_argument("--w", type=int, default=None, help="frame width (default: as trained)")
    data.add_argument("--c", type=int, default=None, help="channels per frame")
    data.add_argument("--t_length", type=int, default=None, help="frames per window")

    weights = parser.add_argument_group("weights")
    weights.add_argument(
        "--checkpoint", default=None, help="our checkpoint.pth: a path, URL or published name"
    )
    weights.add_argument("--model_dir", default=None, help="reference layout: state_dict file")
    weights.add_argument("--m_items_dir", default=None, help="reference layout: memory items file")
    weights.add_argument("--msize", type=int, default=None, help="memory items (default: found)")

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--lambda",
        dest="lambda_",
        type=float,
        default=0.6,
        help="weight of the frame error score against the memory distance",
    )
    scoring.add_argument(
        "--gamma", type=float, default=0.009, help="test-time memory update threshold"
    )
    scoring.add_argument(
        "--no_memory_update", action="store_true", help="disable test-time memory updates"
    )
    scoring.add_argument(
        "--smooth", type=float, default=0.0, help="Gaussian temporal smoothing sigma (frames)"
    )
    scoring.add_argument("--error_metric", default="psnr", choices=("psnr", "ssim", "lpips"))

    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    run.add_argument(
        "--eval_batch_size",
        type=int,
        default=8,
        help="windows encoded together; scores equal the one-by-one protocol",
    )
    run.add_argument("--report", default=None, help="write a JSON report here")
    run.add_argument("--scores", default=None, help="write per-frame scores (CSV) here")
    run.add_argument("--plot_dir", default=None, help="save score curves and the ROC curve here")
    run.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    return parser


class VideoScores(NamedTuple):
    psnr: np.ndarray  # (T - t_length + 1,) dB
    feature_distance: np.ndarray  # (T - t_length + 1,)
    frame_score: np.ndarray  # error measure where higher = more normal (PSNR by default)
    items: torch.Tensor  # memory items after the video
    memory_updates: int = 0  # frames whose point score fell below gamma (0 without updates)


class FrameScorer:
    """Optional image-quality measures beside PSNR (higher = more normal)."""

    def __init__(self, metric: str, device: torch.device) -> None:
        self.metric = metric
        self._lpips = None
        if metric == "lpips":
            try:
                import lpips

                self._lpips = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
            except Exception as error:  # weights download on first use
                raise InputError(
                    f"--error_metric lpips needs the lpips package and its AlexNet weights "
                    f"({type(error).__name__}: {error}); install lpips with network access "
                    "once, or use --error_metric psnr"
                ) from None

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor, psnr: float) -> float:
        if self.metric == "psnr":
            return psnr
        if self.metric == "ssim":
            from skimage.metrics import structural_similarity

            pred = ((prediction[0].float().cpu().numpy() + 1) / 2).transpose(1, 2, 0)
            true = ((target[0].float().cpu().numpy() + 1) / 2).transpose(1, 2, 0)
            return float(structural_similarity(pred, true, channel_axis=2, data_range=1.0))
        with torch.no_grad():
            # lpips expects RGB in [-1, 1]; our frames are BGR.
            distance = self._lpips(prediction.float().flip(1), target.float().flip(1))
        return -float(distance)


def video_windows(frames: torch.Tensor, start: int, stop: int, t_length: int) -> torch.Tensor:
    """Stack the inputs of windows ``start..stop-1``: ``(stop-start, (t_length-1)*c, H, W)``
    from frames ``(T, c, H, W)``."""
    return torch.stack([frames[k : k + t_length - 1].flatten(0, 1) for k in range(start, stop)])


@torch.no_grad()
def evaluate_video(
    model: LGNNet,
    frames: torch.Tensor,
    items: torch.Tensor,
    gamma: float,
    update: bool = True,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
    scorer: FrameScorer | None = None,
) -> VideoScores:
    """Score every predictable frame of one video, in order, with test-time memory updates.

    The memory-independent work (both encoders and the spatiotemporal branch) runs on
    ``batch_size`` windows at once; the memory read, decoding and updates then go frame by
    frame, so the scores equal the one-window-at-a-time protocol.

    Args:
        frames: ``(T, c, H, W)`` in [-1, 1] on the model's device.
        items: memory items ``(M, D)`` at the start of the video.
        gamma: a frame updates the memory when its point score is below gamma.
    """
    model.eval()
    t_length = model.t_length
    num_windows = frames.shape[0] - t_length + 1
    psnrs, distances, frame_scores = [], [], []
    memory_updates = 0
    device = frames.device
    for start in range(0, num_windows, batch_size):
        stop = min(start + batch_size, num_windows)
        with autocast(device, dtype):
            encoded = model.encode(video_windows(frames, start, stop, t_length))
        for offset in range(stop - start):
            target = frames[start + offset + t_length - 1].unsqueeze(0)
            single = Encoded(*(part[offset : offset + 1] for part in encoded))
            step = score_next_frame(model, single, target, items, gamma, update, dtype)
            items = step.items
            memory_updates += step.updated
            psnrs.append(step.psnr)
            distances.append(step.feature_distance)
            frame_scores.append(scorer(step.prediction, target, step.psnr) if scorer else step.psnr)
    return VideoScores(
        np.array(psnrs), np.array(distances), np.array(frame_scores), items, memory_updates
    )


def read_torch_file(path: str, flag: str) -> Any:
    """``torch.load`` of a weights or items file; an unreadable one names ``flag`` and ``path``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated, empty or not written by torch.save
        raise InputError(
            f"cannot read the {flag} file {path} ({type(error).__name__}); it may be damaged "
            "or not written by torch.save"
        ) from None


def load_weights(
    args: argparse.Namespace, device: torch.device
) -> tuple[LGNNet, torch.Tensor, str]:
    """Build the model and its memory from ``--checkpoint`` or the reference pair
    ``--model_dir``/``--m_items_dir``; sizes not given as flags come from the checkpoint."""
    if args.checkpoint:
        path = resolve_checkpoint(args.checkpoint)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise InputError(
                f"cannot read the checkpoint {path} ({type(error).__name__}); is it a "
                "checkpoint.pth written by train.py?"
            ) from None
        for entry in ("model", "items"):
            if not isinstance(checkpoint, dict) or entry not in checkpoint:
                raise InputError(
                    f"{path} is not a train.py checkpoint (no {entry!r} entry); for a bare "
                    "state_dict use --model_dir with --m_items_dir"
                )
        trained = checkpoint.get("args", {})
        state_dict, items, source, items_source = (
            checkpoint["model"],
            checkpoint["items"],
            str(path),
            str(path),
        )
    elif args.model_dir and args.m_items_dir:
        trained = {}
        for flag, value in (("--model_dir", args.model_dir), ("--m_items_dir", args.m_items_dir)):
            if not Path(value).is_file():
                raise InputError(f"{flag} file {value} does not exist; check the path")
        state_dict = read_torch_file(args.model_dir, "--model_dir")
        items = read_torch_file(args.m_items_dir, "--m_items_dir")
        source, items_source = args.model_dir, args.m_items_dir
    else:
        raise InputError("give --checkpoint, or both --model_dir and --m_items_dir")
    state_dict = extract_state_dict(state_dict, source)
    if not isinstance(items, torch.Tensor):
        raise InputError(
            f"{items_source}: the memory items are a {type(items).__name__}, not a tensor; "
            "pass the items file saved beside the weights (keys.pt)"
        )

    for name, fallback in (("h", 256), ("w", 256), ("c", 3), ("t_length", 5)):
        if getattr(args, name) is None:
            setattr(args, name, trained.get(name, fallback))
    first_conv = state_dict.get("encoder.moduleConv1.0.weight")
    if first_conv is not None and "t_length" not in trained and "c" not in trained:
        args.t_length = first_conv.shape[1] // args.c + 1
    msize = args.msize or trained.get("msize") or int(items.shape[0])
    # The weights fix the item dimension, so items of another one are reported as such.
    dim = trained.get("mdim") or infer_model_sizes(state_dict).get("mdim")
    dim = dim or (int(items.shape[-1]) if items.dim() == 2 else 512)
    for flag in ("h", "w"):
        value = getattr(args, flag)
        if value <= 0 or value % 8:
            raise InputError(f"--{flag} {value} must be a positive multiple of 8")
    model = LGNNet(channels=args.c, t_length=args.t_length, msize=msize, fdim=dim, mdim=dim)
    load_model_weights(model, state_dict, source=source)
    items = load_memory_items(items, msize, dim, source=items_source)
    return model.to(device), items.to(device), source


def write_scores_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            fields = ["video", "frame", "psnr", "feature_distance", "normality", "label"]
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def save_plots(
    plot_dir: Path, per_video: list[dict[str, Any]], normality: np.ndarray, labels: np.ndarray
) -> None:
    """A normality curve per video (abnormal frames shaded) and the pooled ROC curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    plot_dir.mkdir(parents=True, exist_ok=True)
    for video in per_video:
        fig, ax = plt.subplots(figsize=(6, 2.2), dpi=100)
        frames = video["frame_index"]
        ax.plot(frames, video["normality"], color="tab:blue", lw=1.2, label="normality")
        ax.fill_between(
            frames,
            0,
            1,
            where=video["labels"] > 0,
            color="tab:red",
            alpha=0.2,
            step="mid",
            label="abnormal (ground truth)",
        )
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("frame")
        ax.set_title(f"video {video['name']}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        atomic_write(
            plot_dir / f"scores_{video['name']}.png", lambda p, f=fig: f.savefig(p, format="png")
        )
        plt.close(fig)
    # Abnormal frames are the positive class, as in detection; the AUC is the same.
    fpr, tpr, _ = roc_curve(labels, -normality)
    fig, ax = plt.subplots(figsize=(3.2, 3.2), dpi=100)
    ax.plot(fpr, tpr, color="tab:blue")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.set_xlabel("normal frames flagged")
    ax.set_ylabel("abnormal frames found")
    ax.set_title(f"ROC, AUC {frame_auc(normality, labels):.4f}", fontsize=9)
    fig.tight_layout()
    atomic_write(plot_dir / "roc.png", lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def check_outputs(args: argparse.Namespace) -> None:
    """Fail before the evaluation, not after it, when an output of --report, --scores or
    --plot_dir cannot be written (its folder cannot be created or written to)."""
    for flag, target, is_folder in (
        ("--report", args.report, False),
        ("--scores", args.scores, False),
        ("--plot_dir", args.plot_dir, True),
    ):
        if not target:
            continue
        target = Path(target)
        if not is_folder and target.is_dir():
            raise InputError(f"{flag} {target} is a folder; give a file name")
        folder = target if is_folder else target.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise InputError(
                f"{flag}: cannot write to {folder} ({error.strerror}); choose another path"
            ) from None


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate and print the frame AUC; returns the report dictionary."""
    if not 0.0 <= args.lambda_ <= 1.0:
        raise InputError(f"--lambda {args.lambda_} must lie in [0, 1]")
    if args.eval_batch_size < 1:
        raise InputError(f"--eval_batch_size must be at least 1, got {args.eval_batch_size}")
    check_outputs(args)
    began = time.time()
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    model, items, source = load_weights(args, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    dataset_dir = dataset_dir_for(args.dataset_type, Path(args.dataset_path))
    all_videos = list_videos(find_split_dir(dataset_dir, "testing"))
    label_path = Path(args.label_path) if args.label_path else None
    labels_by_video = load_frame_labels(dataset_dir, all_videos, label_path, args.dataset_type)
    cache = FrameCache(args.h, args.w, Path(args.cache_dir) if args.cache_dir else None)
    dataset = FrameWindowDataset(all_videos, args.h, args.w, args.t_length, cache)
    scorer = FrameScorer(args.error_metric, device)

    per_video: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    scored_frames = 0
    memory_updates = 0

    def fused(scores: VideoScores, lambda_: float) -> np.ndarray:
        normality = normality_scores(scores.frame_score, scores.feature_distance, lambda_)
        return smooth_scores(normality, args.smooth)

    bar = tqdm(total=len(dataset), desc="evaluating", unit="frame", dynamic_ncols=True)
    for index, video in enumerate(dataset.videos):
        frames = frames_to_tensor(torch.from_numpy(dataset.video_frames(index)).to(device))
        scores = evaluate_video(
            model,
            frames,
            items,
            args.gamma,
            update=not args.no_memory_update,
            batch_size=args.eval_batch_size,
            dtype=dtype,
            scorer=scorer,
        )
        items = scores.items
        memory_updates += scores.memory_updates
        normality = fused(scores, args.lambda_)
        video_labels = labels_by_video[video.name][args.t_length - 1 :]
        frame_index = np.arange(args.t_length - 1, len(video))
        both = 0 < video_labels.sum() < len(video_labels)
        per_video.append(
            {
                "name": video.name,
                "frames": len(video_labels),
                "abnormal_frames": int(video_labels.sum()),
                "auc": frame_auc(normality, video_labels) if both else None,
                "normality": normality,
                "scores": scores,
                "labels": video_labels,
                "frame_index": frame_index,
            }
        )
        rows.extend(
            {
                "video": video.name,
                "frame": int(f),
                "psnr": f"{p:.9g}",
                "feature_distance": f"{d:.9g}",
                "normality": f"{n:.9g}",
                "label": int(y),
            }
            for f, p, d, n, y in zip(
                frame_index,
                scores.psnr,
                scores.feature_distance,
                normality,
                video_labels,
                strict=True,
            )
        )
        scored_frames += len(video_labels)
        bar.update(len(video_labels))
    bar.close()

    normality_all = np.concatenate([v["normality"] for v in per_video])
    labels_all = np.concatenate([v["labels"] for v in per_video])
    if labels_all.min() == labels_all.max():
        raise InputError(
            "the test labels hold only one class after dropping the first frames of each "
            "video, so no AUC exists; check --label_path"
        )
    seconds = time.time() - began
    video_aucs = [v["auc"] for v in per_video if v["auc"] is not None]
    report = {
        "dataset": args.dataset_type,
        "auc": frame_auc(normality_all, labels_all),
        "auc_macro": float(np.mean(video_aucs)) if video_aucs else None,
        "eer": equal_error_rate(normality_all, labels_all),
        "frames": int(len(labels_all)),
        "abnormal_frames": int(labels_all.sum()),
        "lambda": args.lambda_,
        "gamma": args.gamma,
        "memory_update": not args.no_memory_update,
        "memory_updates": memory_updates,
        # The update gate reads the prediction error alone, never lambda, so these equal
        # separate --lambda 1 / --lambda 0 runs.
        "auc_components": {
            f"{name} (lambda={weight:g})": frame_auc(
                np.concatenate([fused(v["scores"], weight) for v in per_video]), labels_all
            )
            for name, weight in (("prediction_only", 1.0), ("memory_only", 0.0))
        },
        "smooth": args.smooth,
        "error_metric": args.error_metric,
        "checkpoint": source,
        "h": args.h,
        "w": args.w,
        "device": str(device),
        "precision": str(dtype or "fp32").replace("torch.", ""),
        "eval_batch_size": args.eval_batch_size,
        "seconds": round(seconds, 2),
        "frames_per_second": round(scored_frames / seconds, 3),
        "videos": [
            {k: v[k] for k in ("name", "frames", "abnormal_frames", "auc")} for v in per_video
        ],
    }
    if args.report:
        atomic_write(Path(args.report), lambda p: p.write_text(json.dumps(report, indent=2)))
    if args.scores:
        write_scores_csv(Path(args.scores), rows)
    if args.plot_dir:
        save_plots(Path(args.plot_dir), per_video, normality_all, labels_all)
    print(
        f"{scored_frames} frames of {len(per_video)} videos in {seconds:.1f}s "
        f"({scored_frames / seconds:.2f} frames/s)",
        file=sys.stderr,
    )
    components = ", ".join(f"{k} {100 * v:.2f} %" for k, v in report["auc_components"].items())
    print(f"single branches: {components}; memory updates: {memory_updates}", file=sys.stderr)
    print(f"Frame AUC: {100 * report['auc']:.2f} %")
    return report


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
