"""Pretrained image models of timm, ``timm/<model[.tag]>``, as zoo backbones, and what every image model shares.

The classifier is dropped and pooled features ``(B, num_features)`` returned. Layer groups: timm's own
``group_matcher(coarse=True)``. torchvision's models are in :mod:`zoo.backbones.torchvision_models`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from zoo.backbones import pretrained as adapters  # adapters.host_reachable etc. are looked up at each call
from zoo.backbones.pretrained import (
    HOW_TO_PASS,
    Pretrained,
    PretrainedBackbone,
    children_groups,
    close_matches,
    count_without_weights,
    cover,
    group_label,
    hf_cached,
    hub_cache_dir,
    mismatch_report,
    read_weights,
)
from zoo.compat import timm_group_parameters
from zoo.errors import ConfigError
from zoo.registry import BackboneEntry


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


def image_shape(source: str, input_shape: Optional[tuple[int, ...]], default: tuple[int, ...]) -> tuple[int, ...]:
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
    shape = image_shape(f"timm/{name}", input_shape, cfg.input_size if cfg else (3, 224, 224))
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
