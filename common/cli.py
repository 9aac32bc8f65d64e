"""Command-line plumbing shared by ``train.py``, ``evaluate.py``, ``detect.py`` and the
``python -m`` entry points: the parser, the flags they share (each defined here once, with
one help text), number checks, and :func:`run_cli`, which turns an :class:`InputError` into
one line and exit status 2, Ctrl-C into status 130 and SIGTERM into status 143.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import Callable
from typing import Any

from common.devices import PRECISIONS
from common.errors import InputError
from common.progress import close_progress_bars


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``docker stop``, systemd), raised where Ctrl-C raises
    KeyboardInterrupt, so that both stop a command the same way: outputs that are
    committed on a stop (detection's) cover the work done so far, others stay unwritten."""


def exit_status(interrupt: BaseException) -> int:
    """The conventional exit status after a stop: 143 for SIGTERM, 130 for Ctrl-C."""
    return 143 if isinstance(interrupt, Terminated) else 130


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class _NotGiven:
    """Stands in, while parsing, for every flag the command line has not given."""


class _GivenFlagsParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose namespaces also record which flags the command line gave
    (see :func:`given_flags`), whatever the defaults are (a named configuration's included)."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if namespace is not None:
            return super().parse_known_args(args, namespace)
        if args is not None:
            args = list(args)  # parsed twice below: an iterator would be empty the second time
        # argparse fills in a default only where the namespace lacks the attribute, so a
        # namespace preset to a marker shows, after parsing, which flags were given.
        # Actions that add to the value already there (append, extend, count) start from
        # None instead, which they accept.
        adding = (argparse._AppendAction, argparse._CountAction)  # extend is an append
        markers = {
            action.dest: None if isinstance(action, adding) else _NotGiven()
            for action in self._actions
            if action.dest != argparse.SUPPRESS
        }
        probed, _ = super().parse_known_args(args, argparse.Namespace(**markers))
        given = sorted(
            dest for dest, marker in markers.items() if getattr(probed, dest) is not marker
        )
        parsed, extras = super().parse_known_args(args, None)
        parsed.given_flags = given
        return parsed, extras


def given_flags(args: Any) -> set[str]:
    """The destinations of the flags the command line gave explicitly (a parser of
    :func:`argument_parser` records them); empty for a namespace built another way."""
    return set(getattr(args, "given_flags", None) or ())


def argument_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` for one of the command lines: ``prog`` names the script in the
    usage line, ``--help`` shows the defaults, and the namespace records which flags were
    given (:func:`given_flags`)."""
    return _GivenFlagsParser(prog=prog, description=description, formatter_class=_HelpFormatter)


def run_cli(main: Callable[[Any], Any], args: Any) -> None:
    """Run a CLI ``main(args)``: an :class:`InputError` ends the process with a one-line
    message and exit status 2, Ctrl-C with one line and status 130, SIGTERM with one line and
    status 143, instead of a traceback (unless ``args.debug``). Outputs are written
    atomically, so a stopped run leaves the previous files as they were."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main(args)
    except InputError as error:
        close_progress_bars()
        if getattr(args, "debug", False):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as stop:
        close_progress_bars()
        if getattr(args, "debug", False):
            raise
        print("\ninterrupted: outputs not finished were not written", file=sys.stderr)
        sys.exit(exit_status(stop))
    finally:
        signal.signal(signal.SIGTERM, previous)


def finite_number(flag: str, value: float, minimum: float | None = None, above: bool = False):
    """Raise InputError unless ``value`` is a finite number (``>= minimum``, or ``> minimum``
    with ``above``), naming ``flag``. Returns ``value``."""
    if not math.isfinite(value):
        raise InputError(f"{flag} {value} must be a finite number")
    if minimum is not None and (value <= minimum if above else value < minimum):
        relation = "greater than" if above else "at least"
        raise InputError(f"{flag} {value} must be {relation} {minimum:g}")
    return value


def fraction(flag: str, value: float) -> float:
    """Raise InputError unless ``value`` lies in [0, 1], naming ``flag``; returns it."""
    finite_number(flag, value)
    if not 0.0 <= value <= 1.0:
        raise InputError(f"{flag} {value} must lie in [0, 1]")
    return value


def at_least(flag: str, value: int | None, minimum: int) -> int | None:
    """Raise InputError unless ``value`` (None: not given) is at least ``minimum``."""
    if value is not None and value < minimum:
        bound = {0: "0 or positive", 1: "positive"}.get(minimum, f"at least {minimum}")
        raise InputError(f"{flag} must be {bound}, got {value}")
    return value


# --------------------------------------------------------------------------- shared flags


def add_run_flags(group: Any) -> None:
    """``--device``, ``--precision`` and ``--debug``: every script's."""
    group.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:1")
    group.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="autocast dtype; auto: bf16 on CUDA (fp16 where bf16 is missing) and on CPUs that "
        "compute bf16 natively, else fp32",
    )
    group.add_argument("--debug", action="store_true", help="show tracebacks for input errors")


def add_fast_path_flag(group: Any) -> None:
    """``--fast_path``: train.py's and evaluate.py's."""
    group.add_argument(
        "--fast_path",
        default="auto",
        choices=("auto", "off"),
        help="auto: on CUDA, torch.compile what runs per step (the training step; the "
        "encoder and per-frame step of scoring), keep training frames on the GPU as uint8 when "
        "they fit, fused Adam, cuDNN autotuning, fewer host syncs; off: the plain eager path. "
        "CPU runs are the same either way; the numbers agree up to floating-point rounding",
    )


def add_frame_size_flags(group: Any, default: int | None) -> None:
    """``--h`` and ``--w``: the frame size fed to the model (``default`` None: the
    checkpoint's)."""
    suffix = " (default: the checkpoint's)" if default is None else ""
    for flag, what in (("--h", "height"), ("--w", "width")):
        group.add_argument(
            flag, type=int, default=default, help=f"frame {what} in pixels, a multiple of 8{suffix}"
        )


def add_weights_flags(group: Any) -> None:
    """``--checkpoint`` or the reference release's ``--model_dir`` + ``--m_items_dir``."""
    group.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint.pth of train.py or a published file: a path, an http(s):// or "
        "file:// URL (downloaded once into the torch.hub cache) or a published name",
    )
    group.add_argument(
        "--model_dir",
        default=None,
        help="instead of --checkpoint: the reference release's weights (a state_dict or a "
        "whole pickled network; read as data, never run)",
    )
    group.add_argument(
        "--m_items_dir", default=None, help="with --model_dir: its memory items tensor file"
    )


def add_memory_update_flags(group: Any, default_text: str) -> None:
    """``--memory_update on|off`` and its alias ``--no_memory_update`` (= ``off``)."""
    group.add_argument(
        "--memory_update",
        choices=("on", "off"),
        default=None,
        help=f"test-time memory update of frames whose point score is below --gamma "
        f"(default: {default_text})",
    )
    group.add_argument(
        "--no_memory_update",
        dest="memory_update",
        action="store_const",
        const="off",
        help="the same as --memory_update off",
    )


class _RememberFlag(argparse.Action):
    """Stores the value like ``store`` and remembers which of the flag's names was typed,
    so that messages name the flag as the user wrote it (see :func:`typed_flag`)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None):
        setattr(namespace, self.dest, values)
        typed = dict(getattr(namespace, "typed_flags", None) or {})
        typed[self.dest] = option_string
        namespace.typed_flags = typed


def typed_flag(args: Any, dest: str) -> str:
    """The name under which the user gave the flag stored in ``dest`` (an alias, or the
    canonical ``--dest``)."""
    return (getattr(args, "typed_flags", None) or {}).get(dest) or f"--{dest}"


def add_scores_flag(group: Any) -> None:
    """``--scores`` (alias ``--csv``): the per-frame scores as CSV."""
    group.add_argument(
        "--scores",
        "--csv",
        dest="scores",
        default=None,
        action=_RememberFlag,
        help="per-frame scores (CSV) here",
    )


def add_report_flag(group: Any) -> None:
    """``--report``: the run's summary as JSON."""
    group.add_argument("--report", default=None, help="summary and metrics (JSON) here")
