"""Reading what `zoo fit` wrote: a checkpoint's task, its resolved config and its data facts (writing them is
:mod:`zoo.run.files`'s).

A checkpoint is data. It is read with ``torch.load(weights_only=True)`` (tensors and plain Python values only),
its stored config with ``yaml.safe_load``, and every class it names anywhere (a ``class_path``, nested values
included, or an import path where a callable is expected) must be on :data:`TRUSTED`, checked before anything
is built. A backbone named by class path (your own network, ``mypkg.nets.MyNet``) counts as a class: a
checkpoint naming one is refused unless the user named that class path too (their config, ``zoo predict
--backbone``), so a checkpoint never imports a module by itself. ``trust_remote_code`` is never taken from a
checkpoint. A zoo checkpoint carries everything needed to use the model again (the task's hyperparameters, the
resolved config under ``zoo_config``, the datamodule's state such as class names), so `zoo predict`, `zoo export`
and `zoo report` need only its path.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from typing import Any, Collection, Optional

import torch
import yaml

from zoo.errors import ConfigError, ZooError
from zoo.registry import is_class_path

log = logging.getLogger(__name__)

CONFIG_KEY = "zoo_config"  # the resolved CLI config, as YAML text
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format: a zip archive
# The classes a checkpoint may name: a class defined in one of these packages (the zoo's tasks, datamodules and
# schedules, torch's and timm's optimizers and schedulers, Lightning's ReduceLROnPlateau) and derived from one of
# TRUSTED_BASES; or one the user's own config names. Rebuilding a model or its data builds nothing else.
TRUSTED_PACKAGES = ("zoo.tasks", "zoo.schedules", "datamodules", "torch.optim", "timm.optim", "lightning.pytorch.cli")
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"  # the one ``_instantiator`` LightningCLI stores
# Keys that hold a class path in what LightningCLI stores: a config's ``class_path``, a task's ``_class_path``
# and the ``_instantiator`` Lightning's ``load_from_checkpoint`` would call.
CLASS_KEYS = ("class_path", "_class_path", "_instantiator")
REMOTE_CODE_KEY = "trust_remote_code"
BACKBONE_KEY = "backbone"  # a task's backbone name: a class path there is imported when the task is built


def trusted_bases() -> tuple[type, ...]:
    """What a class a checkpoint names must derive from: a zoo task or datamodule, an optimizer, a scheduler."""
    from datamodules.base import ZooDataModule
    from zoo.tasks.base import ZooTask

    return (
        ZooTask,
        ZooDataModule,
        torch.optim.Optimizer,
        torch.optim.lr_scheduler.LRScheduler,
        torch.optim.lr_scheduler.ReduceLROnPlateau,
    )


def trusted(path: Any, extra: Collection[str] = ()) -> bool:
    """Whether a checkpoint may name the class ``path``: one the user's own config names (``extra``, see
    :func:`classes_named`), or a class defined in a module of :data:`TRUSTED_PACKAGES` (imported only then) that
    derives from :func:`trusted_bases`. ``module.attribute`` exactly: no attribute chains such as
    ``zoo.checkpoints.os.system``, no functions."""
    if not isinstance(path, str):
        return False
    if path in extra:
        return True
    found = _import_trusted(path)
    if found is None or not found.__module__.startswith(path.rpartition(".")[0]):
        return False
    return issubclass(found, trusted_bases())


def classes_named(config: Any) -> frozenset[str]:
    """Every ``class_path`` in a config the user wrote (nested dicts and lists), and every ``backbone`` given as
    a class path: a checkpoint may name those too, so that resuming or evaluating with one's own optimizer,
    callback or network class works."""
    if isinstance(config, Mapping):
        own = {config["class_path"]} if isinstance(config.get("class_path"), str) else set()
        if isinstance(config.get(BACKBONE_KEY), str) and is_class_path(config[BACKBONE_KEY]):
            own.add(config[BACKBONE_KEY])
        return frozenset(own.union(*(classes_named(v) for v in config.values())))
    if isinstance(config, (list, tuple)):
        return frozenset().union(*(classes_named(v) for v in config))
    return frozenset()


def read_checkpoint(path: str, mmap: bool = False, trusted: Collection[str] = ()) -> dict[str, Any]:
    """The checkpoint's contents, checked to be data: loaded without running any pickled code, every class it
    names trusted (:func:`check_is_data`), any ``trust_remote_code`` in it turned off.

    Args:
        path: the checkpoint file.
        mmap: map the file instead of reading it: tensors are read only when touched, so asking a large
            checkpoint for its hyperparameters or run id costs almost nothing.
        trusted: classes the checkpoint may name beside :data:`TRUSTED`: those of the user's own config.

    Raises:
        ConfigError: the file is missing, not a checkpoint, truncated or corrupt, holds code (a pickle payload,
            a class the safe loader refuses, a YAML tag, a class path outside :data:`TRUSTED`), or is not a
            Lightning checkpoint.
    """
    if os.path.isfile(path):  # (a missing file is named by the loader)
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
        if head != ZIP_MAGIC:
            raise ConfigError(
                f"{path}: not a zoo checkpoint ({os.path.getsize(path)} bytes, not a file torch.save "
                "wrote); use a .ckpt file that `zoo fit` wrote, runs/<name>/version_<n>/checkpoints/"
            )
    ckpt = load_data(path, f"checkpoint {path}", mmap=mmap)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"{path}: not a zoo checkpoint (no state_dict); use a .ckpt file that `zoo fit` wrote")
    check_is_data(ckpt, path, trusted)
    return ckpt


def load_data(path: str, what: str, mmap: bool = False, unreadable: str = "it may be truncated or corrupt") -> Any:
    """What a ``torch.save`` file holds, read as data (``weights_only=True``: tensors and plain Python values, no
    pickled code runs), or the tensors of a ``.safetensors`` file: how the zoo reads checkpoints and weights files.

    Args:
        what: the file as an error names it (``checkpoint runs/x.ckpt``, ``model.pretrained='w.pth'``).
        mmap: map the file instead of reading it: tensors are read only when touched.
        unreadable: what the error says a file that cannot be read may be.

    Raises:
        ConfigError: the file is missing, holds Python objects (a pickle payload, a class: refused), or cannot be
            read.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{what}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001  (every failure of the safe loader means the same to a user)
        said = " ".join(str(err).split())
        if "global" in said.lower():  # a pickle runs code only through a global (a class or function) it names
            raise ConfigError(
                f"{what}: refused, it holds Python objects that safe loading does not run ({said[:160]}...). "
                "Only load files you trust; a zoo checkpoint or a state dict holds none"
            ) from None
        raise ConfigError(f"{what}: cannot read it ({type(err).__name__}: {said[:200]}); {unreadable}") from None


