"""Score your own footage with a trained LGN-Net: per-frame anomaly decisions on video files,
frame folders, network streams and cameras.

Examples::

    # once: calibrate the checkpoint on footage known to be normal (or train with --calibrate)
    python detect.py --calibrate --checkpoint exp/ped2/log/checkpoint.pth --input normal_videos/

    # then score anything
    python detect.py --checkpoint exp/ped2/log/checkpoint.pth --input street.mp4 \\
        --scores street.csv --events street_events.json --video_out street_annotated.mp4
    python detect.py --checkpoint ... --input frames_folder/          # sorted images
    python detect.py --checkpoint ... --input rtsp://camera.local/live  # stream URL
    python detect.py --checkpoint ... --input 0                         # camera index

``--input``: a video file, a folder of images, a folder of videos or frame folders, a stream
URL or a camera index; ``--dataset DIR`` instead scores a benchmark tree's test videos against
its labels (and ``--calibrate`` uses its training videos). Frames are scored as they arrive
(``inference/streaming.py``), standardised with the normal-data statistics of ``--calibrate``,
and flagged below the ``--false_alarm_rate`` quantile of the calibration frames
(``inference/calibration.py``). Outputs (``--scores``, ``--events``, ``--video_out``,
``--report``) are checked before any work and committed together; Ctrl-C or SIGTERM ends a
stream with outputs for the frames scored so far and exit status 130 or 143. The README has
the details.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from common import cli
from common.devices import precision_name, resolve_device, resolve_precision
from common.errors import InputError
from common.outputs import check_outputs
from data.datasets import check_dataset_folder
from data.sources import dataset_sources, local_input, open_input
from inference.calibration import (
    calibrate,
    checked_calibration,
    describe_calibration,
    save_calibration,
    threshold_for_rate,
)
from inference.config import FALSE_ALARM_RATE, GAMMA, LAMBDA
from inference.detection import DetectionOutputs, DetectionResult, detect, score_dataset
from inference.streaming import StreamingScorer
from model.config import check_frame_size
from model.pretrained import load_weights, local_path
from model.weights_file import LoadedModel


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.argument_parser(
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
    cli.add_weights_flags(weights)
    cli.add_frame_size_flags(weights, None)

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
        f"{LAMBDA}); detection uses the calibrated value",
    )

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--false_alarm_rate",
        type=float,
        default=FALSE_ALARM_RATE,
        help=f"share of normal frames flagged; sets the threshold (default {FALSE_ALARM_RATE})",
    )
    scoring.add_argument(
        "--gamma",
        type=float,
        default=None,
        help=f"test-time memory update threshold (default: as calibrated, else {GAMMA})",
    )
    cli.add_memory_update_flags(scoring, "as calibrated, else on")

    outputs = parser.add_argument_group("outputs")
    cli.add_scores_flag(outputs)
    outputs.add_argument("--events", default=None, help="anomalous events (JSON)")
    outputs.add_argument("--video_out", default=None, help="annotated video (MP4)")
    cli.add_report_flag(outputs)
    outputs.add_argument(
        "--plot_frames", type=int, default=150, help="frames shown in the running score plot"
    )

    run = parser.add_argument_group("run")
    cli.add_run_flags(run)
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Flags that cannot work together or cannot be used, before anything is read."""
    if (args.input is None) == (args.dataset is None):
        raise InputError("give exactly one of --input (video, folder, URL, camera) or --dataset")
    if args.dataset is not None:
        check_dataset_folder(Path(args.dataset))
    if not args.checkpoint and not (args.model_dir and args.m_items_dir):
        raise InputError("give --checkpoint (a checkpoint.pth written by train.py)")
    if not args.checkpoint and not (args.calibrate and args.output_checkpoint):
        raise InputError(
            "reference-layout weights (--model_dir/--m_items_dir) carry no calibration: run "
            "--calibrate with --output_checkpoint first, then detect with that checkpoint"
        )
    threshold_for_rate({"normality_quantiles": [0.0, 1.0]}, args.false_alarm_rate)
    cli.at_least("--max_frames", args.max_frames, 1)
    cli.at_least("--plot_frames", args.plot_frames, 2)
    check_frame_size(args.h, args.w)
    if args.video_out and Path(args.video_out).suffix.lower() != ".mp4":
        raise InputError(f"--video_out {args.video_out} must end in .mp4")
    if args.lambda_ is not None and not args.calibrate:
        raise InputError(
            "--lambda is fixed when the checkpoint is calibrated and read from it when "
            "detecting; to change it, calibrate again with --calibrate --lambda"
        )
    if args.lambda_ is not None:
        cli.fraction("--lambda", args.lambda_)
    if args.gamma is not None:
        cli.finite_number("--gamma", args.gamma)
    if args.output_checkpoint and not args.calibrate:
        raise InputError("--output_checkpoint is where --calibrate writes; add --calibrate")


