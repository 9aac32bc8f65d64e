"""Scoring settings shared by evaluation, detection and the Python API, each defined once.

λ and γ are the reference release's evaluation defaults, which the paper's numbers use:
λ weighs the frame-error score (PSNR) against the memory distance in the fused normality, and
a frame updates the memory at test time when its error-weighted point score is below γ.
"""

from __future__ import annotations

LAMBDA = 0.6
GAMMA = 0.009
# Share of normal frames that a calibrated threshold flags (detect.py, the Python API).
FALSE_ALARM_RATE = 0.01
# Windows encoded together when scoring a benchmark video: CPU / the CUDA fast path.
EVAL_BATCH_SIZE = 8
EVAL_BATCH_SIZE_FAST = 32
