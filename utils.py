"""Scoring, metrics and small shared helpers."""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import roc_auc_score, roc_curve


class InputError(Exception):
    """A problem with the user's input (data, flags, files) that a message can explain.

    The CLIs print ``str(error)`` as one line and exit non-zero, without a traceback.
    The message should name the culprit (file, flag, video) and the fix.
    """


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Write ``path`` atomically: ``write(tmp_path)`` fills a temporary file in the same
    folder, which then replaces ``path`` in one rename. A crash leaves the old file intact
    and no partial file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _give_default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _is_storage_error(error):
            raise InputError(
                f"could not write {path} ({error}); the previous file, if any, is kept; "
                "free disk space or write to another folder"
            ) from error
        raise


class PendingFile:
    """An output written under a temporary name beside its destination (same suffix, so
    OpenCV can pick the container from it, which ``utils.atomic_write``'s ``.tmp`` names
    prevent) and renamed over it by :meth:`commit`; :meth:`discard` removes it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.stem}.", suffix=self.path.suffix, dir=self.path.parent
        )
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> None:
        _give_default_permissions(self.tmp)
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def _give_default_permissions(path: str | os.PathLike) -> None:
    """mkstemp creates 0600 files; give a result the permissions a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def exclusive_lock(resource: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock named after ``resource`` (e.g. a folder being generated), so
    processes doing the same work at the same time take turns. The lock file lives in the
    system's temporary folder; POSIX ``flock``, and no lock where that is missing."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    key = hashlib.sha256(str(Path(resource).resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"lgn-{key}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_storage_error(error: BaseException) -> bool:
    """Full disk, quota, file-size limit or permissions: failures of the storage, not of
    the program.

    torch.save reports a failed write as a RuntimeError from its C++ zip writer: "file write
    failed", or "unexpected pos" when the file stopped growing (e.g. at ``ulimit -f``).
    """
    if isinstance(error, OSError):
        storage = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EFBIG)
        return error.errno in storage
    return isinstance(error, RuntimeError) and any(
        pattern in str(error) for pattern in ("write failed", "unexpected pos")
    )