def calibration_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """Where ``--calibrate`` writes: ``(flag, path)``, in place by default."""
    if not args.calibrate:
        return "--output_checkpoint", None
    if args.output_checkpoint:
        return "--output_checkpoint", args.output_checkpoint
    if not Path(args.checkpoint).is_file():
        raise InputError(
            f"--checkpoint {args.checkpoint} is not a local file; name where the calibrated "
            "checkpoint goes with --output_checkpoint"
        )
    return "--checkpoint (calibrated in place)", args.checkpoint


def check_run_outputs(args: argparse.Namespace) -> None:
    """Before any work: every output can be written and none lands on or in an input. The
    checkpoint calibrated in place (or ``--output_checkpoint`` naming it) is the one output
    that replaces an input: with the same weights plus the calibration."""
    target_flag, target = calibration_target(args)
    checkpoint = local_path(args.checkpoint) if args.checkpoint else None
    in_place = (
        target is not None
        and checkpoint is not None
        and Path(target).resolve() == checkpoint.resolve()
    )
    inputs = {
        "--checkpoint": None if in_place else checkpoint,
        "--model_dir": args.model_dir,
        "--m_items_dir": args.m_items_dir,
        "--input": local_input(args.input) if args.input else None,
        "--dataset": args.dataset,
        "--label_path": args.label_path,
    }
    outputs = {
        cli.typed_flag(args, "scores"): args.scores,
        "--events": args.events,
        "--report": args.report,
        "--video_out": args.video_out,
        target_flag: target,
    }
    kinds = {cli.typed_flag(args, "scores"): "csv", "--events": "json", "--report": "json"}
    kinds.update({"--video_out": "video", target_flag: "checkpoint"})
    check_outputs(outputs, inputs=inputs, kinds=kinds)


def run_calibration(args: argparse.Namespace, scorer: StreamingScorer, loaded: LoadedModel) -> dict:
    """Calibrate on normal footage and write the calibrated checkpoint."""
    output = Path(calibration_target(args)[1])
    if args.dataset:
        sources, source_name = dataset_sources(Path(args.dataset), "training"), args.dataset
    else:
        sources, source_name = open_input(args.input), args.input
    lambda_ = LAMBDA if args.lambda_ is None else args.lambda_
    calibration = calibrate(
        scorer, sources, lambda_, args.false_alarm_rate, args.max_frames, source_name
    )
    save_calibration(loaded.checkpoint, calibration, output)
    print(f"{describe_calibration(calibration)} -> {output}", file=sys.stderr)
    if calibration.get("interrupted"):
        exit_interrupted(f"calibrated on the frames scored before the stop -> {output}", 130)
    return calibration


def exit_interrupted(what: str, status: int) -> NoReturn:
    """A stop during scoring: the outputs cover the frames scored so far; say so, exit."""
    print(f"interrupted: {what}", file=sys.stderr)
    sys.exit(status)


