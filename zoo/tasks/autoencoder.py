"""Autoencoder: any vector or image backbone as the encoder, an MLP decoder, a reconstruction loss.

Pretraining an encoder this way needs no labels; its weights can then initialise a classifier.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanSquaredError, MetricCollection

from zoo.tasks.base import ZooTask

_LOSSES = {"mse": F.mse_loss, "mae": F.l1_loss}


class MLPDecoder(nn.Module):
    """Features ``(B, F)`` -> latent -> hidden layers -> a reconstruction of shape ``(B, *output_shape)``."""

    def __init__(
        self, num_features: int, output_shape: tuple[int, ...], latent_dim: int, hidden_sizes: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.output_shape = output_shape
        self.bottleneck = nn.Linear(num_features, latent_dim)
        layers: list[nn.Module] = []
        width = latent_dim
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, math.prod(output_shape)))
        self.decode = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        latent = self.bottleneck(features)  # (B, latent_dim)
        return self.decode(latent).unflatten(1, self.output_shape)  # no fixed batch size: exports trace it


class Autoencoder(ZooTask):
    """Reconstructs its input through a bottleneck: encoder = the backbone, decoder = an MLP.

    Args:
        latent_dim: size of the bottleneck code.
        decoder_hidden: widths of the decoder's hidden layers, from the code outwards.
        loss: ``mse`` or ``mae`` between the reconstruction and the (normalised) input.
        (the rest as in :class:`~zoo.tasks.base.ZooTask`)
    """

    learns_from_features = False  # the target is the input itself

    def __init__(
        self,
        backbone: str = "mlp",
        backbone_kwargs: Optional[dict[str, Any]] = None,
        pretrained: Union[bool, str, None] = None,
        input_shape: Optional[tuple[int, ...]] = None,
        latent_dim: int = 16,
        decoder_hidden: tuple[int, ...] = (128,),
        loss: Literal["mse", "mae"] = "mse",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        l1_penalty: float = 0.0,
        memory_format: Literal["auto", "channels_last", "contiguous"] = "auto",
    ) -> None:
        super().__init__(
            backbone,
            backbone_kwargs,
            pretrained,
            input_shape,
            None,
            0.0,
            optimizer,
            lr_scheduler,
            l1_penalty,
            memory_format,
        )
        self.loss_fn = _LOSSES[loss]
        self.head = MLPDecoder(self.backbone.num_features, self.input_shape, latent_dim, tuple(decoder_hidden))
        self._init_metrics()

    def make_metrics(self) -> MetricCollection:
        return MetricCollection({"mse": MeanSquaredError()})

    def target_of(self, x: Any, y: torch.Tensor) -> torch.Tensor:
        return x

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(output, target)

    def update_metrics(self, metrics: MetricCollection, output: torch.Tensor, target: torch.Tensor) -> None:
        metrics.update(output.flatten(), target.flatten())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck code, ``(B, latent_dim)``."""
        return self.head.bottleneck(self.features(x))

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Reconstructions, shaped like the inputs."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)
