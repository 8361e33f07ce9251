"""Model registry and the model families. Importing this package registers every preset."""

from .registry import (create_model, default_config, describe_model, input_shape, list_models,
                       model_config_dict, register_model)
from . import efficient_capsnet  # noqa: F401  (registers the presets)
from . import capsnet, cnn  # noqa: F401  (registers the baselines)
from .efficient_capsnet import CapsNetOutput, EfficientCapsNet, EfficientCapsNetConfig

__all__ = ["create_model", "default_config", "describe_model", "input_shape", "list_models",
           "model_config_dict", "register_model", "CapsNetOutput", "EfficientCapsNet",
           "EfficientCapsNetConfig"]
