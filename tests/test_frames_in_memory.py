"""The API's contract for frames in memory (``data.sources.checked_frames``, which
``Scorer.score`` applies): what is converted, exactly how, and what is refused in one line."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from common.errors import InputError
from data.sources import checked_frames

RNG = np.random.default_rng(0)
FRAMES = RNG.integers(0, 256, size=(4, 6, 8, 3), dtype=np.uint8)
GREY = FRAMES[..., 0]


def refusal(frames: object) -> str:
    """The one-line message of refusing ``frames``; no warning may be printed on the way."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError) as raised:
            checked_frames(frames)
    message = str(raised.value)
    assert "\n" not in message and "(T, H, W, 3) in BGR" in message
    return message


def test_one_grey_channel_is_copied_to_b_g_and_r() -> None:
    expected = np.repeat(GREY[..., None], 3, axis=-1)
    np.testing.assert_array_equal(checked_frames(GREY[..., None]), expected)
    np.testing.assert_array_equal(checked_frames(GREY), expected)
    np.testing.assert_array_equal(checked_frames(torch.from_numpy(GREY[..., None])), expected)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.int8])
def test_integers_in_0_255_are_the_same_uint8_values(dtype: type) -> None:
    values = FRAMES // 2 if dtype == np.int8 else FRAMES  # int8 holds 0..127
    converted = checked_frames(values.astype(dtype))
    assert converted.dtype == np.uint8
    np.testing.assert_array_equal(converted, values)


def test_integers_outside_0_255_are_refused() -> None:
    assert "values up to 256" in refusal(np.full((4, 6, 8, 3), 256, np.int64))
    negative = FRAMES.astype(np.int64)
    negative[0, 0, 0, 0] = -1
    assert "integer frames must lie in [0, 255]" in refusal(negative)


@pytest.mark.parametrize("as_float", [False, True])
def test_four_channels_are_refused_saying_how_to_drop_alpha(as_float: bool) -> None:
    def given(frames: np.ndarray) -> np.ndarray:
        return frames.astype(np.float32) / 255 if as_float else frames

    bgra = np.concatenate([FRAMES, np.full((4, 6, 8, 1), 255, np.uint8)], axis=-1)
    message = refusal(given(bgra))
    assert "4 channels" in message and "frames[..., :3]" in message
    assert "frames[..., 2::-1] for RGBA" in message
    # The advice gives the BGR frames back.
    rgba = bgra[..., [2, 1, 0, 3]]
    np.testing.assert_array_equal(checked_frames(given(rgba)[..., 2::-1]), FRAMES)
    np.testing.assert_array_equal(checked_frames(given(bgra)[..., :3]), FRAMES)


def test_nan_and_infinite_values_are_named_without_a_numpy_warning(capsys) -> None:
    all_nan = np.full((4, 6, 8, 3), np.nan, np.float32)
    assert f"with {all_nan.size} NaN of its {all_nan.size} values" in refusal(all_nan)
    partly = FRAMES.astype(np.float64) / 255
    partly[0, 0, 0, :2] = np.nan
    partly[1, 0, 0, 0] = np.inf
    partly[2, 0, 0, 0] = -np.inf
    message = refusal(partly)
    assert f"with 2 NaN and 2 infinite of its {partly.size} values" in message
    assert "np.nan_to_num" in message
    assert "with 192 infinite of its 192 values" in refusal(torch.full((4, 6, 8), float("inf")))
    assert capsys.readouterr() == ("", "")
