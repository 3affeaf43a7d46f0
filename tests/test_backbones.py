"""Backbones: every registered one honours the shared interface; then MLP and CNN specifics.

The interface tests are parametrised over ``list_backbones()``, so a backbone is tested the moment
it is registered.
"""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import GRAD_FLOOR, feature_loss
from zoo.errors import ConfigError
from zoo.layers import Activation, Init
from zoo.registry import create_backbone, get_backbone_entry, list_backbones

TINY_BATCH = 2


def _example_input(name: str) -> torch.Tensor:
    """A tiny batch of the backbone's input kind, shaped by its default ``input_shape``."""
    entry = get_backbone_entry(name)
    shape = tuple(entry.parameters()["input_shape"].default)
    if entry.input_kind in ("image", "vector", "sequence"):
        return torch.randn(TINY_BATCH, *shape)
    pytest.fail(f"no example input for input_kind {entry.input_kind!r}: extend _example_input")


# --- the interface, for every registered backbone ---------------------------------------------------
@pytest.mark.parametrize("name", list_backbones())
def test_forward_and_backward_reach_every_parameter(name):
    torch.manual_seed(0)
    model = create_backbone(name)
    features = model.forward_features(_example_input(name))
    assert features.shape == (TINY_BATCH, model.num_features)
    if not list(model.parameters()):  # a fixed transform fitted to the data (minirocket): no gradient to reach
        assert not features.requires_grad
        return
    feature_loss(features).backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > GRAD_FLOOR, f"{param_name}: no real gradient"


@pytest.mark.parametrize("name", list_backbones())
def test_layer_groups_cover_every_parameter_once(name):
    model = create_backbone(name)
    groups = model.layer_groups()
    assert isinstance(groups, dict) and groups
    owner: dict[int, str] = {}
    for group, module in groups.items():
        for p in module.parameters():
            assert id(p) not in owner, f"a parameter is in both {owner[id(p)]!r} and {group!r}"
            owner[id(p)] = group
    missing = [n for n, p in model.named_parameters() if id(p) not in owner]
    assert not missing, f"parameters in no layer group: {missing}"


@pytest.mark.parametrize("name", list_backbones())
def test_layer_groups_run_from_stem_to_top(name):
    model = create_backbone(name)
    groups = model.layer_groups()
    called: list[str] = []
    for group, module in groups.items():
        module.register_forward_pre_hook(lambda *_, g=group: called.append(g) if g not in called else None)
    model.forward_features(_example_input(name))
    assert called == list(groups)


# --- MLP --------------------------------------------------------------------------------------------
_ACTIVATION_FNS = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "elu": F.elu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def test_activation_table_covers_every_choice():
    assert set(_ACTIVATION_FNS) == set(get_args(Activation))


@pytest.mark.parametrize("activation", get_args(Activation))
def test_mlp_applies_each_activation(activation):
    torch.manual_seed(0)
    model = create_backbone("mlp", input_shape=(3,), hidden_sizes=(5,), activation=activation)
    x = torch.randn(4, 3)
    linear = model.blocks[0][0]
    torch.testing.assert_close(model.forward_features(x), _ACTIVATION_FNS[activation](linear(x)))


def test_mlp_flattens_input_and_stacks_hidden_sizes():
    model = create_backbone("mlp", input_shape=(2, 3), hidden_sizes=(7, 5))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 7), (7, 5)]
    assert model.num_features == 5
    assert model.forward_features(torch.randn(4, 2, 3)).shape == (4, 5)
    assert list(model.layer_groups()) == ["block0", "block1"]


@pytest.mark.parametrize("norm, expected", [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm), ("none", None)])
def test_mlp_norm_puts_right_module_in_each_block(norm, expected):
    model = create_backbone("mlp", input_shape=(3,), hidden_sizes=(6, 4), norm=norm)
    norm_types = (nn.BatchNorm1d, nn.LayerNorm)
    for block, width in zip(model.blocks, (6, 4)):
        norms = [m for m in block if isinstance(m, norm_types)]
        if expected is None:
            assert norms == []
        else:
            assert [type(m) for m in norms] == [expected]
            assert norms[0].weight.shape == (width,)


