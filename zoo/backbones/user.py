"""Your own network as a backbone, named by its class path: ``model.backbone: mypkg.nets.MyNet``.

A backbone name with a dot (and no ``/``) is a class path: the module is imported, the class built with
``model.backbone_kwargs`` (plus ``input_shape`` when its constructor takes it), and the result checked against
the backbone contract before anything trains:

- ``num_features``: an int, the width of the features;
- ``forward_features(x)``: ``(B, *input_shape) -> (B, num_features)``;
- ``layer_groups()``: a dict of name -> ``nn.Module`` from stem to top holding every parameter exactly once
  (fine-tuning freezes, unfreezes and scales learning rates by these groups).

A plain ``nn.Module`` with none of the three is accepted too: its ``forward(x)`` must return ``(B, F)``, ``F``
is found by one forward pass over a zero batch, and the whole module is one layer group (``all``: it freezes
and trains as a whole). A class with some of the three but not all is refused, naming what is missing.

The network is held as ``self.model`` of a :class:`UserBackbone`, so its weights are ``backbone.model.*`` in
a checkpoint. A checkpoint never imports a class path by itself (:mod:`zoo.checkpoints`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from torch import nn

from zoo.backbones.base import Backbone
from zoo.errors import ConfigError, did_you_mean
from zoo.registry import BackboneEntry

CONTRACT = ("num_features", "forward_features", "layer_groups")
HOW_TO_ADD = {
    "num_features": "set `self.num_features = <width of the features>` in __init__",
    "forward_features": "add `def forward_features(self, x): ...` returning (batch, num_features)",
    "layer_groups": "add `def layer_groups(self): return {'stem': self.stem, 'body': self.body}` (a dict of "
    "name -> module from stem to top, every parameter in exactly one group)",
}
DATA_FACTS = ("input_shape", "vocab_size", "categories")  # linked from the data; passed when the class takes them


def import_class_path(path: str) -> Callable[..., Any]:
    """The class (or factory function) ``path`` names; a module that is not found and an attribute the module
    lacks are told apart, with the close names."""
    module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"backbone {path!r} is not a class path such as mypkg.nets.MyNet")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(f"{err.name}.")):
            raise ConfigError(
                f"backbone {path!r}: no module named {err.name!r}. A backbone name with a dot is a class path "
                "(module.Class): check the spelling, and that the module is installed or its folder is on "
                "PYTHONPATH (e.g. PYTHONPATH=. zoo fit ...); `zoo models` lists the registered names"
            ) from None
        raise ConfigError(f"backbone {path!r}: importing {module_name} failed: {err}") from None
    found = getattr(module, attr, None)
    if found is None:
        classes = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)]
        hint = did_you_mean(path, [f"{module_name}.{c}" for c in classes], cutoff=0.5)
        raise ConfigError(f"backbone {path!r}: module {module_name!r} has no attribute {attr!r}.{hint}")
    if not callable(found):
        raise ConfigError(f"backbone {path!r} is a {type(found).__name__}, not an nn.Module class")
    return found


def _signature(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return {}


def user_entry(path: str) -> BackboneEntry:
    """The registry's entry for a class path: its factory builds and checks a :class:`UserBackbone` and takes
    the class's own arguments (so a misspelt ``backbone_kwargs`` key is named), plus ``input_shape``."""
    factory = import_class_path(path)
    params = _signature(factory)

    def build(**kwargs: Any) -> nn.Module:
        return user_backbone(path, factory, **kwargs)

    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    own = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=p.default)
        for n, p in params.items()
        if p.kind in kinds
    ]
    if "input_shape" not in params:
        own.append(inspect.Parameter("input_shape", inspect.Parameter.KEYWORD_ONLY, default=None))
    own += [p for p in params.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    build.__signature__ = inspect.Signature(own)  # type: ignore[attr-defined]  # for inspect; undeclared on functions
    doc = (inspect.getdoc(factory) or "").splitlines()
    return BackboneEntry(path, build, "user", "any", doc[0] if doc else f"your own network {path}")


def user_backbone(path: str, factory: Callable[..., Any], input_shape: Any = None, **kwargs: Any) -> UserBackbone:
    """Build ``factory(**kwargs)`` (``input_shape`` too when it takes it) and check it against the contract."""
    params = _signature(factory)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if input_shape is not None and ("input_shape" in params or takes_any):
        kwargs["input_shape"] = input_shape
    try:
        model = factory(**kwargs)
    except TypeError as err:
        raise ConfigError(
            f"backbone {path!r}: building it with {kwargs} failed ({err}); set its arguments in model.backbone_kwargs"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"backbone {path!r} built a {type(model).__name__}, not a torch.nn.Module")
    default = params["input_shape"].default if "input_shape" in params else None
    if input_shape is None and isinstance(default, (tuple, list)):  # e.g. `zoo groups` without --input_shape
        input_shape = default
    return UserBackbone(model, path, tuple(input_shape) if input_shape is not None else None)


class UserBackbone(Backbone):
    """A user's network (``self.model``) behind the zoo's backbone interface, checked when built.

    Args:
        model: the network: it has ``num_features``, ``forward_features`` and ``layer_groups``, or none of them
            (a plain module whose ``forward`` returns ``(B, F)``).
        path: its class path, named in error messages.
        input_shape: one sample's shape; a zero batch of it checks the feature width (and finds it for a plain
            module). None skips the check (a plain module then cannot be used).
    """

    def __init__(self, model: nn.Module, path: str, input_shape: Optional[tuple[int, ...]] = None) -> None:
        super().__init__()
        self.model = model
        self.path = path
        has = [name for name in CONTRACT if hasattr(model, name)]
        self.plain = not has
        if has and len(has) < len(CONTRACT):
            missing = [name for name in CONTRACT if name not in has]
            raise ConfigError(
                f"backbone {path!r} ({type(model).__name__}) has {', '.join(has)} but not {', '.join(missing)}; "
                f"a zoo backbone needs all of {', '.join(CONTRACT)}. To add it: "
                + "; ".join(HOW_TO_ADD[m] for m in missing)
                + ". (A plain nn.Module with none of them also works: forward(x) -> (batch, features), trained "
                "as one layer group.) See 'Your own network' in the README"
            )
        if self.plain:
            if input_shape is None:
                raise ConfigError(
                    f"backbone {path!r} is a plain nn.Module: its feature width is found from "
                    "input_shape, which is not set"
                )
            self.num_features = self._dry_width(input_shape)
        else:
            width = model.num_features
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ConfigError(
                    f"backbone {path!r}: num_features must be a positive int, got {width!r}; "
                    f"{HOW_TO_ADD['num_features']}"
                )
            self.num_features = width
            if not callable(model.forward_features) or not callable(model.layer_groups):
                raise ConfigError(f"backbone {path!r}: forward_features and layer_groups must be methods")
            if input_shape is not None:
                found = self._dry_width(input_shape)
                if found != width:
                    raise ConfigError(
                        f"backbone {path!r}: forward_features returns {found} features per sample "
                        f"but num_features is {width}; make them agree"
                    )
        self._check_groups()

    def forward_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # A tensor, or a sequence / text batch's dict as keyword arguments (x and mask, or input_ids and
        # attention_mask), passed on as they came.
        if self.plain:
            return self.model(*args, **kwargs)
        return self.model.forward_features(*args, **kwargs)

    def layer_groups(self) -> dict[str, nn.Module]:
        return {"all": self.model} if self.plain else dict(self.model.layer_groups())

    def example_input(self, input_shape: tuple[int, ...], batch_size: int = 2) -> Any:
        own = getattr(self.model, "example_input", None)
        return own(input_shape, batch_size) if callable(own) else super().example_input(input_shape, batch_size)

    def _dry_width(self, input_shape: tuple[int, ...]) -> int:
        """The feature width of one forward pass over a zero batch of two samples, in eval mode, no gradients."""
        example = self.example_input(input_shape)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.forward_features(example)
        except Exception as err:  # noqa: BLE001  (the user's code: any failure means the same here)
            what = "forward" if self.plain else "forward_features"
            raise ConfigError(
                f"backbone {self.path!r}: {what} failed on a zero batch of shape "
                f"{tuple(example.shape) if isinstance(example, torch.Tensor) else input_shape} "
                f"({type(err).__name__}: {err})"
            ) from None
        finally:
            self.model.train(was_training)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            what = "forward" if self.plain else "forward_features"
            raise ConfigError(
                f"backbone {self.path!r}: {what} must return features of shape (batch, features), "
                f"got {got}; pool or flatten them (e.g. x.flatten(1))"
            )
        return int(out.shape[1])

    def _check_groups(self) -> None:
        groups = self.layer_groups()
        if not isinstance(groups, Mapping) or not all(isinstance(g, nn.Module) for g in groups.values()):
            raise ConfigError(
                f"backbone {self.path!r}: layer_groups() returned {type(groups).__name__}; {HOW_TO_ADD['layer_groups']}"
            )
        if not groups:
            raise ConfigError(f"backbone {self.path!r}: layer_groups() is empty; {HOW_TO_ADD['layer_groups']}")
        seen: dict[int, str] = {}
        for name, group in groups.items():
            for p in group.parameters():
                if id(p) in seen and seen[id(p)] != name:
                    raise ConfigError(
                        f"backbone {self.path!r}: a parameter is in both layer groups "
                        f"{seen[id(p)]!r} and {name!r}; each must be in exactly one"
                    )
                seen[id(p)] = name
        missing = [n for n, p in self.model.named_parameters() if id(p) not in seen]
        if missing:
            raise ConfigError(
                f"backbone {self.path!r}: parameters in no layer group: {', '.join(missing[:5])}; "
                "layer_groups() must hold every parameter (add the modules that own them)"
            )
