"""The paper's Ped2 configuration in one call of bounded length: train (from scratch, as
many of the 60 epochs as fit), calibrate, evaluate, publish, and pack what comes back.

    python benchmarks/paper_run.py DATA OUT [--budget 560] [--device cuda]

DATA is a Ped2 frame tree (a folder holding ``ped2/``) or a tar of one (e.g.
``ped2_256_gray.tar``). The run trains ``train.py --config ped2_paper`` (256x256, batch 6,
lr 2e-4, loss weights 10/5, msize 10, t_length 5, seed 0) with the fast path (which falls
back to the eager step by itself if compiling fails) and ``--calibrate``. After
``--probe_epochs`` epochs it projects the whole run from the last epoch's seconds; if the
60 epochs would not finish inside ``--budget`` (with ``--reserve`` seconds kept for the
evaluation and the export), it stops and trains again, from scratch, the largest number of
epochs that fits (the cosine schedule over that number), and says so everywhere: such a run
is "ped2, 256x256, N epochs", never the paper configuration. Then ``evaluate.py`` (lambda 0.6,
gamma 0.009) with the report, the scores and the plots, and ``python -m model.pretrained
export``.

OUT receives at most 5 files, none over 16 MiB: ``run.tar.gz`` (report.json, scores.csv,
config.json, log.jsonl, the plots, summary.json and the logs), ``summary.txt``, and the
published weights cut into ``lgn_net_ped2.pth.partNN`` pieces (their sha256 and the whole
file's in the summary). Join them here with
``python benchmarks/paper_run.py OUT --join weights/lgn_net_ped2.pth`` (checked piece by piece).

A dry run of the whole script on a CPU (minutes, nothing meaningful measured)::

    python benchmarks/paper_run.py TINY_DATA /tmp/out --device cpu --size 32 --epochs 2 \\
        --probe_epochs 1 --budget 600 --reserve 60
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PART_BYTES = 16 * 1024 * 1024 - 4096  # what may come back per file, with room to spare
WEIGHTS_NAME = "lgn_net_ped2.pth"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The epochs logged so far (a line torn by a write in progress is skipped)."""
    from training.monitor import read_log as read_records

    return read_records(path) if path.is_file() else []


class Run:
    """One process of the pipeline, its output in ``log``, stopped at ``deadline``."""

    def __init__(self, command: list[str], log: Path) -> None:
        self.command, self.log = command, log
        self.began = time.monotonic()
        self.handle = open(log, "w", encoding="utf-8")
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=self.handle, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    def wait(self, deadline: float) -> int:
        """Exit status; SIGTERM (train.py then saves a checkpoint) at the deadline."""
        try:
            return self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            return 124
        finally:
            self.handle.close()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.began


def unpack(data: Path, work: Path) -> Path:
    """The folder holding ``ped2/``: ``data`` itself, or where its tar was unpacked."""
    if data.is_dir():
        return data
    with tarfile.open(data) as archive:
        archive.extractall(work / "data", filter="data")
    return work / "data"


def train_command(args: argparse.Namespace, data_root: Path, work: Path, epochs: int) -> list[str]:
    command = [
        sys.executable,
        "train.py",
        "--config",
        "ped2_paper",
        "--dataset_path",
        str(data_root),
    ]
    command += ["--epochs", str(epochs), "--h", str(args.size), "--w", str(args.size)]
    command += ["--output_root", str(work / "exp"), "--exp_dir", f"e{epochs}", "--overwrite"]
    command += ["--device", args.device, "--num_workers", str(args.num_workers), "--calibrate"]
    return command + args.train_flag


def train_within_budget(
    args: argparse.Namespace, data_root: Path, work: Path, deadline: float
) -> tuple[int, Path, dict[str, Any]]:
    """Train ``args.epochs`` epochs, or, when the projection says they cannot finish before
    ``deadline``, the largest number that can, from scratch. Returns the epochs, the run
    folder and what was measured."""
    run_dir = work / "exp" / "ped2" / f"e{args.epochs}"
    run = Run(train_command(args, data_root, work, args.epochs), work / "train.log")
    measured: dict[str, Any] = {"planned_epochs": args.epochs}
    while run.process.poll() is None:
        time.sleep(2)
        log = read_log(run_dir / "log.jsonl")
        if len(log) < args.probe_epochs:
            if time.monotonic() > deadline:
                break
            continue
        epoch_seconds = log[-1]["seconds"]  # steady state: compilation is in epoch 1
        left = (args.epochs - len(log)) * epoch_seconds
        measured.update(
            probe_epochs=len(log), probe_seconds=round(run.seconds, 1),
            first_epoch_seconds=log[0]["seconds"], epoch_seconds=epoch_seconds,
            projected_seconds=round(run.seconds + left, 1),
        )  # fmt: skip
        if time.monotonic() + left + args.calibration_seconds <= deadline:
            status = run.wait(deadline)
            measured["train_exit"] = status
            return args.epochs, run_dir, measured
        run.stop()
        run.handle.close()
        # Again from scratch: compilation again (cached in part), then whole epochs.
        overhead = log[0]["seconds"] - epoch_seconds
        usable = deadline - time.monotonic() - overhead - args.calibration_seconds
        epochs = max(1, math.floor(usable / epoch_seconds))
        measured.update(fitted_epochs=epochs, restarted=True)
        run_dir = work / "exp" / "ped2" / f"e{epochs}"
        rerun = Run(train_command(args, data_root, work, epochs), work / "train_rerun.log")
        measured["train_exit"] = rerun.wait(deadline)
        return epochs, run_dir, measured
    measured["train_exit"] = run.wait(deadline)
    return len(read_log(run_dir / "log.jsonl")), run_dir, measured


