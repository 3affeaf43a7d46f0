"""zoo: a PyTorch Lightning model zoo for transfer learning."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["create_backbone", "list_backbones", "register_backbone"]


def __getattr__(name: str) -> Any:
    # `import zoo` (and so `zoo --help`) stays quick: torch loads when the registry is first used.
    if name in __all__:
        from zoo import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
