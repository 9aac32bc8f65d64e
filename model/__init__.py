"""LGN-Net model components."""

from model.config import ModelConfig
from model.lgn_net import Encoded, InferOutput, LGNNet, TrainOutput
from model.memory import (
    feature_distance,
    flatten_query,
    init_memory_items,
    memory_losses,
    read_memory,
    update_memory,
)

__all__ = [
    "Encoded",
    "InferOutput",
    "LGNNet",
    "ModelConfig",
    "TrainOutput",
    "feature_distance",
    "flatten_query",
    "init_memory_items",
    "memory_losses",
    "read_memory",
    "update_memory",
]
