"""The network's configuration: its constructor's arguments as one dataclass, with their
defaults (the paper's sizes) defined here and nowhere else, and the frame-size rule.

Checkpoints store ``ModelConfig.as_dict()`` as ``model_args``, so a saved network is rebuilt
with ``LGNNet(**model_args)``; only the reference release's files, which store no sizes, need
the sizes read off their tensors (:func:`model.weights.infer_model_sizes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from common.errors import InputError

# The paper's input size; any multiple of 8 works (three 2x poolings down to the memory).
FRAME_SIZE = 256
# Frames are read as BGR (OpenCV's order), grey footage included.
FRAME_CHANNELS = 3


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The sizes of an :class:`model.lgn_net.LGNNet`; the fields are its constructor's
    arguments, the defaults the paper's."""

    channels: int = FRAME_CHANNELS  # channels per frame
    t_length: int = 5  # frames per window: t_length - 1 inputs, then the frame to predict
    msize: int = 10  # memory items
    fdim: int = 512  # query feature dimension (the prototype encoder's output channels)
    mdim: int = 512  # memory item dimension; equals fdim (queries are written as items)
    hidden: int = 128  # ST-LSTM hidden channels
    num_layers: int = 4  # stacked ST-LSTM cells

    def as_dict(self) -> dict[str, int]:
        """Plain ints by field name: what checkpoints store as ``model_args``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "model_args") -> ModelConfig:
        """The configuration stored as ``values``; unknown or non-integer entries are an
        :class:`InputError` naming ``source``."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"{source}: unknown model sizes {unknown}; expected some of {names}")
        if not all(
            isinstance(value, int) and not isinstance(value, bool) for value in values.values()
        ):
            raise InputError(f"{source}: model sizes must be integers, got {dict(values)}")
        return cls(**values)

    def check(self, flags: Mapping[str, str] | None = None) -> ModelConfig:
        """Raise :class:`InputError` unless the network can be built and trained with these
        sizes on frames as the data layer reads them; ``flags`` maps a field to the name a
        message gives it (the command lines pass their flags, e.g. ``channels`` -> ``--c``).
        Returns ``self``."""
        flags = flags or {}

        def name(field: str) -> str:
            return flags.get(field, field)

        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise InputError(
                    f"{name(field.name)} must be positive, got {getattr(self, field.name)}"
                )
        if self.channels != FRAME_CHANNELS:
            raise InputError(
                f"{name('channels')} {self.channels}: frames are read as {FRAME_CHANNELS}-channel "
                f"BGR (grey footage included), so only {FRAME_CHANNELS} is supported"
            )
        if self.t_length < 2:
            raise InputError(f"{name('t_length')} must be at least 2, got {self.t_length}")
        if self.msize < 2:
            raise InputError(
                f"{name('msize')} must be at least 2 (the triplet loss needs two items)"
            )
        if self.fdim != self.mdim:
            raise InputError(
                f"{name('fdim')} ({self.fdim}) must equal {name('mdim')} ({self.mdim}): "
                "queries are written into the memory as items"
            )
        return self


def check_frame_size(
    height: int | None, width: int | None, flags: tuple[str, str] = ("--h", "--w")
) -> None:
    """Raise :class:`InputError` unless each given size (None: not given) is a positive
    multiple of 8, naming it by ``flags``."""
    for flag, value in zip(flags, (height, width), strict=True):
        if value is not None and (value <= 0 or value % 8):
            raise InputError(f"{flag} {value} must be a positive multiple of 8")