def check_is_data(ckpt: dict[str, Any], path: str, trusted: Collection[str] = ()) -> None:
    """Refuse a checkpoint that names a class or callable outside :data:`TRUSTED` anywhere: its hyperparameters,
    its stored config's model and data, callback and datamodule states, nested dicts and lists. Turn off (with
    a warning) every ``trust_remote_code`` it stores: only the user's own config or command line may set it.

    The stored config's ``trainer`` section is a record of the run that no command rebuilds, so the user's own
    callbacks there do not make their checkpoint unusable.
    """
    walk = _Walk(path, frozenset(trusted))
    if isinstance(ckpt.get("hyper_parameters"), Mapping) and "_class_path" not in ckpt["hyper_parameters"]:
        from zoo.tasks.base import ZooTask

        walk.owners["hyper_parameters"] = ZooTask  # whatever task rebuilds them takes at least its arguments
    try:
        for key, value in ckpt.items():
            if key in ("state_dict", "optimizer_states"):
                continue  # tensors and optimizer numbers: the safe loader lets nothing else through
            if key == CONFIG_KEY:
                config = _stored_config(value, path)
                walk.check({k: v for k, v in config.items() if k != "trainer"}, CONFIG_KEY)
            else:
                walk.check(value, str(key))
    except RecursionError:
        raise ConfigError(f"{path}: refused, its contents nest deeper than any zoo checkpoint's") from None
    for where in distrust_remote_code(ckpt.get("hyper_parameters"), "hyper_parameters"):
        log.warning(
            "%s stores %s: true; a checkpoint cannot allow remote code, so it is off. Set it in your own "
            "config or command line if you trust that code",
            path,
            where,
        )