def scoring_settings(args: argparse.Namespace, calibration: dict | None) -> tuple[float, bool]:
    """``(gamma, memory_update)``: the flags where given, else the calibration's, else the
    defaults."""
    settings = calibration or {}
    gamma = args.gamma if args.gamma is not None else settings.get("gamma", GAMMA)
    update = (
        args.memory_update == "on"
        if args.memory_update is not None
        else settings.get("memory_update", True)
    )
    return gamma, update


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Calibrate (``--calibrate``) or detect; returns the calibration or the summary."""
    validate_args(args)
    check_run_outputs(args)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    loaded = load_weights(
        args.checkpoint, args.model_dir, args.m_items_dir, height=args.h, width=args.w,
        device=device,
    )  # fmt: skip
    calibration = (
        None if args.calibrate else checked_calibration(loaded.checkpoint, str(loaded.path))
    )
    gamma, update = scoring_settings(args, calibration)
    scorer = StreamingScorer(
        loaded.model, loaded.items, loaded.height, loaded.width, gamma, update, dtype,
        keep_error_maps=bool(args.video_out),
    )  # fmt: skip
    if args.calibrate:
        return run_calibration(args, scorer, loaded)
    settings = {"gamma": gamma, "memory_update": update, "precision": precision_name(dtype)}
    for name, now in settings.items():
        if calibration.get(name) is not None and now != calibration[name]:
            print(
                f"note: {name} is {now} here but was {calibration[name]} at calibration; the "
                "scores shift (recalibrate with the same settings for exact false-alarm rates)",
                file=sys.stderr,
            )
    return run_detection(args, scorer, calibration, settings, str(loaded.path))


def run_detection(
    args: argparse.Namespace,
    scorer: StreamingScorer,
    calibration: dict[str, Any],
    settings: dict[str, Any],
    checkpoint: str,
) -> dict[str, Any]:
    """Detect on ``--input`` or ``--dataset``, commit the outputs, print the summary."""
    outputs = DetectionOutputs(
        args.scores, args.video_out, args.events, args.report, args.plot_frames
    )
    try:
        metrics = None
        if args.dataset:
            result, metrics = score_dataset(
                scorer, calibration, args.dataset, args.label_path, args.false_alarm_rate,
                outputs, args.max_frames,
            )  # fmt: skip
        else:
            sources = open_input(args.input)
            known = [source.frame_count for source in sources]
            result = detect(
                scorer, sources, calibration, args.false_alarm_rate, outputs,
                max_frames=args.max_frames, total_frames=sum(known) if all(known) else None,
            )  # fmt: skip
        summary = summarise(args, result, settings, checkpoint, metrics)
        outputs.commit(result.events, summary)
    except BaseException:
        outputs.discard()
        raise
    print_summary(result, metrics)
    if result.frames == 0:
        raise InputError(
            f"no frame of {args.input or args.dataset} could be scored: it ended before "
            f"{scorer.model.t_length} frames (empty outputs were written)"
        )
    if result.stop is not None:
        exit_interrupted(
            f"the outputs cover the {result.frames} frames scored before the stop",
            cli.exit_status(result.stop),
        )
    return summary


def summarise(
    args: argparse.Namespace,
    result: DetectionResult,
    settings: dict[str, Any],
    checkpoint: str,
    metrics: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ``--report`` summary of a detection run."""
    summary = {
        "input": args.input or args.dataset, "checkpoint": checkpoint, "frames": result.frames,
        "anomalous_frames": result.anomalous_frames, "events": len(result.events),
        "false_alarm_rate": args.false_alarm_rate, "threshold": result.threshold, **settings,
        "seconds": round(result.seconds, 2),
        "frames_per_second": round(result.frames / max(result.seconds, 1e-9), 3),
        "stopped_early": result.stopped_early,
    }  # fmt: skip
    if metrics is not None:
        summary["metrics"] = metrics
    return summary


def print_summary(result: DetectionResult, metrics: dict[str, Any] | None) -> None:
    """Frames, anomalies and events on stderr; decision metrics (``--dataset``) on stdout."""
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


if __name__ == "__main__":
    cli.run_cli(main, get_args_parser().parse_args())
