"""Pretrained image models of torchvision, ``torchvision/<model>``, as zoo backbones.

The classifier is dropped and pooled features ``(B, num_features)`` returned. Layer groups by stage (a ResNet's
stem and layers, a ViT's embeddings, encoder layers and final norm, a ``features`` trunk cut where the feature
map shrinks).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import os
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from zoo.backbones import pretrained as adapters  # adapters.host_reachable etc. are looked up at each call
from zoo.backbones.pretrained import (
    HOW_TO_PASS,
    IMAGENET,
    Pretrained,
    PretrainedBackbone,
    children_groups,
    close_matches,
    count_without_weights,
    load_checked,
    read_weights,
)
from zoo.backbones.vision import image_preprocessing, image_shape
from zoo.errors import ConfigError
from zoo.registry import BackboneEntry

TRUNKS = ("features", "trunk_output", "layers", "blocks")  # torchvision's Sequentials of stages or blocks
PROBE_SIZE = 64  # the dummy image that finds where a trunk's feature map shrinks


def tv_names() -> list[str]:
    from torchvision import models

    return models.list_models(module=models)  # the classification models


def tv_names_matching(pattern: str) -> list[str]:
    return [f"torchvision/{n}" for n in tv_names() if fnmatch.fnmatch(n, pattern)]


def _tv_weights_enum(name: str) -> Any:
    from torchvision import models

    if name not in tv_names():
        raise close_matches(name, tv_names(), "torchvision model", "`zoo models 'torchvision/*'` lists them.")
    return models.get_model_weights(name)


def _tv_weights(name: str, pretrained: Pretrained) -> Any:
    """The torchvision weights enum member ``pretrained`` names (None/True: the default ones)."""
    enum = _tv_weights_enum(name)
    if isinstance(pretrained, str) and pretrained in enum.__members__:
        return enum[pretrained]
    return enum.DEFAULT


def tv_preprocessing(
    name: str, input_shape: Optional[tuple[int, ...]] = None, pretrained: Pretrained = None, **_: Any
) -> dict[str, Any]:
    weights = _tv_weights(name, pretrained)
    t = weights.transforms()  # torchvision's ImageClassification preset: metadata only, nothing is downloaded
    crop, resize = t.crop_size[0], t.resize_size[0]
    channels = input_shape[0] if input_shape else 3
    return image_preprocessing(
        t.mean or IMAGENET["mean"],
        t.std or IMAGENET["std"],
        (crop, crop),
        t.interpolation.value,
        crop / resize,
        channels,
    )


def _tv_state_dict(name: str, pretrained: Pretrained) -> tuple[Optional[dict[str, torch.Tensor]], str]:
    """The weights to load and where they came from; None for random init."""
    if pretrained is False:
        return None, ""
    weights = _tv_weights(name, pretrained)
    if isinstance(pretrained, str) and pretrained not in type(weights).__members__:
        if not os.path.exists(pretrained):
            names = ", ".join(type(weights).__members__)
            raise ConfigError(
                f"model.pretrained={pretrained!r}: no such file, nor weights of torchvision/{name} ({names})"
            )
        return read_weights(pretrained), pretrained
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    if os.path.isfile(cached):
        return read_weights(cached), cached
    if not adapters.host_reachable(weights.url):
        raise ConfigError(
            f"torchvision/{name}: the {weights} weights are not on this machine and the network cannot be reached. "
            f"They are looked for in {cached} (from {weights.url}). Copy the file there, or pass it: {HOW_TO_PASS}"
        )
    try:
        return dict(weights.get_state_dict(progress=False, check_hash=True)), weights.url
    except Exception as err:
        raise ConfigError(f"torchvision/{name}: could not download {weights.url}: {err}; {HOW_TO_PASS}") from None


def _strip_head(model: nn.Module, name: str) -> tuple[int, str]:
    """Replace the classifier's last Linear by an Identity; its ``in_features`` and its path."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            break
    else:
        raise ConfigError(f"torchvision/{name}: no classifier (fc, classifier, heads, head) to remove")
    linears = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)]
    if linears:  # fc / heads.head / classifier.3: keep what comes before it (a pretrained hidden layer, a norm)
        path, linear = linears[-1]
        parent, _, child = f"{attr}.{path}".rstrip(".").rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
        return linear.in_features, f"{attr}.{path}".rstrip(".")
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]  # SqueezeNet: a 1x1 convolution classifier
    setattr(model, attr, nn.AdaptiveAvgPool2d(1))
    return convs[-1].in_channels, attr


