"""Datamodules of the zoo: each reads its data, splits it reproducibly and says what the model needs."""

from datamodules.base import ZooDataModule
from datamodules.images import Digits, ImageFolder
from datamodules.sequences import TimeSeries
from datamodules.tabular import SklearnTabular
from datamodules.tabular_csv import TabularCSV
from datamodules.text import TextClassification, VaderWords
from datamodules.torchvision_sets import CIFAR10, CIFAR100, MNIST, FashionMNIST

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "Digits",
    "FashionMNIST",
    "ImageFolder",
    "MNIST",
    "SklearnTabular",
    "TabularCSV",
    "TextClassification",
    "TimeSeries",
    "VaderWords",
    "ZooDataModule",
]
