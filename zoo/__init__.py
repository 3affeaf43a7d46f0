"""zoo: a PyTorch Lightning model zoo for transfer learning."""

from zoo.registry import create_backbone, list_backbones, register_backbone

__version__ = "0.1.0"
__all__ = ["create_backbone", "list_backbones", "register_backbone"]
