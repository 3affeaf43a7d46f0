"""LightningModules that bind a backbone to a head, a loss and metrics."""

from zoo.tasks.autoencoder import Autoencoder
from zoo.tasks.base import ZooTask
from zoo.tasks.classification import Classifier
from zoo.tasks.regression import Regressor

__all__ = ["Autoencoder", "Classifier", "Regressor", "ZooTask"]
