"""Shared building blocks: activations and weight initialisation by name."""

from __future__ import annotations

from typing import Callable, Literal

from torch import nn

from zoo.errors import ConfigError

Activation = Literal["relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid"]
Init = Literal["default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal", "normal"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name."""
    if name not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def init_weights(module: nn.Module, scheme: str, activation: str = "relu") -> None:
    """Initialise the weight matrices of every Linear/Conv layer in ``module``; biases start at zero.

    Xavier suits tanh/sigmoid, He (kaiming) suits the ReLU family; ``default`` keeps PyTorch's init.
    """
    if scheme == "default":
        return
    # kaiming's gain formula knows relu and leaky_relu; the smooth ReLU-likes are close to relu.
    nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
    gain = nn.init.calculate_gain(activation if activation in ("tanh", "sigmoid", "relu") else "relu")
    schemes: dict[str, Callable[[nn.Parameter], object]] = {
        "xavier_uniform": lambda w: nn.init.xavier_uniform_(w, gain=gain),
        "xavier_normal": lambda w: nn.init.xavier_normal_(w, gain=gain),
        "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity),
        "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity=nonlinearity),
        "orthogonal": lambda w: nn.init.orthogonal_(w, gain=gain),
        "normal": lambda w: nn.init.normal_(w, std=0.02),
    }
    if scheme not in schemes:
        raise ConfigError(f"unknown init {scheme!r}; choose one of {['default', *schemes]}")
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            schemes[scheme](m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
