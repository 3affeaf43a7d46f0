"""Built-in backbone families; importing this package registers them."""

from zoo.backbones import cnn, mlp  # noqa: F401  (registration side effect)
from zoo.backbones.base import Backbone
from zoo.backbones.cnn import CNNBackbone
from zoo.backbones.mlp import MLPBackbone

__all__ = ["Backbone", "CNNBackbone", "MLPBackbone"]
