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
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from data.datasets import DATASET_TYPES, dataset_dir_for
from data.frame_store import add_frames_flag, choose_frames
from data.frames import FrameWindowDataset, find_split_dir, list_videos
from data.labels import load_frame_labels, locate_labels
from inference.benchmark import (
    VideoResult,
    benchmark_metrics,
    save_plots,
    score_rows,
    score_test_videos,
    write_scores_csv,
)
from inference.test_time import DEFAULT_GAMMA, DEFAULT_LAMBDA
from inference.video import QualityMetric, compiled_scoring_functions
from model.checkpoint import LoadedModel, load_for_inference
from utils import (
    InputError,
    argument_parser,
    atomic_write,
    check_writable_outputs,
    finite_number,
    resolve_device,
    resolve_precision,
    run_cli,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argument_parser(
        "evaluate.py", "Frame-level AUC of a trained LGN-Net on a benchmark's test videos."
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_type", default="ped2", choices=DATASET_TYPES, help="benchmark")
    data.add_argument("--dataset_path", default="./datasets", help="folder holding <dataset_type>/")
    data.add_argument("--label_path", default=None, help="label file or folder (default: found)")
    data.add_argument("--cache_dir", default=None, help="keep decoded, resized frames here")
    add_frames_flag(data)
    data.add_argument("--h", type=int, default=None, help="frame height (default: as trained)")
    data.add_argument("--w", type=int, default=None, help="frame width (default: as trained)")
    data.add_argument("--c", type=int, default=None, help="channels per frame (default: found)")
    data.add_argument(
        "--t_length", type=int, default=None, help="frames per window (default: found)"
    )

    weights = parser.add_argument_group(
        "weights (give --checkpoint, or --model_dir with --m_items_dir)"
    )
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
        default=DEFAULT_LAMBDA,
        help="weight of the frame error score against the memory distance, in [0, 1]",
    )
    scoring.add_argument(
        "--gamma",
        type=float,
        default=DEFAULT_GAMMA,
        help="a frame updates the memory when its point score is below gamma",
    )
    scoring.add_argument(
        "--no_memory_update", action="store_true", help="disable test-time memory updates"
    )
    scoring.add_argument(
        "--smooth", type=float, default=0.0, help="Gaussian temporal smoothing sigma, frames"
    )
    scoring.add_argument(
        "--error_metric",
        default="psnr",
        choices=("psnr", "ssim", "lpips"),
        help="frame-error score fused with the memory distance",
    )

    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: bf16 on CPUs that compute it natively and on CUDA, else fp32",
    )
    run.add_argument(
        "--eval_batch_size",
        type=int,
        default=None,
        help="windows encoded together (default: 32 with the CUDA fast path, else 8); the "
        "scores equal the one-window-at-a-time protocol",
    )
    run.add_argument(
        "--fast_path",
        default="auto",
        choices=("auto", "off"),
        help="auto: on CUDA, torch.compile the encoder and the per-frame step and encode 32 "
        "windows at once; off: the plain eager path. The scores are the same either way",
    )
    run.add_argument("--report", default=None, help="write a JSON report here")
    run.add_argument("--scores", default=None, help="write per-frame scores (CSV) here")
    run.add_argument("--plot_dir", default=None, help="save score curves and the ROC curve here")
    run.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Reject flag values that cannot be used, naming the flag; check the outputs can be
    written before any work starts."""
    finite_number("--lambda", args.lambda_)
    if not 0.0 <= args.lambda_ <= 1.0:
        raise InputError(f"--lambda {args.lambda_} must lie in [0, 1]")
    finite_number("--gamma", args.gamma)
    finite_number("--smooth", args.smooth, minimum=0.0)
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        raise InputError(f"--eval_batch_size must be at least 1, got {args.eval_batch_size}")
    for flag in ("h", "w"):
        value = getattr(args, flag)
        if value is not None and (value <= 0 or value % 8):
            raise InputError(f"--{flag} {value} must be a positive multiple of 8")
    for flag in ("c", "t_length", "msize"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag} must be positive, got {value}")
    check_writable_outputs(
        {"--report": args.report, "--scores": args.scores}, {"--plot_dir": args.plot_dir}
    )


def describe_run(
    args: argparse.Namespace,
    loaded: LoadedModel,
    label_path: Path,
    device: torch.device,
    dtype: torch.dtype | None,
) -> str:
    """What is about to be scored, with what: one line, plus notes on surprises."""
    saved = loaded.checkpoint
    trained = ""
    if loaded.path is not None and "epoch" in saved:
        trained = f", trained {saved['epoch']} epoch{'s' if saved['epoch'] != 1 else ''}"
        if saved.get("step"):
            trained += (
                f" and {saved['step']} steps of epoch {saved['epoch'] + 1} (saved mid-epoch, "
                "e.g. by Ctrl-C: not a finished run)"
            )
    lines = [
        f"scoring {args.dataset_type} test videos at {loaded.height}x{loaded.width} with "
        f"{loaded.source}"
        f"{trained}; labels {label_path}; device {device}, "
        f"precision {str(dtype or 'fp32').replace('torch.', '')}"
    ]
    if loaded.path is None and (args.h is None or args.w is None):
        lines.append(
            "note: reference-layout weights do not record their frame size; scoring at "
            f"{loaded.height}x{loaded.width}, the reference default (set --h/--w otherwise)"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate and print the frame AUC; returns the report dictionary."""
    validate_args(args)
    began = time.time()
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    loaded = load_for_inference(
        args.checkpoint, args.model_dir, args.m_items_dir,
        height=args.h, width=args.w, channels=args.c, t_length=args.t_length, msize=args.msize,
        device=device,
    )  # fmt: skip
    model, items = loaded.model, loaded.items
    args.c, args.t_length = model.channels, model.t_length
    fast = args.fast_path == "auto" and device.type == "cuda"
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = fast
    if args.eval_batch_size is None:
        args.eval_batch_size = 32 if fast else 8
    functions = compiled_scoring_functions(model) if fast else None

    dataset_dir = dataset_dir_for(args.dataset_type, Path(args.dataset_path))
    all_videos = list_videos(find_split_dir(dataset_dir, "testing"))
    label_path = locate_labels(
        dataset_dir, Path(args.label_path) if args.label_path else None, args.dataset_type
    )
    labels_by_video = load_frame_labels(dataset_dir, all_videos, label_path)
    print(describe_run(args, loaded, label_path, device, dtype), file=sys.stderr)
    args.h, args.w = loaded.height, loaded.width
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    frames = choose_frames(
        args.frames, all_videos, args.h, args.w, cache_dir, dataset_dir, one_video_at_a_time=True
    )
    print(frames.line, file=sys.stderr)
    # Videos are scored one after the other: each is loaded when its turn comes.
    dataset = FrameWindowDataset(
        all_videos, args.h, args.w, args.t_length, frames.source, preload=False
    )
    metric = QualityMetric(args.error_metric, device)

    bar = tqdm(total=len(dataset), desc="evaluating", unit="frame", dynamic_ncols=True)

    def advance(result: VideoResult) -> None:
        bar.update(len(result.labels))

    results, _ = score_test_videos(
        model, items, dataset, labels_by_video,
        gamma=args.gamma, memory_update=not args.no_memory_update, lambda_=args.lambda_,
        smooth=args.smooth, batch_size=args.eval_batch_size, dtype=dtype, metric=metric,
        functions=functions, on_video=advance,
    )  # fmt: skip
    bar.close()
    metrics = benchmark_metrics(results, args.lambda_, args.smooth)
    memory_updates = sum(r.scores.memory_updates for r in results)
    scored_frames = metrics["frames"]
    seconds = time.time() - began
    report = {
        "dataset": args.dataset_type,
        **{key: metrics[key] for key in ("auc", "auc_macro", "eer", "frames", "abnormal_frames")},
        "lambda": args.lambda_,
        "gamma": args.gamma,
        "memory_update": not args.no_memory_update,
        "memory_updates": memory_updates,
        "auc_components": metrics["auc_components"],
        "smooth": args.smooth,
        "error_metric": args.error_metric,
        "checkpoint": loaded.source,
        "h": args.h,
        "w": args.w,
        "device": str(device),
        "precision": str(dtype or "fp32").replace("torch.", ""),
        "eval_batch_size": args.eval_batch_size,
        "fast_path": fast,
        "label_path": str(label_path),
        "checkpoint_epoch": loaded.checkpoint.get("epoch"),
        "checkpoint_step": loaded.checkpoint.get("step"),
        "seconds": round(seconds, 2),
        "frames_per_second": round(scored_frames / seconds, 3),
        "videos": metrics["videos"],
    }
    if args.report:
        atomic_write(
            Path(args.report), lambda p: p.write_text(json.dumps(report, indent=2, allow_nan=False))
        )
    if args.scores:
        write_scores_csv(Path(args.scores), score_rows(results))
    if args.plot_dir:
        save_plots(Path(args.plot_dir), results)
    print(
        f"{scored_frames} frames of {len(results)} videos in {seconds:.1f}s "
        f"({scored_frames / seconds:.2f} frames/s)",
        file=sys.stderr,
    )
    components = ", ".join(f"{k} {100 * v:.2f} %" for k, v in report["auc_components"].items())
    print(f"single branches: {components}; memory updates: {memory_updates}", file=sys.stderr)
    print(f"Frame AUC: {100 * report['auc']:.2f} %")
    return report


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
