"""Scoring with a trained LGN-Net: the test-time protocol, the benchmark evaluation, streaming
detection with calibrated thresholds, and a small Python API (:func:`load_scorer`)."""

from inference.api import FootageScores, Scorer, load_scorer

__all__ = ["FootageScores", "Scorer", "load_scorer"]