def _stored_config(text: Any, path: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise ConfigError(f"{path}: its stored config ({CONFIG_KEY}) is not YAML text; not a zoo checkpoint")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:  # a !!python/... tag is refused by safe_load: nothing was built
        said = " ".join(str(err).split())
        raise ConfigError(
            f"{path}: refused, its stored config ({CONFIG_KEY}) is not plain YAML ({said[:160]}); "
            "a zoo checkpoint's config holds no tags. Only load checkpoints you trust"
        ) from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: its stored config ({CONFIG_KEY}) is not a mapping; not a zoo checkpoint")
    return config


class _Walk:
    """One walk over a checkpoint's values, each container visited once per owner class (YAML aliases and pickle
    memo entries share containers: a crafted file could otherwise make the walk exponential)."""

    def __init__(self, path: str, extra: frozenset[str]) -> None:
        self.path, self.extra = path, extra
        self.seen: set[tuple[int, Optional[type]]] = set()
        self.owners: dict[str, type] = {}  # top-level keys whose values are a class's arguments

    def check(self, value: Any, where: str, owner: Optional[type] = None) -> None:
        """Every class path under :data:`CLASS_KEYS` must be trusted, and no string may stand where a class
        expects a callable or a class (jsonargparse would import it: a zoo checkpoint stores those as
        ``class_path`` dicts). ``owner`` is the class whose arguments ``value`` holds (``init_args``); a task's
        hyperparameters name theirs under ``_class_path``."""
        owner = owner or self.owners.get(where)
        if not isinstance(value, (Mapping, list, tuple)) or (id(value), owner) in self.seen:
            return
        self.seen.add((id(value), owner))
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                self.check(item, f"{where}[{index}]")
            return
        if "_instantiator" in value and value["_instantiator"] != INSTANTIATOR:
            _refuse(f"{where}._instantiator", value["_instantiator"], self.path)
        for key in CLASS_KEYS[:2]:
            if key in value and not trusted(value[key], self.extra):
                _refuse(f"{where}.{key}", value[key], self.path)
        backbone = value.get(BACKBONE_KEY)
        if isinstance(backbone, str) and is_class_path(backbone) and backbone not in self.extra:
            raise ConfigError(
                f"{self.path}: refused, {where}.{BACKBONE_KEY} is the class path {backbone!r} (a network of your "
                "own?), and a checkpoint may not import code by itself. If you trust it, name the class yourself: "
                f"zoo predict (or export) --backbone {backbone} --ckpt_path ..., or give the config you trained it "
                "with (zoo test / predict --config CONFIG --ckpt_path ...), or load_task(path, trusted=[class path])"
            )
        cls = _import_trusted(value["class_path"]) if "class_path" in value else None
        if "_class_path" in value:
            owner = _import_trusted(value["_class_path"])
        imports = _imported_arguments(owner)
        for key, item in value.items():
            if key in imports:
                for name in item if isinstance(item, (list, tuple)) else [item]:
                    if isinstance(name, str) and name not in self.extra:
                        _refuse(f"{where}.{key}", name, self.path)
            self.check(item, f"{where}.{key}", cls if key in ("init_args", "dict_kwargs") else None)


def _refuse(where: str, name: Any, path: str) -> None:
    raise ConfigError(
        f"{path}: refused, {where} names {name!r}, which a checkpoint may not build (a checkpoint is data: it may "
        "name only the zoo's tasks and datamodules, torch's and timm's optimizers and schedulers, and the classes "
        "your own config names). Only use checkpoints you trust; for one trained with your own class, give the "
        "config you trained it with (zoo test / predict --config CONFIG --ckpt_path ...)"
    )


def _import_trusted(name: Any) -> Optional[type]:
    """The class ``name`` names, imported only from a module of :data:`TRUSTED_PACKAGES` and only as that module's
    own attribute (never an import chain); None otherwise (a class of the user's own config is the user's to
    import)."""
    module, _, attr = str(name).rpartition(".")
    if not any(module == p or module.startswith(f"{p}.") for p in TRUSTED_PACKAGES):
        return None
    try:
        found = importlib.import_module(module).__dict__.get(attr)
    except ImportError:
        return None
    return found if isinstance(found, type) else None


def _imported_arguments(cls: Optional[type]) -> set[str]:
    """The arguments of ``cls`` typed as a callable or a class: jsonargparse imports a string given there."""
    if cls is None:
        return set()
    from zoo.tasks.base import init_arguments  # (a task's own arguments and those it passes on to ZooTask)

    parameters = init_arguments(cls).values()
    return {p.name for p in parameters if any(t in str(p.annotation) for t in ("Callable", "type[", "Type["))}


def distrust_remote_code(tree: Any, where: str, seen: Optional[set[int]] = None) -> list[str]:
    """Set every true ``trust_remote_code`` in ``tree`` to False, in place (each shared container once); returns
    where each one was."""
    seen = set() if seen is None else seen
    if not isinstance(tree, (dict, list, tuple)) or id(tree) in seen:
        return []
    seen.add(id(tree))
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == REMOTE_CODE_KEY and value:
                tree[key] = False
                found.append(f"{where}.{key}")
            else:
                found += distrust_remote_code(value, f"{where}.{key}", seen)
    else:
        for index, value in enumerate(tree):
            found += distrust_remote_code(value, f"{where}[{index}]", seen)
    return found


def _zoo_class(class_path: Any, package: str, base: type, path: str, what: str) -> type:
    """The class a checkpoint names, imported only from the zoo's own ``package`` and a subclass of ``base``:
    a checkpoint never makes us import or build anything else."""
    if not isinstance(class_path, str) or not class_path.startswith(f"{package}."):
        raise ConfigError(
            f"{path}: not a zoo checkpoint (its {what} class is {class_path!r}); use a checkpoint that `zoo fit` wrote"
        )
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError as err:
        raise ConfigError(f"{path}: cannot import its {what} {class_path!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{path}: unknown zoo {what} {class_path!r}")
    return cls


def task_class(ckpt: dict[str, Any], path: str = "the checkpoint") -> type:
    """The zoo task class a checkpoint was trained with; any other class path is refused."""
    from zoo.tasks.base import ZooTask

    hparams = ckpt.get("hyper_parameters") or {}
    return _zoo_class(hparams.get("_class_path"), "zoo.tasks", ZooTask, path, "task")


def load_task(path: str, ckpt: Optional[dict[str, Any]] = None, trusted: Collection[str] = ()) -> Any:
    """The trained task of a `zoo fit` checkpoint, weights loaded, in eval mode.

    The network is rebuilt from the checkpoint's own hyperparameters without fetching pretrained weights
    (the checkpoint holds every weight). ``trusted``: class paths the checkpoint may name beside the zoo's own,
    e.g. ``["mypkg.nets.MyNet"]`` for a checkpoint of your own network (see :func:`read_checkpoint`).
    """
    from lightning.pytorch.cli import instantiate_module

    ckpt = read_checkpoint(path, trusted=trusted) if ckpt is None else ckpt
    cls = task_class(ckpt, path)
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k != "_instantiator"}
    hparams["pretrained"] = False
    try:
        task = instantiate_module(cls, hparams)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"{path}: cannot rebuild its model: {' '.join(str(err).split())[:300]}") from None
    missing, unexpected = task.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{path}: its weights do not fit the model it describes (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    return task.eval()


def load_datamodule(ckpt: dict[str, Any], path: str, instead: str) -> Any:
    """The checkpoint's datamodule, built from its resolved config and restored from its saved state
    (statistics, vocabulary, class names), before any ``setup``.

    Args:
        instead: what to do when the checkpoint has no resolved config (written by an older zoo).
    """
    from datamodules.base import ZooDataModule

    data = (run_config(ckpt) or {}).get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise ConfigError(
            f"{path} has no resolved config to rebuild its data from (it was written before "
            f"checkpoints carried one, or not by `zoo fit`); {instead}"
        )
    cls = _zoo_class(data["class_path"], "datamodules", ZooDataModule, path, "datamodule")
    try:
        datamodule = cls(**(data.get("init_args") or {}))
    except ZooError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: cannot rebuild its data {data['class_path']}: {err}") from None
    state = datamodule_state(ckpt)
    _check_data_state(state, path)
    try:
        datamodule.load_state_dict(state)
    except (TypeError, KeyError, ValueError) as err:
        raise ConfigError(
            f"{path}: its data state does not fit {data['class_path']} ({err!r}); not a checkpoint that `zoo fit` wrote"
        ) from None
    return datamodule


def _check_data_state(state: dict[str, Any], path: str) -> None:
    """The kinds of value a zoo datamodule stores: class names, numeric statistics, a vocabulary."""

    def numeric(value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return all(numeric(v) for v in value)
        return isinstance(value, (int, float, torch.Tensor)) and not isinstance(value, bool)

    kinds = {
        "class_names": lambda v: isinstance(v, (list, tuple)) and all(isinstance(n, (str, int)) for n in v),
        "stats": lambda v: isinstance(v, dict) and all(numeric(x) for x in v.values()),
        "vocab": lambda v: isinstance(v, (list, tuple, dict)) and all(isinstance(w, str) for w in v),
    }
    for key, fits in kinds.items():
        if state.get(key) is not None and not fits(state[key]):
            raise ConfigError(
                f"{path}: its data state's {key!r} is not what a zoo datamodule stores "
                f"({type(state[key]).__name__}); not a checkpoint that `zoo fit` wrote"
            )


def run_config(ckpt: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The resolved CLI config the checkpoint was trained with (None for checkpoints written before it was saved)."""
    text = ckpt.get(CONFIG_KEY)
    if not isinstance(text, str):
        return None
    config = yaml.safe_load(text)  # read_checkpoint refused anything but plain YAML
    distrust_remote_code(config, CONFIG_KEY)
    return config


def datamodule_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The datamodule's saved state (class names, vocabulary, normalisation...), or {} when there is none."""
    config = run_config(ckpt) or {}
    data = config.get("data") or {}
    name = str(data.get("class_path", "")).rpartition(".")[2]
    state = ckpt.get(name) if name else None
    return state if isinstance(state, dict) else {}


def class_names(ckpt: dict[str, Any]) -> Optional[list[str]]:
    """The class names, index-aligned with the model's outputs, when the data had them."""
    names = datamodule_state(ckpt).get("class_names")
    return [str(n) for n in names] if names else None