def test_mlp_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = create_backbone("mlp", input_shape=(8,), hidden_sizes=(64,), dropout=0.5, activation="sigmoid")
    x = torch.randn(4, 8)
    assert (model.train().forward_features(x) == 0).any()
    assert (model.eval().forward_features(x) > 0).all()  # sigmoid is never 0: only dropout zeroes


# Weight checks per init scheme on a large wide->narrow layer (fan_in=512, fan_out=256).
FAN_IN, FAN_OUT = 512, 256


def _check_default(w, b, gain):
    bound = 1 / math.sqrt(FAN_IN)  # PyTorch's own Linear init
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert b.abs().sum() > 0  # PyTorch's biases are not zeroed


def _check_xavier_uniform(w, b, gain):
    bound = gain * math.sqrt(6 / (FAN_IN + FAN_OUT))
    assert w.abs().max() <= bound + 1e-6 and w.abs().max() > 0.95 * bound


def _check_xavier_normal(w, b, gain):
    assert w.std().item() == pytest.approx(gain * math.sqrt(2 / (FAN_IN + FAN_OUT)), rel=0.03)


def _check_kaiming_uniform(w, b, gain):
    bound = math.sqrt(2) * math.sqrt(3 / FAN_IN)
    assert w.abs().max() <= bound + 1e-6 and w.abs().max() > 0.95 * bound


def _check_kaiming_normal(w, b, gain):
    assert w.std().item() == pytest.approx(math.sqrt(2 / FAN_IN), rel=0.03)


def _check_orthogonal(w, b, gain):
    torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(FAN_OUT), atol=1e-4, rtol=0)


def _check_normal(w, b, gain):
    assert w.std().item() == pytest.approx(0.02, rel=0.03)
    assert abs(w.mean().item()) < 1e-3


_INIT_CHECKS = {
    "default": _check_default,
    "xavier_uniform": _check_xavier_uniform,
    "xavier_normal": _check_xavier_normal,
    "kaiming_uniform": _check_kaiming_uniform,
    "kaiming_normal": _check_kaiming_normal,
    "orthogonal": _check_orthogonal,
    "normal": _check_normal,
}


def test_init_table_covers_every_choice():
    assert set(_INIT_CHECKS) == set(get_args(Init))


@pytest.mark.parametrize("init", get_args(Init))
def test_mlp_init_scheme_shapes_weights(init):
    # tanh: Xavier and orthogonal must use its gain (5/3); kaiming stays He-for-ReLU.
    activation = "relu" if init.startswith("kaiming") else "tanh"
    torch.manual_seed(0)
    model = create_backbone("mlp", input_shape=(FAN_IN,), hidden_sizes=(FAN_OUT,), activation=activation, init=init)
    linear = model.blocks[0][0]
    w, b = linear.weight.detach(), linear.bias.detach()
    _INIT_CHECKS[init](w, b, nn.init.calculate_gain(activation))
    if init != "default":
        assert torch.equal(b, torch.zeros_like(b))


def test_init_reaches_every_layer():
    torch.manual_seed(0)
    model = create_backbone("mlp", input_shape=(64,), hidden_sizes=(32, 16), init="orthogonal", activation="tanh")
    for linear in (model.blocks[0][0], model.blocks[1][0]):
        w = linear.weight.detach()
        torch.testing.assert_close(w @ w.T, (5 / 3) ** 2 * torch.eye(w.shape[0]), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"init": "he_magic"}, "unknown init 'he_magic'"),
        ({"activation": "swish"}, "unknown activation 'swish'"),
        ({"hidden_sizes": ()}, "at least one hidden size"),
    ],
)
def test_mlp_bad_choice_raises_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_backbone("mlp", input_shape=(3,), **kwargs)