def check_creatable_folder(folder: str | os.PathLike, what: str, fix: str) -> None:
    """Raise InputError unless ``folder`` exists or could be created, and could be written
    to: the nearest existing folder above it is a folder and accepts a file. Creates nothing.
    ``what`` names the culprit in the message (e.g. ``--plot_dir``), ``fix`` says what to do."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise InputError(f"{what} {folder}: {existing} is a file, not a folder; {fix}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise InputError(f"{what}: cannot write to {existing} ({error.strerror}); {fix}") from None


def check_writable_outputs(
    files: dict[str, str | os.PathLike | None], folders: dict[str, str | os.PathLike | None]
) -> None:
    """Fail before any work, not after it, when an output cannot be written.

    ``files`` and ``folders`` map a flag (``--report``) to its path (None: not asked for).
    Every path must be distinct, a file must not be an existing folder (nor a folder an
    existing file), and the nearest existing folder above each must be writable. Nothing is
    created, so a run that stops early leaves no empty folders behind.

    Raises:
        InputError: naming the flag, the path and the fix.
    """
    seen: dict[Path, str] = {}
    for flag, target, is_folder in [
        *((flag, target, False) for flag, target in files.items()),
        *((flag, target, True) for flag, target in folders.items()),
    ]:
        if not target:
            continue
        target = Path(target)
        resolved = target.resolve()
        if resolved in seen:
            raise InputError(
                f"{seen[resolved]} and {flag} both name {target}; give each output its own path"
            )
        seen[resolved] = flag
        if not is_folder and target.is_dir():
            raise InputError(f"{flag} {target} is a folder; give a file name")
        if is_folder and target.exists() and not target.is_dir():
            raise InputError(f"{flag} {target} is a file; give a folder")
        check_creatable_folder(target if is_folder else target.parent, flag, "choose another path")


# --------------------------------------------------------------------------- devices


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(
            f"--device {name!r} is not a device name ({error}); use auto, cpu or cuda"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} asked for CUDA, but none is available; use --device cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is
    emulated and several times slower than fp32."""
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if "AMX" in capability or "BF16" in capability:
        return True
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Map ``--precision`` to an autocast dtype, or None for plain fp32.

    ``auto``: bf16 on CPUs that compute it natively, bf16 (or fp16 where bf16 is missing)
    on CUDA, fp32 otherwise.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise InputError(f"--precision {precision!r} is unknown; use auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bfloat16`` or ``float16``: how reports name an autocast dtype."""
    return str(dtype or "fp32").replace("torch.", "")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """An autocast region for ``dtype``, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# --------------------------------------------------------------------------- scoring


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of images in [0, 1]: ``10·log10(1 / mse)``."""
    return float(10.0 * math.log10(1.0 / max(mse, 1e-12)))


def frame_errors(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared error ``((pred+1)/2 - (gt+1)/2)²`` of frames in [-1, 1], fp32."""
    return (((prediction.float() + 1) / 2 - (target.float() + 1) / 2) ** 2).float()


def point_score_tensor(errors: torch.Tensor) -> torch.Tensor:
    """Error-weighted mean error ``Σ w·e / Σ w`` with ``w = 1 - exp(-e)``, a 0-d tensor on the
    errors' device: gates the test-time memory update (update when below gamma)."""
    weights = 1 - torch.exp(-errors)
    return (weights * errors).sum() / weights.sum().clamp_min(1e-12)


def point_score(errors: torch.Tensor) -> float:
    """:func:`point_score_tensor` as a Python float."""
    return float(point_score_tensor(errors))


def minmax_normalize(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the array's own min and max; a constant array maps to zeros."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min() if values.size else 0.0
    if span <= 0:
        return np.zeros_like(values)
    return (values - values.min()) / span


def normality_scores(psnr: np.ndarray, distance: np.ndarray, lambda_: float = 0.6) -> np.ndarray:
    """Per-video fusion: ``λ·minmax(psnr) + (1-λ)·(1 - minmax(distance))``; 1 = normal."""
    return lambda_ * minmax_normalize(psnr) + (1 - lambda_) * (1 - minmax_normalize(distance))


def smooth_scores(scores: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian temporal smoothing (sigma in frames); ``sigma <= 0`` returns the input."""
    if sigma <= 0:
        return np.asarray(scores, dtype=np.float64)
    return gaussian_filter1d(np.asarray(scores, dtype=np.float64), sigma, mode="nearest")


def frame_auc(normality: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of the normality scores against ``1 - label`` (labels: 1 = abnormal)."""
    return float(roc_auc_score(1 - np.asarray(labels), normality))


def equal_error_rate(normality: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate of the anomaly detector that flags low normality scores."""
    fpr, tpr, _ = roc_curve(1 - np.asarray(labels), normality)
    fnr = 1 - tpr
    index = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[index] + fnr[index]) / 2)


# --------------------------------------------------------------------------- CLI plumbing


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def argument_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` for one of the command lines: ``prog`` names the script in the
    usage line, and ``--help`` shows the defaults."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=_HelpFormatter
    )


def run_cli(main: Callable[[Any], Any], args: Any) -> None:
    """Run a CLI ``main(args)``: an :class:`InputError` ends the process with a one-line
    message and exit status 2, Ctrl-C with one line and status 130, instead of a traceback
    (unless ``args.debug``). Outputs are written atomically, so an interrupted run leaves
    the previous files as they were."""
    try:
        main(args)
    except InputError as error:
        if getattr(args, "debug", False):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print("\ninterrupted: outputs not finished were not written", file=sys.stderr)
        sys.exit(130)


def finite_number(flag: str, value: float, minimum: float | None = None, above: bool = False):
    """Raise InputError unless ``value`` is a finite number (``>= minimum``, or ``> minimum``
    with ``above``), naming ``flag``. Returns ``value``."""
    if not math.isfinite(value):
        raise InputError(f"{flag} {value} must be a finite number")
    if minimum is not None and (value <= minimum if above else value < minimum):
        relation = "greater than" if above else "at least"
        raise InputError(f"{flag} {value} must be {relation} {minimum:g}")
    return value
