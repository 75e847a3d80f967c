"""File I/O: model checkpoints (and, in unetkit.data, images and volumes)."""
