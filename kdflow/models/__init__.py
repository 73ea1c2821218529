"""Models: the registry, the architectures (imported here so they register) and the wrapper."""

from kdflow.models import convnet, resnet_cifar, resnet_imagenet  # noqa: F401  (registration side effects)
from kdflow.models.classifier import Classifier
from kdflow.models.registry import create_model, list_models, register_model

__all__ = ["Classifier", "create_model", "list_models", "register_model"]
