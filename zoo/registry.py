"""The backbone registry: every model family registers its variants here by name.

A backbone class registers itself with :func:`register_backbone` (``cnn``, ``mlp``); the variants of a family
are declared over its class with :func:`register_variant`, each with its architecture fixed and its own defaults
(``resnet18``, ``lstm``, ``vit_micro``). The CLI, `zoo models` and the tests all find backbones through
:func:`create_backbone` and :func:`list_backbones`.
A name with a source prefix (``timm/``, ``torchvision/``, ``hf/``, ``zoo/``) is served by an adapter in
:mod:`zoo.backbones.pretrained` instead: other libraries' models, and backbones of our own checkpoints.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from torch import nn

from zoo.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class BackboneEntry:
    """What the registry knows about one backbone before building it."""

    name: str
    factory: Callable[..., nn.Module]
    family: str
    input_kind: str  # "image", "vector", "sequence", "text"
    description: str
    count_params: Optional[Callable[[], int]] = None  # adapters count without loading weights

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The keyword arguments the factory accepts, by name."""
        return dict(inspect.signature(self.factory).parameters)

    def num_params(self) -> int:
        """Parameters at the default arguments, head excluded; adapters count without building on the CPU."""
        if self.count_params is not None:
            return self.count_params()
        return sum(p.numel() for p in self.factory().parameters())


_REGISTRY: dict[str, BackboneEntry] = {}
PRETRAINED_SOURCES = ("timm", "torchvision", "hf", "zoo")  # name prefixes served by zoo.backbones.pretrained


def split_source(name: str) -> tuple[Optional[str], str]:
    """``("timm", "resnet50")`` for ``"timm/resnet50"``; ``(None, name)`` for a registered name."""
    prefix, sep, rest = name.partition("/")
    return (prefix, rest) if sep and prefix in PRETRAINED_SOURCES else (None, name)


def is_class_path(name: str) -> bool:
    """Whether a backbone name is a user's class path (``mypkg.nets.MyNet``, see :mod:`zoo.backbones.user`):
    registered names have no dot, prefixed ones have a ``/``."""
    return "." in name and "/" not in name


def register_backbone(
    name: str | None = None, *, family: str, input_kind: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a backbone factory under ``name`` (the function's name by default).

    Raises:
        ValueError: if the name is taken: two families must never shadow each other silently.
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(f"backbone {key!r} is already registered by {_REGISTRY[key].factory.__module__}")
        doc = inspect.getdoc(factory) or ""
        _REGISTRY[key] = BackboneEntry(key, factory, family, input_kind, doc.splitlines()[0] if doc else "")
        return factory

    return decorator


def register_variant(
    name: str,
    builder: Callable[..., nn.Module],
    *,
    family: str,
    input_kind: str,
    description: str,
    fixed: Optional[dict[str, Any]] = None,
    **defaults: Any,
) -> None:
    """Register ``name`` as the family's ``builder`` with the arguments in ``fixed`` set (the variant's
    architecture: not arguments of the variant) and other ``defaults``; it takes every other argument of the
    builder, by keyword, under the same name and type.

    Raises:
        ValueError: if the name is taken, or ``fixed`` or ``defaults`` name an argument the builder does not take.
    """
    fixed = fixed or {}
    signature = inspect.signature(builder)
    unknown = (set(fixed) | set(defaults)) - set(signature.parameters)
    if unknown:
        raise ValueError(f"backbone variant {name!r}: {builder.__qualname__} takes no argument(s) {sorted(unknown)}")

    def factory(**kwargs: Any) -> nn.Module:
        return builder(**fixed, **{**defaults, **kwargs})  # a fixed argument given again is a TypeError

    # What the registry and `zoo models` read; a function's type declares no __signature__.
    factory.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY, default=defaults.get(p.name, p.default))
            for p in signature.parameters.values()
            if p.name not in fixed
        ],
        return_annotation=builder,
    )
    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = builder.__module__
    factory.__doc__ = description
    register_backbone(name, family=family, input_kind=input_kind)(factory)


def _ensure_builtins_registered() -> None:
    import zoo.backbones  # noqa: F401  (registers the built-in families on import)


def get_backbone_entry(name: str) -> BackboneEntry:
    """Look a backbone up by name; an unknown name raises with the closest registered names.

    A prefixed name (``timm/convnext_tiny``) gets its adapter's entry, checked against the library's names.
    """
    _ensure_builtins_registered()
    if split_source(name)[0] is not None:
        from zoo.backbones.pretrained import adapter_entry

        return adapter_entry(name)
    if is_class_path(name) and name not in _REGISTRY:
        from zoo.backbones.user import user_entry

        return user_entry(name)
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown backbone {name!r}.{did_you_mean(name, _REGISTRY)} Run `zoo models` to list the "
            f"{len(_REGISTRY)} registered backbones."
        )
    return _REGISTRY[name]


def check_backbone_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Fail early, naming the key, when ``kwargs`` holds an argument the backbone does not take."""
    params = get_backbone_entry(name).parameters()
    if "pretrained" in kwargs:
        raise ConfigError(f"backbone {name!r}: set model.pretrained, not model.backbone_kwargs.pretrained")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    params.pop("pretrained", None)  # given by model.pretrained
    for key in kwargs:
        if key not in params:
            raise ConfigError(
                f"backbone {name!r} does not take the argument {key!r} (model.backbone_kwargs)."
                f"{did_you_mean(key, params)} "
                f"It takes: {', '.join(p for p in params if p != 'input_shape')}."
            )


def create_backbone(name: str, *, pretrained: Union[bool, str, None] = False, **kwargs: Any) -> nn.Module:
    """Build a registered backbone, or a pretrained one by source prefix.

    Args:
        name: a registered name such as ``"cnn"`` (see :func:`list_backbones`), or ``timm/<model>``,
            ``torchvision/<model>``, ``hf/<hub id or directory>``, ``zoo/<checkpoint path>``, or the class path
            of your own network (``mypkg.nets.MyNet``, :mod:`zoo.backbones.user`).
        pretrained: load pretrained weights. For a prefixed name: True, or None, loads them by name (from
            the library's cache, downloading only when the network answers), a str is a local weights file
            (a directory for ``hf/``), False is random init. A registered name: None means False, and only
            backbones whose factory takes ``pretrained`` have weights.
        **kwargs: the factory's arguments, e.g. ``input_shape`` and family-specific sizes.
    """
    entry = get_backbone_entry(name)
    check_backbone_kwargs(name, kwargs)
    if split_source(name)[0] is not None:
        return entry.factory(pretrained=pretrained, **kwargs)
    if pretrained:
        if "pretrained" not in entry.parameters():
            raise ConfigError(f"backbone {name!r} has no pretrained weights; set model.pretrained to false.")
        kwargs["pretrained"] = pretrained
    return entry.factory(**kwargs)


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching a shell-style pattern (``"res*"``), sorted.

    A prefixed pattern lists that source's names instead, without building anything: ``"timm/*convnext*"``
    (timm's pretrained names, with their weight tags), ``"torchvision/*"``, ``"hf/*"`` (models in the
    HuggingFace cache or shipped by an installed package), ``"zoo/runs/**/*.ckpt"`` (checkpoint files).
    """
    if split_source(pattern)[0] is not None:
        from zoo.backbones.pretrained import list_pretrained

        return list_pretrained(pattern)
    _ensure_builtins_registered()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))
