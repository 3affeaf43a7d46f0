"""Pretrained image models: ``timm/<model[.tag]>`` and ``torchvision/<model>`` as zoo backbones.

Both drop the classifier and return pooled features ``(B, num_features)``. Layer groups: timm's own
``group_matcher(coarse=True)``; torchvision's by stage (a ResNet's stem and layers, a ViT's embeddings,
encoder layers and final norm, a ``features`` trunk cut where the feature map shrinks).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import os
from collections.abc import Mapping
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
    cover,
    group_label,
    hf_cached,
    hub_cache_dir,
    load_checked,
    mismatch_report,
    read_weights,
)
from zoo.compat import timm_group_parameters
from zoo.errors import ConfigError
from zoo.registry import BackboneEntry

TRUNKS = ("features", "trunk_output", "layers", "blocks")  # torchvision's Sequentials of stages or blocks
PROBE_SIZE = 64  # the dummy image that finds where a trunk's feature map shrinks


def image_preprocessing(mean: Any, std: Any, size: Any, interpolation: str, crop_pct: float, channels: int) -> dict:
    """The preprocessing dict of an image model; other channel counts get the channel average repeated."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if channels != len(mean):
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    return {
        "mean": mean,
        "std": std,
        "input_size": (channels, *map(int, size)),
        "interpolation": interpolation,
        "crop_pct": float(crop_pct),
    }


def _image_shape(source: str, input_shape: Optional[tuple[int, ...]], default: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(input_shape) if input_shape else tuple(default)
    if len(shape) != 3:
        raise ConfigError(f"{source} takes images of shape (C, H, W), got input_shape={shape}")
    return shape


# --- timm ----------------------------------------------------------------------------------------------
def timm_cfg(name: str) -> Any:
    """timm's pretrained config for ``arch[.tag]``; an unknown model or tag raises with close matches."""
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise close_matches(arch, timm.list_models(), "timm model", f"`zoo models 'timm/*{arch[:5]}*'` lists them.")
    try:
        return timm.get_pretrained_cfg(name)
    except RuntimeError:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise close_matches(tag, tags, f"weights tag of timm/{arch}", f"It has: {', '.join(tags) or 'none'}.") from None


def timm_preprocessing(name: str, input_shape: Optional[tuple[int, ...]] = None, **_: Any) -> dict[str, Any]:
    from timm.data import resolve_data_config

    cfg = timm_cfg(name)
    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg else {})
    channels = input_shape[0] if input_shape else data["input_size"][0]
    return image_preprocessing(
        data["mean"], data["std"], data["input_size"][1:], data["interpolation"], data["crop_pct"], channels
    )


def _timm_weights(name: str, cfg: Any, pretrained: Pretrained) -> tuple[Optional[str], bool]:
    """``(local file, download)``: a file to load, or True when timm may download, or neither (random)."""
    if pretrained is False:
        return None, False
    if isinstance(pretrained, (str, os.PathLike)):
        return os.fspath(pretrained), False
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        import timm

        tagged = timm.list_pretrained(f"{name.partition('.')[0]}*")[:5]
        raise ConfigError(
            f"timm/{name} has no pretrained weights (timm has some for {tagged or 'none'}); "
            "set model.pretrained: false for random init"
        )
    if cfg.hf_hub_id:
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        cached = hf_cached(cfg.hf_hub_id, files)
        if cached:
            return cached, False
        if adapters.hf_hub_reachable():
            return None, True
        where = f"{hub_cache_dir(cfg.hf_hub_id)} (from https://huggingface.co/{cfg.hf_hub_id})"
    else:
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(cfg.url).path))
        if os.path.isfile(cached):
            return cached, False
        if adapters.host_reachable(cfg.url):
            return None, True
        where = f"{cached} (from {cfg.url})"
    raise ConfigError(
        f"timm/{name}: the pretrained weights are not on this machine and the network cannot be "
        f"reached. They are looked for in {where}. Copy them there, or pass the file: {HOW_TO_PASS}"
    )


def _classifier_rows(state: Mapping[str, torch.Tensor], cfg: Any) -> int:
    """How many classes the file's classifier has (0 when it has none), so timm loads it strictly."""
    names = cfg.classifier if cfg is not None and cfg.classifier else ()
    for classifier in (names,) if isinstance(names, str) else names:
        if f"{classifier}.weight" in state:
            return int(state[f"{classifier}.weight"].shape[0])
    return 0


