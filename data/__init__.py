"""Datasets for LGN-Net: frame trees, frame labels and the synthetic demo scene."""

from data.decoding import decode_frame
from data.frame_cache import FrameCache
from data.frame_folders import IMAGE_EXTENSIONS, Video, find_split_dir, list_videos
from data.frames import FrameWindowDataset, frames_to_tensor, open_split
from data.labels import SUPPORTED_FORMATS, load_frame_labels, write_ano_pred_mat

__all__ = [
    "IMAGE_EXTENSIONS",
    "SUPPORTED_FORMATS",
    "FrameCache",
    "FrameWindowDataset",
    "Video",
    "decode_frame",
    "find_split_dir",
    "frames_to_tensor",
    "list_videos",
    "load_frame_labels",
    "open_split",
    "write_ano_pred_mat",
]
