"""Evaluate a trained LGN-Net on a benchmark's test videos: frame-level AUC.

Example::

    python evaluate.py --dataset_type ped2 --checkpoint exp/ped2/log/checkpoint.pth
    python evaluate.py --dataset_type ped2 --model_dir model.pth --m_items_dir keys.pt

Protocol (the reference release's): videos in order, windows in order, test-time memory
update when a frame's point score is below gamma, per-video min-max normalisation, the first
t_length-1 frames of every video dropped, frame AUC pooled over all videos.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common import cli
from common.devices import precision_name, resolve_device, resolve_precision
from common.errors import InputError
from common.files import write_text
from common.outputs import check_outputs
from data.datasets import DATASET_TYPES, dataset_dir_for
from data.frame_folders import find_split_dir, list_videos
from data.frame_store import add_frames_flag
from data.frames import FrameWindowDataset
from data.labels import load_frame_labels, locate_labels
from inference.benchmark import (
    ScoringSettings,
    VideoResult,
    benchmark_metrics,
    evaluate_split,
    open_test_windows,
    save_plots,
    score_rows,
    write_scores_csv,
)
from inference.config import EVAL_BATCH_SIZE, EVAL_BATCH_SIZE_FAST, GAMMA, LAMBDA
from inference.video import QualityMetric, compiled_scoring_functions
from model.config import ModelConfig, check_frame_size
from model.pretrained import load_weights, local_path
from model.weights_file import LoadedModel


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.argument_parser(
        "evaluate.py", "Frame-level AUC of a trained LGN-Net on a benchmark's test videos."
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_type", default="ped2", choices=DATASET_TYPES, help="benchmark")
    data.add_argument("--dataset_path", default="./datasets", help="folder holding <dataset_type>/")
    data.add_argument("--label_path", default=None, help="label file or folder (default: found)")
    data.add_argument("--cache_dir", default=None, help="keep decoded, resized frames here")
    add_frames_flag(data)
    cli.add_frame_size_flags(data, None)
    data.add_argument("--c", type=int, default=None, help="channels per frame (default: found)")
    data.add_argument(
        "--t_length", type=int, default=None, help="frames per window (default: found)"
    )

    weights = parser.add_argument_group(
        "weights (give --checkpoint, or --model_dir with --m_items_dir)"
    )
    cli.add_weights_flags(weights)
    weights.add_argument("--msize", type=int, default=None, help="memory items (default: found)")

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--lambda",
        dest="lambda_",
        type=float,
        default=LAMBDA,
        help="weight of the frame error score against the memory distance, in [0, 1]",
    )
    scoring.add_argument(
        "--gamma",
        type=float,
        default=GAMMA,
        help="a frame updates the memory when its point score is below gamma",
    )
    cli.add_memory_update_flags(scoring, "on")
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
    cli.add_run_flags(run)
    run.add_argument(
        "--eval_batch_size",
        type=int,
        default=None,
        help=f"windows encoded together (default: {EVAL_BATCH_SIZE_FAST} with the CUDA fast "
        f"path, else {EVAL_BATCH_SIZE}); the scores equal the one-window-at-a-time protocol up "
        "to floating-point rounding (about 1e-6 relative in fp32; the AUC does not move)",
    )
    cli.add_fast_path_flag(run)
    cli.add_report_flag(run)
    cli.add_scores_flag(run)
    run.add_argument("--plot_dir", default=None, help="save score curves and the ROC curve here")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Reject flag values that cannot be used, naming the flag."""
    if not args.checkpoint and not (args.model_dir and args.m_items_dir):
        raise InputError("give --checkpoint, or both --model_dir and --m_items_dir")
    cli.fraction("--lambda", args.lambda_)
    cli.finite_number("--gamma", args.gamma)
    cli.finite_number("--smooth", args.smooth, minimum=0.0)
    cli.at_least("--eval_batch_size", args.eval_batch_size, 1)
    check_frame_size(args.h, args.w)
    for flag in ("c", "t_length", "msize"):
        cli.at_least(f"--{flag}", getattr(args, flag), 1)
    if args.c is not None:  # frames are read with 3 channels, whatever the weights say
        ModelConfig(channels=args.c).check({"channels": "--c"})