class TimmBackbone(PretrainedBackbone):
    """A timm model with ``num_classes=0``: pooled pre-logits features, groups from its ``group_matcher``."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)  # (B, num_features)


def timm_backbone(
    name: str,
    input_shape: Optional[tuple[int, int, int]] = None,
    pretrained: Pretrained = None,
    model_kwargs: Optional[dict[str, Any]] = None,
) -> TimmBackbone:
    """A timm model (``timm/resnet50.a1_in1k``, ``timm/convnext_tiny``) as a backbone.

    Args:
        name: timm's model name, with an optional ``.tag`` choosing the weights.
        input_shape: ``(C, H, W)``; ``C`` other than 3 adapts the first convolution, and a fixed-size model
            (ViT) is built for ``H, W`` with its position embeddings resampled.
        pretrained: True/None by name (timm's cache, else download), a local file, or False.
        model_kwargs: more ``timm.create_model`` arguments, e.g. ``drop_path_rate``.
    """
    import timm

    cfg = timm_cfg(name)
    shape = _image_shape(f"timm/{name}", input_shape, cfg.input_size if cfg else (3, 224, 224))
    kwargs = dict(model_kwargs or {})
    if cfg is not None and cfg.fixed_input_size and shape[1:] != tuple(cfg.input_size[1:]):
        kwargs.setdefault("img_size", shape[1:])
    file, download = _timm_weights(name, cfg, pretrained)
    build = functools.partial(timm.create_model, name, in_chans=shape[0], **kwargs)
    try:
        if file is not None:
            state = read_weights(file)
            rows = _classifier_rows(state, cfg)  # the file's own class count keeps timm's load strict
            overlay = {"state_dict": state, "num_classes": rows, "source": None}
            try:
                model = build(pretrained=True, num_classes=rows, pretrained_cfg_overlay=overlay)
            except RuntimeError as err:
                report = mismatch_report(build(pretrained=False, num_classes=rows), state) or str(err)[:2000]
                raise ConfigError(
                    f"the weights in {file} do not fit timm/{name}:\n{report}\n"
                    f"Pass weights of the same architecture ({HOW_TO_PASS})"
                ) from None
            model.reset_classifier(0)
        else:
            model = build(pretrained=download, num_classes=0)
    except TypeError as err:  # a model_kwargs key the model does not take
        raise ConfigError(f"timm/{name}: {err} (model.backbone_kwargs.model_kwargs)") from None
    features = getattr(model, "head_hidden_size", None) or model.num_features
    return TimmBackbone(model, int(features), _timm_groups(model), timm_preprocessing(name, shape))


def _timm_groups(model: nn.Module) -> dict[str, list[str]]:
    try:
        by_ordinal = timm_group_parameters(model, model.group_matcher(coarse=True))  # {0: [param names], 1: ...}
    except (AttributeError, NotImplementedError):
        return children_groups(model)
    groups: dict[str, list[str]] = {}
    for i, names in enumerate(by_ordinal.values()):
        paths = cover(model, set(names))
        label = "stem" if i == 0 else group_label(paths)
        groups[label if label not in groups else f"{label}_{i}"] = paths
    return groups


@functools.lru_cache(maxsize=None)
def _timm_param_count(arch: str) -> int:
    import timm

    return count_without_weights(lambda: timm.create_model(arch, num_classes=0))


def timm_entry(name: str) -> BackboneEntry:
    cfg = timm_cfg(name)
    arch = name.partition(".")[0]
    size = "x".join(map(str, cfg.input_size[1:])) if cfg else "224x224"
    weights = f"{cfg.tag or 'default'} weights" if cfg and (cfg.hf_hub_id or cfg.url) else "no pretrained weights"
    return BackboneEntry(
        f"timm/{name}",
        functools.partial(timm_backbone, name),
        "timm",
        "image",
        f"timm {arch}, {weights}, {size} input",
        functools.partial(_timm_param_count, arch),
    )


def timm_names(pattern: str) -> list[str]:
    import timm

    return [f"timm/{n}" for n in timm.list_models(pattern, pretrained=True)]


# --- torchvision -----------------------------------------------------------------------------------------
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

    shape = _image_shape(f"torchvision/{name}", input_shape, (3, 224, 224))
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
