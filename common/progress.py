"""Progress bars out of the way of error messages."""

from __future__ import annotations

from tqdm import tqdm


def close_progress_bars() -> None:
    """Close every open tqdm bar, so that the message printed next is the last line.

    A bar left open when an error escapes its loop is closed when it is garbage-collected,
    at the latest at interpreter exit, and redraws itself then: after the one-line error a
    user or a script reading the last line of stderr would see the bar instead. tqdm keeps
    its open bars in ``tqdm._instances`` (what ``tqdm.write`` uses to clear them)."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
