"""Pure PyTorch + timm training of image classifiers. Knows nothing about Optuna."""

from trainer.checkpoint import load_pretrained, read_checkpoint, save_checkpoint
from trainer.config import (
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SchedConfig,
    TrainConfig,
    check_key,
    config_keys,
)
from trainer.data import ImageData, list_datasets, load_data, register_dataset
from trainer.device import gpu_share, select_device, set_gpu_share
from trainer.loop import NullReporter, Reporter, TrainResult, build_model, train
from trainer.losses import create_loss, list_losses
from trainer.models import check_backbone, create_model, list_models
from trainer.optim import create_optimizer, list_optimizers
from trainer.preflight import check_model, check_names
from trainer.schedulers import create_scheduler, list_schedulers
from trainer.throughput import ProbeOutOfMemory, Throughput, measure_throughput

__all__ = [
    "DataConfig",
    "ImageData",
    "LossConfig",
    "ModelConfig",
    "NullReporter",
    "OptimConfig",
    "ProbeOutOfMemory",
    "Reporter",
    "RunConfig",
    "SchedConfig",
    "TrainConfig",
    "TrainResult",
    "Throughput",
    "build_model",
    "check_backbone",
    "check_key",
    "check_model",
    "check_names",
    "config_keys",
    "create_loss",
    "create_model",
    "create_optimizer",
    "create_scheduler",
    "gpu_share",
    "list_datasets",
    "list_losses",
    "list_models",
    "list_optimizers",
    "list_schedulers",
    "load_data",
    "load_pretrained",
    "measure_throughput",
    "read_checkpoint",
    "register_dataset",
    "save_checkpoint",
    "select_device",
    "set_gpu_share",
    "train",
]
