"""The autoencoder task: reconstructs its input through a bottleneck over the MLP and CNN encoders."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from zoo.tasks import Autoencoder


def low_rank_images(n: int = 256) -> torch.Tensor:
    """Images that are mixtures of 3 fixed patterns: compressible into a 3-dimensional code."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(3, 1, 8, 8, generator=g)
    weights = torch.randn(n, 3, 1, 1, 1, generator=g)
    return (weights * patterns).sum(1)


@pytest.mark.parametrize(
    "backbone,kwargs", [("mlp", {"hidden_sizes": (64,)}), ("cnn", {"channels": (8,), "dense": (32,)})]
)
def test_autoencoder_learns_to_reconstruct(backbone: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    x = low_rank_images()
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=32, shuffle=True)
    model = Autoencoder(backbone=backbone, backbone_kwargs=kwargs, input_shape=(1, 8, 8), latent_dim=3)
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(model(x), x).item()
    trainer = Trainer(
        max_epochs=30,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    model.eval()
    with torch.no_grad():
        after = torch.nn.functional.mse_loss(model(x), x).item()
        assert model(x).shape == x.shape
        assert model.encode(x).shape == (len(x), 3)
    assert after < 0.2 * before, f"reconstruction MSE {before:.3f} -> {after:.3f}"


def test_autoencoder_compares_output_with_input_not_label() -> None:
    model = Autoencoder(backbone="mlp", input_shape=(4,), latent_dim=2)
    x, y = torch.randn(5, 4), torch.arange(5)
    assert model.target_of(x, y) is x
    assert "num_classes" not in model.hparams and model.hparams["latent_dim"] == 2