def split_weights(published: Path, out: Path) -> list[dict[str, Any]]:
    """Cut the published file into pieces that may come back; their names and sha256."""
    parts = []
    with open(published, "rb") as handle:
        index = 0
        while chunk := handle.read(PART_BYTES):
            part = out / f"{published.name}.part{index:02d}"
            part.write_bytes(chunk)
            parts.append({"file": part.name, "bytes": len(chunk), "sha256": sha256(part)})
            index += 1
    return parts


def join_parts(out: Path, target: Path) -> None:
    """Join ``out``'s weight pieces into ``target`` and check them against the summary."""
    summary = json.loads((out / "summary.txt").read_text().split("\n", 1)[1])
    with open(target, "wb") as whole:
        for part in summary["weights"]["parts"]:
            data = (out / part["file"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != part["sha256"]:
                raise SystemExit(f"{part['file']} does not match its sha256")
            whole.write(data)
    if sha256(target) != summary["weights"]["sha256"]:
        raise SystemExit(f"{target}: the joined file does not match its sha256")
    print(f"{target}: sha256 {summary['weights']['sha256']} (matches)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="Ped2 frame tree (holding ped2/) or its tar")
    parser.add_argument("out", type=Path, nargs="?", help="folder for what comes back")
    parser.add_argument(
        "--join",
        type=Path,
        metavar="FILE",
        help="instead: join the pieces in the folder given first",
    )
    parser.add_argument("--budget", type=float, default=560, help="seconds for the whole run")
    parser.add_argument(
        "--reserve", type=float, default=100, help="seconds kept for evaluation and export"
    )
    parser.add_argument(
        "--calibration_seconds", type=float, default=40, help="train.py --calibrate's pass"
    )
    parser.add_argument("--epochs", type=int, default=60, help="the paper's epochs")
    parser.add_argument(
        "--probe_epochs", type=int, default=2, help="epochs timed before projecting"
    )
    parser.add_argument("--size", type=int, default=256, help="frame height and width")
    parser.add_argument("--device", default="cuda", help="as train.py's --device")
    parser.add_argument("--num_workers", type=int, default=8, help="as train.py's")
    parser.add_argument("--train_flag", action="append", default=[], help="one more train.py flag")
    args = parser.parse_args()
    if args.join:
        join_parts(args.data, args.join)
        return 0
    if args.out is None:
        parser.error("give DATA and OUT")
    began = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        data_root = unpack(args.data, work)
        deadline = began + args.budget - args.reserve
        epochs, run_dir, measured = train_within_budget(args, data_root, work, deadline)
        measured["train_seconds"] = round(time.monotonic() - began, 1)
        measured.update(evaluate_and_export(args, data_root, run_dir, work, began))
        paper = epochs == args.epochs == 60 and args.size == 256
        name = "ped2_paper" if paper else f"ped2, {args.size}x{args.size}"
        summary = {
            "configuration": f"{name}, {epochs} epochs", "epochs": epochs, "size": args.size,
            "device": args.device, **measured, "seconds": round(time.monotonic() - began, 1),
        }  # fmt: skip
        report_path = work / "report.json"
        summary["report"] = json.loads(report_path.read_text()) if report_path.is_file() else None
        published = work / WEIGHTS_NAME
        if published.is_file():
            summary["weights"] = {
                "sha256": sha256(published), "bytes": published.stat().st_size,
                "parts": split_weights(published, args.out),
            }  # fmt: skip
        pack(args.out / "run.tar.gz", work, run_dir, summary)
        auc = summary["report"]["auc"] if summary["report"] else None
        headline = f"{summary['configuration']}: frame AUC " + (
            f"{100 * auc:.2f} %" if auc is not None else "not measured"
        )
        (args.out / "summary.txt").write_text(f"{headline}\n{json.dumps(summary, indent=2)}\n")
        print(headline)
    return 0


def evaluate_and_export(
    args: argparse.Namespace, data_root: Path, run_dir: Path, work: Path, began: float
) -> dict[str, Any]:
    """evaluate.py (report, scores, plots) and the published file, each within the budget."""
    checkpoint = str(run_dir / "checkpoint.pth")
    command = [sys.executable, "evaluate.py", "--dataset_type", "ped2", "--dataset_path"]
    command += [str(data_root), "--checkpoint", checkpoint, "--device", args.device]
    command += ["--report", str(work / "report.json"), "--scores", str(work / "scores.csv")]
    evaluation = Run([*command, "--plot_dir", str(work / "plots")], work / "evaluate.log")
    measured = {"evaluate_exit": evaluation.wait(began + args.budget - 30)}
    measured["evaluate_seconds"] = round(evaluation.seconds, 1)
    export = [sys.executable, "-m", "model.pretrained", "export", checkpoint]
    exporting = Run([*export, str(work / WEIGHTS_NAME)], work / "export.log")
    measured["export_exit"] = exporting.wait(began + args.budget - 5)
    return measured


def pack(archive_path: Path, work: Path, run_dir: Path, summary: dict[str, Any]) -> None:
    """The run's small files in one archive: report, scores, flags, log, plots, logs."""
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    files = [work / name for name in ("report.json", "scores.csv", "summary.json")]
    files += sorted(work.glob("*.log")) + [run_dir / "config.json", run_dir / "log.jsonl"]
    with tarfile.open(archive_path, "w:gz") as archive:
        for path in files:
            if path.is_file():
                archive.add(path, arcname=path.name)
        if (work / "plots").is_dir():
            archive.add(work / "plots", arcname="plots")


if __name__ == "__main__":
    sys.exit(main())
