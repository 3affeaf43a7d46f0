"""Task heads, written once: a task binds any backbone's features to one of these."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Dropout then a linear layer from ``(B, num_features)`` features to ``(B, num_classes)`` logits."""

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


class RegressionHead(ClassificationHead):
    """Dropout then a linear layer from features to ``num_targets`` real values."""

    def __init__(self, num_features: int, num_targets: int = 1, dropout: float = 0.0) -> None:
        super().__init__(num_features, num_targets, dropout)
