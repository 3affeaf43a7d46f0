"""Built-in backbone families; importing this package registers them."""

from zoo.backbones import cnn, conv1d, mlp, resnet, rnn, rocket, tabular, transformer, vit  # noqa: F401  (registration side effect)
from zoo.backbones.base import Backbone
from zoo.backbones.cnn import CNNBackbone
from zoo.backbones.conv1d import FCN1DBackbone, ResNet1DBackbone
from zoo.backbones.mlp import MLPBackbone
from zoo.backbones.pretrained import LayerGroup, PretrainedBackbone, preprocessing_of
from zoo.backbones.resnet import ResNetBackbone
from zoo.backbones.rnn import RNNBackbone
from zoo.backbones.rocket import MiniRocketBackbone
from zoo.backbones.tabular import TabularMLPBackbone
from zoo.backbones.transformer import TransformerBackbone
from zoo.backbones.vit import ViTBackbone

__all__ = [
    "Backbone",
    "CNNBackbone",
    "FCN1DBackbone",
    "LayerGroup",
    "MLPBackbone",
    "MiniRocketBackbone",
    "PretrainedBackbone",
    "RNNBackbone",
    "ResNet1DBackbone",
    "ResNetBackbone",
    "TabularMLPBackbone",
    "TransformerBackbone",
    "ViTBackbone",
    "preprocessing_of",
]
