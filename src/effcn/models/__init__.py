"""Model registry and the model families. Importing this package registers every preset."""

from .registry import (count_parameters, create_model, default_config, describe_model, input_shape,
                       list_models, model_config_dict, register_model)
from . import efficient_capsnet  # noqa: F401  (registers the presets)
from . import capsnet, cnn  # noqa: F401  (registers the baselines)
from .common import CapsNetOutput, CapsuleClassifier
from .efficient_capsnet import EfficientCapsNet, EfficientCapsNetConfig

__all__ = ["count_parameters", "create_model", "default_config", "describe_model", "input_shape",
           "list_models", "model_config_dict", "register_model", "CapsNetOutput",
           "CapsuleClassifier", "EfficientCapsNet", "EfficientCapsNetConfig"]