# --- CNN --------------------------------------------------------------------------------------------
def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_cnn_builds_vgg_style_stages():
    model = create_backbone(
        "cnn", input_shape=(3, 16, 16), channels=(4, 8), convs_per_stage=2, pool="avg", dense=(16, 10)
    )
    assert list(model.layer_groups()) == ["stage0", "stage1", "dense"]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 4), (4, 4), (4, 8), (8, 8)]
    assert all(c.bias is None for c in convs)  # batch norm follows every convolution
    assert _count(model, nn.BatchNorm2d) == 4
    assert (_count(model, nn.AvgPool2d), _count(model, nn.MaxPool2d)) == (2, 0)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8 * 4 * 4, 16), (16, 10)]
    assert model.num_features == 10
    assert model.forward_features(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_cnn_without_batch_norm_has_conv_biases():
    model = create_backbone("cnn", input_shape=(1, 8, 8), channels=(4,), batch_norm=False, dense=(6,))
    assert _count(model, nn.BatchNorm2d) == 0
    assert all(c.bias is not None for c in model.modules() if isinstance(c, nn.Conv2d))


def test_cnn_max_pool_and_no_dense_flattens_to_features():
    model = create_backbone("cnn", input_shape=(1, 8, 8), channels=(4, 6), pool="max", dense=())
    assert _count(model, nn.MaxPool2d) == 2 and _count(model, nn.Linear) == 0
    assert model.num_features == 6 * 2 * 2
    assert list(model.layer_groups()) == ["stage0", "stage1"]
    assert model.forward_features(torch.randn(2, 1, 8, 8)).shape == (2, 24)


def test_cnn_pool_none_keeps_spatial_size():
    model = create_backbone("cnn", input_shape=(2, 5, 7), channels=(3,), pool="none", dense=())
    assert _count(model, nn.MaxPool2d) + _count(model, nn.AvgPool2d) == 0
    assert model.num_features == 3 * 5 * 7
    assert model.forward_features(torch.randn(2, 2, 5, 7)).shape == (2, 105)


@pytest.mark.parametrize("kernel_size, shape", [(2, (1, 7, 7)), (3, (1, 7, 7)), (4, (1, 8, 8)), (5, (1, 9, 6))])
def test_cnn_any_kernel_size_keeps_feature_count_right(kernel_size, shape):
    model = create_backbone("cnn", input_shape=shape, channels=(4,), kernel_size=kernel_size, dense=())
    assert model.forward_features(torch.randn(2, *shape)).shape == (2, model.num_features)
    assert model.num_features == 4 * (shape[1] // 2) * (shape[2] // 2)


def test_cnn_input_too_small_for_pooling_names_input_size():
    with pytest.raises(ConfigError, match=r"a 2x2 input is too small for 2 pooling stages of size 2"):
        create_backbone("cnn", input_shape=(1, 2, 2), channels=(4, 8))


def test_cnn_small_input_is_fine_without_pooling():
    model = create_backbone("cnn", input_shape=(1, 2, 2), channels=(4, 8), pool="none", dense=(3,))
    assert model.forward_features(torch.randn(2, 1, 2, 2)).shape == (2, 3)


@pytest.mark.parametrize("shape", [(64,), (8, 8), (1, 1, 8, 8)])
def test_cnn_rejects_non_image_input_shape(shape):
    with pytest.raises(ConfigError, match=r"cnn expects images of shape \(C, H, W\)"):
        create_backbone("cnn", input_shape=shape)


@pytest.mark.parametrize("name", ["mlp", "cnn", "tabular_mlp"])
def test_init_std_and_bias_init_reach_every_layer(name):
    # The broken recipes of configs/diagnosis/ need them: N(0, 1) weights, biases far below 0.
    torch.manual_seed(0)
    shape = {"cnn": (1, 8, 8)}.get(name, (FAN_IN,))
    model = create_backbone(name, input_shape=shape, init="normal", init_std=1.0, bias_init=-3.0)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert layers
    for layer in layers:
        assert layer.weight.std().item() == pytest.approx(1.0, rel=0.2)
        if layer.bias is not None:  # a convolution before batch norm has none
            assert torch.equal(layer.bias, torch.full_like(layer.bias, -3.0))