def _adapt_first_conv(model: nn.Module, channels: int) -> None:
    """Let an RGB model take ``channels``: summed weights for one channel, else repeated and rescaled."""
    path, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    weight = conv.weight.detach()  # (out, 3, k, k)
    if channels == 1:
        weight = weight.sum(1, keepdim=True)
    else:
        weight = weight.repeat(1, math.ceil(channels / weight.shape[1]), 1, 1)[:, :channels] * (3 / channels)
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def torchvision_backbone(
    name: str, input_shape: Optional[tuple[int, int, int]] = None, pretrained: Pretrained = None
) -> PretrainedBackbone:
    """A torchvision classification model (``torchvision/resnet50``) without its last Linear layer.

    Args:
        name: a name from ``torchvision.models.list_models()``.
        input_shape: ``(C, H, W)``; ``C`` other than 3 adapts the first convolution after loading, and a
            ViT is built for ``H`` with its position embeddings interpolated.
        pretrained: True/None for the default weights (torch hub's cache, else download), a weights name
            (``IMAGENET1K_V2``), a local ``.pth`` / ``.safetensors`` state dict, or False.
    """
    from torchvision import models

    shape = image_shape(f"torchvision/{name}", input_shape, (3, 224, 224))
    state, source = _tv_state_dict(name, pretrained)
    kwargs: dict[str, Any] = {}
    if name in ("googlenet", "inception_v3"):  # no auxiliary classifiers; the pretrained ones expect transform_input
        kwargs.update(aux_logits=False, init_weights=state is None, transform_input=state is not None and shape[0] == 3)
    if name.startswith("vit_") and shape[1:] != (224, 224):
        if shape[1] != shape[2]:
            raise ConfigError(f"torchvision/{name} takes square images, got input_shape={shape}")
        kwargs["image_size"] = shape[1]
    model = models.get_model(name, weights=None, **kwargs)
    num_features, head = _strip_head(model, name)
    if state is not None:
        dropped = (f"{head}.", "aux1.", "aux2.", "AuxLogits.")  # the removed classifier, the auxiliary heads
        state = {k: v for k, v in state.items() if not k.startswith(dropped)}
        if "image_size" in kwargs and "encoder.pos_embedding" in state:
            from torchvision.models.vision_transformer import interpolate_embeddings

            state = interpolate_embeddings(kwargs["image_size"], model.patch_size, state)
        load_checked(model, state, source, f"torchvision/{name}")
    if shape[0] != 3:
        _adapt_first_conv(model, shape[0])
    preprocessing = tv_preprocessing(name, shape, pretrained)
    return PretrainedBackbone(model, num_features, _tv_groups(model, shape[0]), preprocessing)


def _tv_groups(model: nn.Module, channels: int) -> dict[str, list[str]]:
    if hasattr(model, "conv_proj") and hasattr(model, "encoder"):  # ViT
        blocks = [f"encoder.layers.{n}" for n, _ in model.encoder.layers.named_children()]  # encoder_layer_0, ...
        layers = {f"layer{i}": [path] for i, path in enumerate(blocks)}
        return {"embeddings": ["conv_proj", "class_token", "encoder.pos_embedding"], **layers, "top": ["encoder.ln"]}
    if all(hasattr(model, a) for a in ("conv1", "bn1", "layer1")):  # ResNet, ResNeXt, Wide ResNet
        return {"stem": ["conv1", "bn1"], **{f"layer{i}": [f"layer{i}"] for i in range(1, 5)}}
    groups: dict[str, list[str]] = {}
    for name, paths in children_groups(model).items():
        trunk = model.get_submodule(name) if name in TRUNKS else None
        if isinstance(trunk, (nn.Sequential, nn.ModuleList)) and len(trunk) > 1:
            for i, stage in enumerate(_stages(model, name, channels)):
                groups[f"stage{i}"] = stage
        else:
            groups[name] = paths
    return groups


def _stages(model: nn.Module, trunk: str, channels: int) -> list[list[str]]:
    """A trunk's children cut into stages: a child whose output holds fewer values than its input (a strided
    convolution, a pooling, a patch merging) starts a new stage. One stage per child if the probe fails."""
    children = [(n, c) for n, c in model.get_submodule(trunk).named_children()]
    shrinks: dict[str, bool] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple, out: Any) -> None:  # returns None: the output stays
            shrinks.setdefault(name, _numel(out) < _numel(inputs[0]))

        return hook

    hooks = [child.register_forward_hook(record(n)) for n, child in children]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, PROBE_SIZE, PROBE_SIZE))
    except Exception:  # a model that needs larger images (MaxViT): every child is a stage already
        shrinks = {n: True for n, _ in children}
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    stages: list[list[tuple[str, nn.Module]]] = []
    for name, child in children:
        if not stages or shrinks.get(name, False):
            stages.append([])
        stages[-1].append((name, child))
    kept = [[f"{trunk}.{n}" for n, c in stage if any(True for _ in c.parameters())] for stage in stages]
    return [paths for paths in kept if paths]  # a stage of only pooling has nothing to train


def _numel(x: Any) -> int:
    while isinstance(x, (tuple, list)):
        x = x[0]
    return x[0].numel() if isinstance(x, torch.Tensor) else 0


def _tv_param_count(name: str) -> int:
    from torchvision import models

    def build() -> nn.Module:
        kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
        model = models.get_model(name, weights=None, **kwargs)
        _strip_head(model, name)
        return model

    return count_without_weights(build)


def tv_entry(name: str) -> BackboneEntry:
    weights = _tv_weights(name, None)
    crop = weights.transforms().crop_size[0]
    return BackboneEntry(
        f"torchvision/{name}",
        functools.partial(torchvision_backbone, name),
        "torchvision",
        "image",
        f"torchvision {name}, {weights.name} weights, {crop}x{crop} input",
        functools.partial(_tv_param_count, name),
    )
