"""ResNet specifics: torchvision-equal parameter counts, the two stems, zero-init residuals, size errors.

The shared interface (forward, backward, layer groups) is tested for every registered ResNet in
``tests/test_backbones.py``.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import zoo.backbones.resnet as resnet  # noqa: F401  (registers resnet18/34/50)
from zoo.backbones.resnet import BasicBlock, Bottleneck, ResNetBackbone
from zoo.errors import ConfigError
from zoo.registry import create_backbone, get_backbone_entry

VARIANTS = ("resnet18", "resnet34", "resnet50")


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


@pytest.mark.parametrize("name", VARIANTS)
def test_imagenet_parameter_count_matches_torchvision_without_fc(name):
    torchvision = pytest.importorskip("torchvision")
    ours = create_backbone(name, input_shape=(3, 224, 224), stem="imagenet")
    theirs = getattr(torchvision.models, name)(weights=None)
    expected = sum(p.numel() for n, p in theirs.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in ours.parameters()) == expected
    assert ours.num_features == theirs.fc.in_features  # 512 basic, 2048 bottleneck


@pytest.mark.parametrize("name, blocks", [("resnet18", 8), ("resnet34", 16), ("resnet50", 16)])
def test_variants_have_their_depth(name, blocks):
    assert len(_blocks(create_backbone(name))) == blocks


@pytest.mark.parametrize("name", VARIANTS)
def test_registered_factories_take_the_class_arguments(name):
    # A factory is the class with block and layers fixed: same names, same defaults, nothing missing.
    cls = inspect.signature(ResNetBackbone).parameters
    factory = get_backbone_entry(name).parameters()
    assert list(factory) == [p for p in cls if p not in ("block", "layers")]
    assert all(factory[p].default == cls[p].default for p in factory)
    assert get_backbone_entry(name).family == "resnet" and get_backbone_entry(name).input_kind == "image"


def _shapes_into_stages(model: ResNetBackbone, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The input shape each layer group sees, recorded with forward pre-hooks."""
    seen: dict[str, tuple[int, ...]] = {}

    def record(group: str):  # a pre-hook must return None, or its value replaces the input
        def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen[group] = tuple(args[0].shape)

        return hook

    for group, module in model.layer_groups().items():
        module.register_forward_pre_hook(record(group))
    model.forward_features(x)
    return seen


def test_small_stem_keeps_8x8_into_layer1_then_halves_per_stage():
    model = create_backbone("resnet18", input_shape=(1, 8, 8), stem="small")
    assert [type(m) for m in model.stem.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))] == [nn.Conv2d]
    assert model.stem[0].conv.kernel_size == (3, 3) and model.stem[0].conv.stride == (1, 1)
    shapes = _shapes_into_stages(model, torch.randn(2, 1, 8, 8))
    assert shapes == {
        "stem": (2, 1, 8, 8),
        "layer1": (2, 64, 8, 8),
        "layer2": (2, 64, 8, 8),
        "layer3": (2, 128, 4, 4),
        "layer4": (2, 256, 2, 2),
    }


def test_imagenet_stem_divides_resolution_by_four():
    model = create_backbone("resnet18", input_shape=(3, 64, 64), stem="imagenet")
    conv = model.stem[0].conv
    assert conv.kernel_size == (7, 7) and conv.stride == (2, 2)
    assert any(isinstance(m, nn.MaxPool2d) for m in model.stem)
    assert _shapes_into_stages(model, torch.randn(2, 3, 64, 64))["layer1"] == (2, 64, 16, 16)


@pytest.mark.parametrize(
    "shape, expected",
    [((1, 8, 8), "small"), ((3, 63, 200), "small"), ((3, 64, 64), "imagenet"), ((3, 224, 224), "imagenet")],
)
def test_auto_stem_follows_image_size(shape, expected):
    assert create_backbone("resnet18", input_shape=shape).stem_kind == expected


