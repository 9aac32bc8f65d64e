"""Training LGN-Net: the epoch loop, resumable run state and data-parallel helpers."""
