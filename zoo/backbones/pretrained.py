"""Pretrained models from other libraries behind the zoo's backbone interface, chosen by a name prefix.

``timm/<model>``, ``torchvision/<model>``, ``hf/<hub id or directory>`` (in :mod:`zoo.backbones.hf`) and
``zoo/<checkpoint of our own zoo fit>``. Each adapter has ``num_features``, ``forward_features``,
``layer_groups()`` (stem to top, every parameter once) and ``preprocessing`` (what the data should look
like), and :func:`preprocessing_of` gives that dict without building the model.

Weights (``pretrained``): ``True`` (or ``None``) loads them by name from the library's cache, downloading
only when the host answers; a ``str`` is a local file (a directory for ``hf/``); ``False`` is random init.
timm, torchvision and transformers are imported inside the functions, so ``import zoo`` stays quick.
"""

from __future__ import annotations

import functools
import glob
import importlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from zoo.backbones.base import Backbone
from zoo.compat import set_parameter
from zoo.errors import ConfigError, did_you_mean
from zoo.hub import hf_hub_reachable, host_reachable  # noqa: F401  (the adapters call them as pretrained.X)
from zoo.registry import BackboneEntry, split_source

logger = logging.getLogger(__name__)

Pretrained = Union[bool, str, None]
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
HOW_TO_PASS = "model.pretrained: /path/to/weights.pth (or .safetensors); model.pretrained: false trains from scratch"


# --- layer groups ------------------------------------------------------------------------------------
class LayerGroup(nn.Module):
    """Real submodules, and loose parameters (a ViT's cls token), that freeze and train together.

    It holds the same module and ``Parameter`` objects as the model, so ``group.parameters()`` and
    ``group.modules()`` (to find batch norms) reach the model's own.
    """

    def __init__(self, members: list[nn.Module], params: list[nn.Parameter]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.loose = nn.ParameterList(params)


def cover(model: nn.Module, names: set[str]) -> list[str]:
    """The fewest submodule paths and parameter names that hold exactly the parameters named ``names``."""

    def visit(prefix: str, module: nn.Module) -> list[str]:
        own = [prefix + n for n, _ in module.named_parameters()]
        if own and all(n in names for n in own):
            return [prefix.rstrip(".")]
        found = [prefix + n for n, _ in module.named_parameters(recurse=False) if prefix + n in names]
        for child_name, child in module.named_children():
            found += visit(f"{prefix}{child_name}.", child)
        return found

    return visit("", model)


def build_group(model: nn.Module, paths: list[str]) -> nn.Module:
    """One layer group: the submodule itself when it is one, else a :class:`LayerGroup` of its parts."""
    members, params = [], []
    for path in paths:
        try:
            members.append(model.get_submodule(path))
        except AttributeError:  # a parameter's name (cls_token), not a module's path
            params.append(model.get_parameter(path))
    return members[0] if len(members) == 1 and not params else LayerGroup(members, params)


def group_label(paths: list[str]) -> str:
    """A group's name from its first module path: ``stages.0`` -> ``stages0``, ``head.norm`` -> ``head_norm``."""
    return re.sub(r"\.(\d)", r"\1", paths[0]).replace(".", "_") or "all"


def children_groups(model: nn.Module) -> dict[str, list[str]]:
    """The fallback: one group per top-level child holding parameters, in registration order."""
    groups = {name: [name] for name, child in model.named_children() if any(True for _ in child.parameters())}
    loose = [name for name, _ in model.named_parameters(recurse=False)]
    if loose:  # parameters on the model itself go with the first group (they sit at the input end)
        first = next(iter(groups), "stem")
        groups[first] = loose + groups.get(first, [])
    return groups


class PretrainedBackbone(Backbone):
    """A library's model (``self.model``) as a zoo backbone; ``groups`` maps group names to module paths.

    Args:
        model: the library's network, its classifier already removed.
        num_features: width of ``forward_features``' output.
        groups: group name -> submodule paths or parameter names inside ``model``, stem to top.
        preprocessing: what the input should look like (see :func:`preprocessing_of`).
    """

    def __init__(
        self, model: nn.Module, num_features: int, groups: dict[str, list[str]], preprocessing: dict[str, Any]
    ) -> None:
        super().__init__()
        self.model = model
        self.num_features = num_features
        self.group_paths = groups
        self.preprocessing = preprocessing
        _check_groups(model, self.layer_groups())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, C, H, W) -> (B, num_features): the classifier is an Identity

    def layer_groups(self) -> dict[str, nn.Module]:
        return {name: build_group(self.model, paths) for name, paths in self.group_paths.items()}


def _check_groups(model: nn.Module, groups: dict[str, nn.Module]) -> None:
    seen: dict[int, str] = {}
    for name, group in groups.items():
        for p in group.parameters():
            if id(p) in seen:
                raise RuntimeError(f"a parameter is in both layer groups {seen[id(p)]!r} and {name!r} (an adapter bug)")
            seen[id(p)] = name
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    if missing:
        raise RuntimeError(f"parameters in no layer group (an adapter bug): {missing[:5]}")


