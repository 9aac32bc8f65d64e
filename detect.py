"""Score your own footage with a trained LGN-Net: per-frame anomaly decisions on video files,
frame folders, network streams and cameras.

Examples::

    # once: calibrate the checkpoint on footage known to be normal (or train with --calibrate)
    python detect.py --calibrate --checkpoint exp/ped2/log/checkpoint.pth --input normal_videos/

    # then score anything
    python detect.py --checkpoint exp/ped2/log/checkpoint.pth --input street.mp4 \\
        --csv street.csv --events street_events.json --video_out street_annotated.mp4
    python detect.py --checkpoint ... --input frames_folder/          # sorted images
    python detect.py --checkpoint ... --input rtsp://camera.local/live  # stream URL
    python detect.py --checkpoint ... --input 0                         # camera index

``--input``: a video file, a folder of images, a folder of videos or frame folders, a stream
URL or a camera index; ``--dataset DIR`` instead scores a benchmark tree's test videos against
its labels (and ``--calibrate`` uses its training videos). Frames are scored as they arrive
(``inference/streaming.py``), standardised with the normal-data statistics of ``--calibrate``,
and flagged below the ``--false_alarm_rate`` quantile of the calibration frames
(``inference/calibration.py``). Outputs (``--csv``, ``--events``, ``--video_out``,
``--report``) are checked before any work and written atomically; Ctrl-C ends a stream with
outputs for the frames scored so far and exit status 130. The README has the details.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from data.sources import dataset_sources, open_input
from inference.calibration import (
    calibrate,
    checked_calibration,
    describe_calibration,
    save_calibration,
    threshold_for_rate,
)
from inference.detection import detect, score_dataset
from inference.streaming import StreamingScorer
from inference.test_time import DEFAULT_GAMMA, DEFAULT_LAMBDA
from model.checkpoint import load_for_inference
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
        "detect.py", "Anomaly decisions per frame on videos, frame folders, streams and cameras."
    )
    source = parser.add_argument_group("input")
    source.add_argument(
        "--input",
        default=None,
        help="video file, folder of frames, folder of videos or frame folders, stream URL, "
        "or camera index",
    )
    source.add_argument(
        "--dataset",
        default=None,
        help="benchmark frame tree (training/ + testing/) instead of --input: --calibrate uses "
        "its training videos; detection scores its testing videos against their labels",
    )
    source.add_argument("--label_path", default=None, help="labels for --dataset (default: found)")
    source.add_argument(
        "--max_frames", type=int, default=None, help="stop after this many frames in all"
    )

    weights = parser.add_argument_group("weights")
    weights.add_argument("--checkpoint", default=None, help="checkpoint.pth written by train.py")
    weights.add_argument(
        "--model_dir", default=None, help="reference-layout weights (with --calibrate only)"
    )
    weights.add_argument(
        "--m_items_dir", default=None, help="reference-layout memory items (with --calibrate only)"
    )
    weights.add_argument("--h", type=int, default=None, help="frame height (default: as trained)")
    weights.add_argument("--w", type=int, default=None, help="frame width (default: as trained)")

    calibration = parser.add_argument_group("calibration")
    calibration.add_argument(
        "--calibrate",
        action="store_true",
        help="compute the normal-data statistics on --input (normal footage only) or on the "
        "training videos of --dataset, and store them in the checkpoint",
    )
    calibration.add_argument(
        "--output_checkpoint",
        default=None,
        help="with --calibrate: write the calibrated checkpoint here (default: in place)",
    )
    calibration.add_argument(
        "--lambda",
        dest="lambda_",
        type=float,
        default=None,
        help=f"with --calibrate: weight of z(PSNR) against z(feature distance) (default "
        f"{DEFAULT_LAMBDA}); detection uses the calibrated value",
    )

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--false_alarm_rate",
        type=float,
        default=0.01,
        help="share of normal frames flagged; sets the threshold (default 0.01)",
    )
    scoring.add_argument(
        "--gamma",
        type=float,
        default=None,
        help=f"test-time memory update threshold (default: as calibrated, else {DEFAULT_GAMMA})",
    )
    scoring.add_argument(
        "--memory_update",
        choices=("on", "off"),
        default=None,
        help="test-time memory update (default: as calibrated, else on)",
    )

    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--csv", default=None, help="per-frame scores and decisions (CSV)")
    outputs.add_argument("--events", default=None, help="anomalous events (JSON)")
    outputs.add_argument("--video_out", default=None, help="annotated video (MP4)")
    outputs.add_argument("--report", default=None, help="summary and metrics (JSON)")
    outputs.add_argument(
        "--plot_frames", type=int, default=150, help="frames shown in the running score plot"
    )

    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: bf16 on CPUs that compute it natively and on CUDA, else fp32",
    )
    run.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    if (args.input is None) == (args.dataset is None):
        raise InputError("give exactly one of --input (video, folder, URL, camera) or --dataset")
    if not args.checkpoint and not (args.model_dir and args.m_items_dir):
        raise InputError("give --checkpoint (a checkpoint.pth written by train.py)")
    if not args.checkpoint and not (args.calibrate and args.output_checkpoint):
        raise InputError(
            "reference-layout weights (--model_dir/--m_items_dir) carry no calibration: run "
            "--calibrate with --output_checkpoint first, then detect with that checkpoint"
        )
    threshold_for_rate({"normality_quantiles": [0.0, 1.0]}, args.false_alarm_rate)
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max_frames must be at least 1, got {args.max_frames}")
    if args.plot_frames < 2:
        raise InputError(f"--plot_frames must be at least 2, got {args.plot_frames}")
    if args.video_out and Path(args.video_out).suffix.lower() != ".mp4":
        raise InputError(f"--video_out {args.video_out} must end in .mp4")
    if args.lambda_ is not None and not args.calibrate:
        raise InputError(
            "--lambda is fixed when the checkpoint is calibrated and read from it when "
            "detecting; to change it, calibrate again with --calibrate --lambda"
        )
    if args.lambda_ is not None:
        finite_number("--lambda", args.lambda_)
    if args.gamma is not None:
        finite_number("--gamma", args.gamma)
    if args.output_checkpoint and not args.calibrate:
        raise InputError("--output_checkpoint is where --calibrate writes; add --calibrate")
    in_place = args.calibrate and not args.output_checkpoint and args.checkpoint
    outputs = {
        "--csv": args.csv,
        "--events": args.events,
        "--report": args.report,
        "--video_out": args.video_out,
        "--output_checkpoint": args.output_checkpoint,
        "--checkpoint (calibrated in place)": args.checkpoint if in_place else None,
    }
    if in_place and not Path(args.checkpoint).is_file():
        raise InputError(
            f"--checkpoint {args.checkpoint} is not a local file; name where the calibrated "
            "checkpoint goes with --output_checkpoint"
        )
    check_writable_outputs(outputs, {})


def run_calibration(
    args: argparse.Namespace, scorer: StreamingScorer, checkpoint: dict, path: Path | None
) -> dict[str, Any]:
    output = Path(args.output_checkpoint) if args.output_checkpoint else path
    if args.dataset:
        sources, source_name = dataset_sources(Path(args.dataset), "training"), args.dataset
    else:
        sources, source_name = open_input(args.input), args.input
    lambda_ = DEFAULT_LAMBDA if args.lambda_ is None else args.lambda_
    calibration = calibrate(
        scorer, sources, lambda_, args.false_alarm_rate, args.max_frames, source_name
    )
    save_calibration(checkpoint, calibration, output)
    print(f"{describe_calibration(calibration)} -> {output}", file=sys.stderr)
    if calibration.get("interrupted"):
        exit_interrupted(f"calibrated on the frames scored before Ctrl-C -> {output}")
    return calibration


def exit_interrupted(what: str) -> NoReturn:
    """Ctrl-C during scoring: the outputs cover the frames scored so far; say so, exit 130."""
    print(f"interrupted: {what}", file=sys.stderr)
    sys.exit(130)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Calibrate (``--calibrate``) or detect; returns the calibration or the summary."""
    validate_args(args)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    loaded = load_for_inference(
        args.checkpoint, args.model_dir, args.m_items_dir,
        height=args.h, width=args.w, device=device,
    )  # fmt: skip
    model, items, checkpoint, path = loaded.model, loaded.items, loaded.checkpoint, loaded.path
    args.h, args.w = loaded.height, loaded.width
    calibration = None if args.calibrate else checked_calibration(checkpoint, str(path))
    settings = calibration or {}
    gamma = args.gamma if args.gamma is not None else settings.get("gamma", DEFAULT_GAMMA)
    update = (
        args.memory_update == "on"
        if args.memory_update is not None
        else settings.get("memory_update", True)
    )
    scorer = StreamingScorer(
        model, items, args.h, args.w, gamma, update, dtype, keep_error_maps=bool(args.video_out)
    )
    if args.calibrate:
        return run_calibration(args, scorer, checkpoint, path)

    precision = str(dtype or "fp32").replace("torch.", "")
    settings_now = {"gamma": gamma, "memory_update": update, "precision": precision}
    for name, now in settings_now.items():
        if calibration.get(name) is not None and now != calibration[name]:
            print(
                f"note: {name} is {now} here but was {calibration[name]} at calibration; the "
                "scores shift (recalibrate with the same settings for exact false-alarm rates)",
                file=sys.stderr,
            )
    detect_kwargs = {
        "csv_path": args.csv,
        "video_out": args.video_out,
        "plot_frames": args.plot_frames,
        "max_frames": args.max_frames,
    }
    metrics = None
    rate = args.false_alarm_rate
    if args.dataset:
        result, metrics = score_dataset(
            scorer, calibration, args.dataset, args.label_path, rate, **detect_kwargs
        )
    else:
        sources = open_input(args.input)
        known = [source.frame_count for source in sources]
        total = sum(known) if all(known) else None
        result = detect(scorer, sources, calibration, rate, total_frames=total, **detect_kwargs)
    if args.events:
        atomic_write(Path(args.events), lambda p: p.write_text(json.dumps(result.events, indent=2)))
    summary = {
        "input": args.input or args.dataset, "checkpoint": str(path), "frames": result.frames,
        "anomalous_frames": result.anomalous_frames, "events": len(result.events),
        "false_alarm_rate": rate, "threshold": result.threshold, **settings_now,
        "seconds": round(result.seconds, 2),
        "frames_per_second": round(result.frames / max(result.seconds, 1e-9), 3),
        "stopped_early": result.stopped_early,
    }  # fmt: skip
    if metrics is not None:
        summary["metrics"] = metrics
    if args.report:
        atomic_write(Path(args.report), lambda p: p.write_text(json.dumps(summary, indent=2)))
    share = result.anomalous_frames / result.frames if result.frames else math.nan
    print(
        f"{result.frames} frames scored in {result.seconds:.1f}s: {result.anomalous_frames} "
        f"anomalous ({share:.1%}) in {len(result.events)} events, threshold "
        f"{result.threshold:.3f}",
        file=sys.stderr,
    )
    if metrics is not None:
        aucs = [metrics.get(key) for key in ("auc_calibrated", "auc_minmax_per_video")]
        calibrated_auc, minmax_auc = (math.nan if auc is None else auc for auc in aucs)
        print(
            f"precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}, F1 "
            f"{metrics['f1']:.3f}; AUC calibrated {calibrated_auc:.4f}, per-video min-max "
            f"{minmax_auc:.4f}"
        )
    if result.frames == 0:
        raise InputError(
            f"no frame of {args.input or args.dataset} could be scored: it ended before "
            f"{model.t_length} frames (empty outputs were written)"
        )
    if result.stopped_early:
        exit_interrupted(f"the outputs cover the {result.frames} frames scored before Ctrl-C")
    return summary


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
