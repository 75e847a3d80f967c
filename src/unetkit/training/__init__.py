"""Training: typed config, one Trainer (single process or DDP), runs from a config, cross-validation, the demo."""
from unetkit.training.config import (DataConfig, LossConfig, ModelConfig, OptimConfig, ScheduleConfig,
                                     TrainConfig)
from unetkit.training.trainer import Callback, FitResult, Trainer
from unetkit.training.run import train
from unetkit.training.cv import CVResult, train_folds

__all__ = ["TrainConfig", "ModelConfig", "DataConfig", "OptimConfig", "ScheduleConfig", "LossConfig",
           "Trainer", "Callback", "FitResult", "train", "train_folds", "CVResult"]