# --- network and weights files -----------------------------------------------------------------------
def read_weights(path: str, label: str = "model.pretrained") -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (read as data: :func:`load_data`)."""
    from zoo.checkpoints import load_data

    state = load_data(
        path,
        f"{label}={path!r}",
        unreadable="not a readable weights file: expected torch.save(model.state_dict(), path) or a .safetensors file",
    )
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):  # training scripts often wrap the weights
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{label}={path!r}: holds no state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def mismatch_report(model: nn.Module, state: Mapping[str, torch.Tensor], limit: int = 8) -> str:
    """What keeps ``state`` from loading into ``model`` strictly (empty when it fits)."""
    own = model.state_dict()
    lines = [
        f"  {k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ][:limit]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    for what, keys in (("missing from the file", missing), ("unexpected in the file", unexpected)):
        if keys:
            more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
            lines.append(f"  {what}: {', '.join(keys[:limit])}{more}")
    if lines and any(k.startswith("backbone.") for k in unexpected):
        lines.append("  (it looks like a zoo checkpoint: use model.backbone: zoo/<path to the .ckpt>)")
    return "\n".join(lines)


def load_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, target: str) -> None:
    """Load ``state`` strictly; a file that does not fit raises naming every key and both shapes."""
    report = mismatch_report(model, state)
    if report:
        raise ConfigError(
            f"the weights in {source} do not fit {target}:\n{report}\nPass weights of the same "
            f"architecture ({HOW_TO_PASS})"
        )
    model.load_state_dict(state, strict=False)  # strict but for num_batches_tracked, which old files lack


def hub_cache_dir(repo_id: str) -> str:
    from huggingface_hub import constants

    return os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))


def hf_cached(repo_id: str, filenames: list[str]) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


def count_without_weights(build: Callable[[], nn.Module]) -> int:
    """Parameters of ``build()``, built on the meta device: no memory, and initialisation is a no-op."""
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # a model that computes with tensors while building (torchvision's RegNet)
        with _parameters_to_meta():
            model = build()
    return sum(p.numel() for p in model.parameters())


@contextmanager
def _parameters_to_meta() -> Iterator[None]:
    """Each parameter moves to the meta device as it is registered (as accelerate's init_empty_weights),
    so only one parameter at a time is ever in memory and the model's initialisation costs nothing."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        register(module, name, param)
        if param is not None:
            set_parameter(module, name, nn.Parameter(param.to("meta"), requires_grad=param.requires_grad))

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def close_matches(name: str, known: list[str], what: str, listing: str) -> ConfigError:
    return ConfigError(f"unknown {what} {name!r}.{did_you_mean(name, known)} {listing}")


# --- dispatch ------------------------------------------------------------------------------------------
# Each source's functions, imported when first used: entry(name), names(pattern), preprocessing(name, **kw).
_ADAPTERS = {
    "timm": ("zoo.backbones.vision", "timm_entry", "timm_names", "timm_preprocessing"),
    "torchvision": ("zoo.backbones.torchvision_models", "tv_entry", "tv_names_matching", "tv_preprocessing"),
    "hf": ("zoo.backbones.hf", "hf_entry", "hf_names", "hf_preprocessing"),
    "zoo": ("zoo.backbones.pretrained", "zoo_entry", "zoo_names", "zoo_preprocessing"),
}


def _adapter(source: str, role: int) -> Callable[..., Any]:
    module, *functions = _ADAPTERS[source]
    return getattr(importlib.import_module(module), functions[role])


def adapter_entry(name: str) -> BackboneEntry:
    """The registry's entry for a prefixed name (``timm/resnet50``); an unknown model raises with close matches."""
    source, rest = split_source(name)
    if source is None:
        raise ConfigError(f"{name!r} has no pretrained source prefix ({', '.join(f'{s}/' for s in _ADAPTERS)})")
    return _adapter(source, 0)(rest)


def list_pretrained(pattern: str) -> list[str]:
    """Names a source offers for ``pattern`` (``timm/*convnext*``), sorted, without building or loading anything."""
    source, rest = split_source(pattern)
    return sorted(_adapter(source, 1)(rest or "*")) if source else []


def preprocessing_of(name: str, **backbone_kwargs: Any) -> dict[str, Any]:
    """What a backbone's inputs should look like, without building it or loading weights.

    Images (timm, torchvision): ``mean``, ``std``, ``input_size`` ``(C, H, W)``, ``interpolation`` and
    ``crop_pct`` of its pretrained weights. Text (hf): ``tokenizer``, the directory or hub id to load the
    tokenizer from. A zoo checkpoint gives its original backbone's; built-in backbones give ``{}``.
    ``backbone_kwargs`` are the backbone's (``input_shape`` sets the channel count; ``pretrained`` picks
    torchvision's weights by name); the others are ignored. A built adapter's ``preprocessing`` is this
    dict for the arguments it was built with.
    """
    source, rest = split_source(name)
    return _adapter(source, 2)(rest, **backbone_kwargs) if source else {}


# --- zoo checkpoints -------------------------------------------------------------------------------------
def read_zoo_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A ``zoo fit`` checkpoint's hyper-parameters and its backbone's weights (``backbone.`` stripped)."""
    if not os.path.isfile(path):
        raise ConfigError(f"zoo/{path}: no such checkpoint file")
    stat = os.stat(path)
    hparams, state = _read_zoo_checkpoint(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    _check_no_cycle(path, hparams)
    return hparams, state


def _check_no_cycle(path: str, hparams: dict[str, Any]) -> None:
    """Refuse a chain of ``zoo/`` backbones that comes back to a checkpoint already in it (it would never end)."""
    from zoo.checkpoints import read_checkpoint

    chain = [os.path.abspath(path)]
    source, rest = split_source(str(hparams["backbone"]))
    while source == "zoo" and os.path.isfile(rest):
        if os.path.abspath(rest) in chain:
            raise ConfigError(
                f"zoo/{path}: its backbone comes back to itself ({' -> '.join([*chain, rest])}); "
                "not a checkpoint that `zoo fit` wrote"
            )
        chain.append(os.path.abspath(rest))
        source, rest = split_source(
            str((read_checkpoint(rest, mmap=True).get("hyper_parameters") or {}).get("backbone"))
        )


@functools.lru_cache(maxsize=1)  # the registry entry, the backbone and its preprocessing read the same file
def _read_zoo_checkpoint(path: str, mtime_ns: int, size: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from zoo.checkpoints import read_checkpoint

    ckpt = read_checkpoint(path)  # data only: every class it names trusted, no remote code
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or "backbone" not in hparams:
        raise ConfigError(
            f"checkpoint {path}: not a zoo checkpoint (no model hyper_parameters with a backbone); use "
            "one that `zoo fit` wrote, runs/<name>/version_<n>/checkpoints/*.ckpt"
        )
    state = {k[len("backbone.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    return hparams, state


def _original(hparams: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The checkpoint's backbone name and every argument it was built with (data facts included)."""
    kwargs: dict[str, Any] = {"input_shape": tuple(hparams["input_shape"])}
    if hparams.get("vocab_size") is not None:
        kwargs["vocab_size"] = hparams["vocab_size"]
    return hparams["backbone"], {**kwargs, **(hparams.get("backbone_kwargs") or {})}


def zoo_backbone(
    path: str,
    input_shape: Optional[tuple[int, ...]] = None,
    vocab_size: Optional[int] = None,
    pretrained: Pretrained = None,
) -> nn.Module:
    """The backbone of a ``zoo fit`` checkpoint, rebuilt as it was and with its trained weights.

    The rebuilt backbone is the original's own class, so it keeps its layer groups. ``input_shape`` and
    ``vocab_size`` (linked from the new data) are only compared with the checkpoint's. ``pretrained``
    True or None loads the checkpoint's weights; False keeps the rebuilt architecture's random init (a
    from-scratch baseline of the very same network).
    """
    from zoo.registry import create_backbone

    if isinstance(pretrained, str):
        raise ConfigError(f"zoo/{path} takes its weights from the checkpoint; set model.pretrained to true or false")
    hparams, state = read_zoo_checkpoint(path)
    original, kwargs = _original(hparams)
    for key, value in (("input_shape", input_shape), ("vocab_size", vocab_size)):
        if value is not None and key in kwargs and _as_tuple(value) != _as_tuple(kwargs[key]):
            logger.warning("zoo/%s was trained with %s=%s; the data has %s", path, key, kwargs[key], value)
    backbone = create_backbone(original, pretrained=False, **kwargs)
    if pretrained is not False:
        load_checked(backbone, state, path, f"its backbone {original!r}")
        head = f"{hparams['num_classes']} classes" if hparams.get("num_classes") else "its head"
        logger.info(
            "zoo/%s: loaded its %s backbone (%s parameters); the checkpoint's head (%s) is not loaded: "
            "the task builds a new head, initialised for its own num_classes",
            path,
            original,
            f"{sum(p.numel() for p in backbone.parameters()):,}",
            head,
        )
    backbone.preprocessing = preprocessing_of(original, **kwargs)
    return backbone


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def zoo_entry(path: str) -> BackboneEntry:
    from zoo.registry import create_backbone, get_backbone_entry

    original, kwargs = _original(read_zoo_checkpoint(path)[0])
    entry = get_backbone_entry(original)
    return BackboneEntry(
        f"zoo/{path}",
        functools.partial(zoo_backbone, path),
        entry.family,
        entry.input_kind,
        f"{original} trained by zoo fit, from {path}",
        lambda: count_without_weights(lambda: create_backbone(original, **kwargs)),
    )


def zoo_names(pattern: str) -> list[str]:
    """Checkpoint files matching a glob: ``zoo models 'zoo/runs/**/*.ckpt'``."""
    return [f"zoo/{p}" for p in glob.glob(pattern, recursive=True) if p.endswith(".ckpt")]


def zoo_preprocessing(path: str, **_: Any) -> dict[str, Any]:
    original, kwargs = _original(read_zoo_checkpoint(path)[0])
    return preprocessing_of(original, **kwargs)