def test_forward_features_on_digits_gives_512_features():
    model = create_backbone("resnet18", input_shape=(1, 8, 8))
    assert model.forward_features(torch.randn(2, 1, 8, 8)).shape == (2, 512)


def test_widths_set_the_feature_count():
    model = create_backbone("resnet18", input_shape=(1, 8, 8), widths=(8, 16, 24, 32))
    assert model.num_features == 32
    assert model.forward_features(torch.randn(2, 1, 8, 8)).shape == (2, 32)
    assert create_backbone("resnet50", input_shape=(1, 8, 8), widths=(8, 16, 24, 32)).num_features == 128


def test_layer_groups_are_stem_then_four_stages():
    assert list(create_backbone("resnet34").layer_groups()) == ["stem", "layer1", "layer2", "layer3", "layer4"]


@pytest.mark.parametrize("name", ("resnet18", "resnet50"))
def test_zero_init_residual_zeroes_last_bn_of_every_block_only(name):
    model = create_backbone(name, input_shape=(1, 8, 8), zero_init_residual=True)
    last = {id(b.last_bn) for b in _blocks(model)}
    assert len(last) == len(_blocks(model)) > 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
            assert (m.weight == 0).all() if id(m) in last else (m.weight == 1).all()
    # Every block starts as its shortcut: identity blocks pass their input through relu unchanged.
    block = model.stages[0][1]
    x = torch.randn(2, block.last_bn.num_features, 8, 8).relu()
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("name", ("resnet18", "resnet50"))
def test_without_zero_init_residual_no_bn_weight_is_zero(name):
    model = create_backbone(name, input_shape=(1, 8, 8), zero_init_residual=False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all()


def test_convolutions_use_he_fan_out_init():
    torch.manual_seed(0)
    model = create_backbone("resnet18", input_shape=(1, 8, 8))
    conv = model.stages[3][0].conv1.conv  # 3x3, 256 -> 512: fan_out = 512 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.03)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_drop_rate_drops_pooled_features_in_training_only():
    torch.manual_seed(0)
    model = create_backbone("resnet18", input_shape=(1, 8, 8), widths=(8, 8, 8, 64), drop_rate=0.5).eval()
    x = torch.randn(4, 1, 8, 8)
    features = model.forward_features(x)
    model.dropout.train()  # batch norm stays in eval mode, so only dropout differs
    dropped = model.forward_features(x)
    assert ((dropped == 0) & (features != 0)).any()
    torch.testing.assert_close(dropped[dropped != 0], 2 * features[dropped != 0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"input_shape": (1, 8, 8), "stem": "imagenet"},
            r"a 8x8 input is too small for the imagenet stem.*"
            r"at least 32x32.*stem: small.*larger image size",
        ),
        ({"input_shape": (3, 28, 28), "stem": "imagenet"}, r"a 28x28 input is too small for the imagenet stem"),
        ({"input_shape": (1, 4, 4)}, r"a 4x4 input is too small for the small stem.*at least 8x8.*larger image size"),
        ({"input_shape": (1, 16, 6), "stem": "small"}, r"a 16x6 input is too small"),
    ],
)
def test_input_too_small_names_size_stem_and_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_backbone("resnet18", **kwargs)


def test_smallest_accepted_sizes_run():
    for shape, stem in (((1, 8, 8), "small"), ((3, 32, 32), "imagenet")):
        model = create_backbone("resnet18", input_shape=shape, stem=stem)
        assert model.forward_features(torch.randn(2, *shape)).shape == (2, 512)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": (64,)}, r"resnet expects images of shape \(C, H, W\)"),
        ({"stem": "tiny"}, r"unknown stem 'tiny'"),
        ({"widths": (64, 128)}, r"need one entry per stage"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_backbone("resnet18", **kwargs)


def test_unknown_block_raises_config_error():
    with pytest.raises(ConfigError, match=r"unknown block 'wide'"):
        ResNetBackbone(block="wide")  # type: ignore[arg-type]
