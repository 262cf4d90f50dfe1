"""Training an emitted model: data (archc.train.data), the loop (archc.train.loop), checkpoints
(archc.train.checkpoint) and the loss-curve PNG (archc.train.plot). Importing this package does
not import torch; the loop imports it when it runs."""

from archc.train.loop import TrainConfig, TrainInterrupted, TrainResult, train

__all__ = ["TrainConfig", "TrainInterrupted", "TrainResult", "train"]