def check_run_outputs(args: argparse.Namespace) -> None:
    """Before any work: the outputs can be written, and none lands on or in an input (the
    weights, the labels, the dataset folder, where labels are found by default)."""
    inputs = {
        "--checkpoint": local_path(args.checkpoint) if args.checkpoint else None,
        "--model_dir": args.model_dir,
        "--m_items_dir": args.m_items_dir,
        "--label_path": args.label_path,
        "--dataset_path": Path(args.dataset_path) / args.dataset_type,
    }
    scores_flag = cli.typed_flag(args, "scores")
    check_outputs(
        {"--report": args.report, scores_flag: args.scores},
        {"--plot_dir": args.plot_dir, "--cache_dir": args.cache_dir},
        inputs,
        kinds={"--report": "json", scores_flag: "csv", "--plot_dir": "png"},
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
    if loaded.path is not None and saved.get("epoch") is not None:
        trained = f", trained {saved['epoch']} epoch{'s' if saved['epoch'] != 1 else ''}"
        if saved.get("step"):
            trained += (
                f" and {saved['step']} steps of epoch {saved['epoch'] + 1} (saved mid-epoch, "
                "e.g. by Ctrl-C: not a finished run)"
            )
    lines = [
        f"scoring {args.dataset_type} test videos at {loaded.height}x{loaded.width} with "
        f"{loaded.source}{trained}; labels {label_path}; device {device}, "
        f"precision {precision_name(dtype)}"
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
    check_run_outputs(args)
    began = time.time()
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    loaded = load_weights(
        args.checkpoint, args.model_dir, args.m_items_dir,
        height=args.h, width=args.w, device=device,
        sizes={"channels": args.c, "t_length": args.t_length, "msize": args.msize},
    )  # fmt: skip
    dataset_dir = dataset_dir_for(args.dataset_type, Path(args.dataset_path))
    label_path = locate_labels(
        dataset_dir, Path(args.label_path) if args.label_path else None, args.dataset_type
    )
    settings = scoring_settings(args, loaded, device, dtype)
    videos = list_videos(find_split_dir(dataset_dir, "testing"))
    labels_by_video = load_frame_labels(dataset_dir, videos, label_path)
    print(describe_run(args, loaded, label_path, device, dtype), file=sys.stderr)
    dataset = open_test_split(args, videos, dataset_dir, loaded)
    results = evaluate_split(loaded.model, loaded.items, dataset, labels_by_video, settings)
    report = build_report(args, loaded, results, settings, str(label_path), time.time() - began)
    write_outputs(args, report, results)
    print_summary(report, len(results))
    return report


def open_test_split(
    args: argparse.Namespace, videos: list, dataset_dir: Path, loaded: LoadedModel
) -> FrameWindowDataset:
    """The test windows at the model's size (:func:`inference.benchmark.open_test_windows`)."""
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    dataset, line = open_test_windows(
        videos, dataset_dir, loaded.height, loaded.width, loaded.model.t_length, args.frames,
        cache_dir,
    )  # fmt: skip
    print(line, file=sys.stderr)
    return dataset


def scoring_settings(
    args: argparse.Namespace, loaded: LoadedModel, device: torch.device, dtype: torch.dtype | None
) -> ScoringSettings:
    """The flags as scoring settings; on CUDA also the memory layout, cuDNN autotuning and
    (fast path) the compiled functions of the model."""
    fast = args.fast_path == "auto" and device.type == "cuda"
    if device.type == "cuda":
        loaded.model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = fast
    return ScoringSettings(
        gamma=args.gamma,
        memory_update=args.memory_update != "off",
        lambda_=args.lambda_,
        smooth=args.smooth,
        batch_size=args.eval_batch_size or (EVAL_BATCH_SIZE_FAST if fast else EVAL_BATCH_SIZE),
        dtype=dtype,
        metric=QualityMetric(args.error_metric, device),
        functions=compiled_scoring_functions(loaded.model) if fast else None,
    )


def build_report(
    args: argparse.Namespace,
    loaded: LoadedModel,
    results: list[VideoResult],
    settings: ScoringSettings,
    label_path: str,
    seconds: float,
) -> dict[str, Any]:
    """The ``--report`` dictionary: AUCs, settings, provenance and timing."""
    metrics = benchmark_metrics(results, settings.lambda_, settings.smooth)
    return {
        "dataset": args.dataset_type,
        **{key: metrics[key] for key in ("auc", "auc_macro", "eer", "frames", "abnormal_frames")},
        "lambda": settings.lambda_,
        "gamma": settings.gamma,
        "memory_update": settings.memory_update,
        "memory_updates": sum(r.scores.memory_updates for r in results),
        "auc_components": metrics["auc_components"],
        "smooth": settings.smooth,
        "error_metric": args.error_metric,
        "checkpoint": loaded.source,
        "h": loaded.height,
        "w": loaded.width,
        "device": str(loaded.items.device),
        "precision": precision_name(settings.dtype),
        "eval_batch_size": settings.batch_size,
        "fast_path": settings.functions is not None,
        "label_path": label_path,
        "checkpoint_epoch": loaded.checkpoint.get("epoch"),
        "checkpoint_step": loaded.checkpoint.get("step"),
        "seconds": round(seconds, 2),
        "frames_per_second": round(metrics["frames"] / seconds, 3),
        "videos": metrics["videos"],
    }


def write_outputs(args: argparse.Namespace, report: dict[str, Any], results: list) -> None:
    """The report, the per-frame CSV and the plots, each only when asked for."""
    if args.report:
        write_text(args.report, json.dumps(report, indent=2, allow_nan=False))
    if args.scores:
        write_scores_csv(Path(args.scores), score_rows(results))
    if args.plot_dir:
        save_plots(Path(args.plot_dir), results)


def print_summary(report: dict[str, Any], videos: int) -> None:
    """Speed and single-branch AUCs on stderr; the frame AUC on stdout."""
    frames, seconds = report["frames"], report["seconds"]
    print(
        f"{frames} frames of {videos} videos in {seconds:.1f}s ({frames / seconds:.2f} frames/s)",
        file=sys.stderr,
    )
    components = ", ".join(f"{k} {100 * v:.2f} %" for k, v in report["auc_components"].items())
    print(
        f"single branches: {components}; memory updates: {report['memory_updates']}",
        file=sys.stderr,
    )
    print(f"Frame AUC: {100 * report['auc']:.2f} %")


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser().parse_args())
