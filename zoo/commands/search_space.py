"""The search space of `zoo tune` (dotted config keys mapped to distributions, read from YAML) and how
it meets the config: keys checked against the resolved config (trial values are written into it by
:func:`zoo.run.build.dump_with`).

Each entry is one of::

    key: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}        # or step: 0.05 (not with log)
    key: {type: int, low: 16, high: 128, log: true}                  # or step: 16 (not with log)
    key: {type: categorical, choices: [[128], [256, 128]]}           # any YAML values

and may add ``grid: [...]``, the values ``--sampler grid`` tries (other samplers use the range). Without
it the grid is the choices, every int of the range by ``step`` (1 by default), or the float range by its
``step``; a float range without a step has no grid.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from zoo.errors import CLOSE_DOTTED, ConfigError, did_you_mean

TYPES = ("float", "int", "categorical")
FIELDS = ("type", "low", "high", "step", "log", "choices", "grid")


def _encode(value: Any) -> Any:
    # Optuna stores categorical choices as scalars; a list or dict (e.g. hidden_sizes) travels as JSON text.
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


@dataclass
class Param:
    """One searched key: its distribution and, for ``--sampler grid``, its grid."""

    key: str
    type: str
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    choices: list[Any] = field(default_factory=list)
    grid: Optional[list[Any]] = None

    def suggest(self, trial: Any) -> Any:
        """The trial's value as Optuna stores it (``decode`` gives the config's value)."""
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_categorical(self.key, [_encode(c) for c in self.choices])

    def decode(self, stored: Any) -> Any:
        """The config value for a value Optuna stored for this key."""
        if self.type == "categorical":
            for choice in self.choices:
                if _encode(choice) == stored:
                    return choice
        return stored

    def grid_values(self) -> list[Any]:
        """The values ``--sampler grid`` tries, as Optuna stores them."""
        if self.type == "categorical":
            return [_encode(c) for c in (self.grid if self.grid is not None else self.choices)]
        if self.grid is not None:
            return list(self.grid)
        if self.type == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.step is None:
            raise ConfigError(
                f"{self.key}: --sampler grid needs a grid, and a float range without step has none; "
                "add step: (e.g. step: 0.1) or grid: [values]"
            )
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


def load_space(path: str | Path) -> list[Param]:
    """Read and check a search space file; a ConfigError names the key and what is wrong with it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"search space {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"search space {path} must map dotted config keys to distributions, e.g. "
            "model.init_args.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 0.1, log: true}"
        )
    return [parse_param(str(key), spec, str(path)) for key, spec in raw.items()]


def parse_param(key: str, spec: Any, where: str = "search space") -> Param:
    """Check one entry of a search space and build its Param."""

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {problem}")

    if not isinstance(spec, dict):
        raise bad(f"must be a mapping such as {{type: float, low: 0.0, high: 0.5}}, not {spec!r}")
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise bad(f"unknown field(s) {', '.join(map(str, unknown))}; a distribution has {', '.join(FIELDS)}")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind not in TYPES:
        raise bad(f"type must be one of {', '.join(TYPES)}, not {kind!r}")
    grid = spec.get("grid")
    if grid is not None and (not isinstance(grid, list) or not grid):
        raise bad(f"grid must be a non-empty list, not {grid!r}")
    if kind == "categorical":
        extra = sorted(set(spec) & {"low", "high", "step", "log"})
        if extra:
            raise bad(f"a categorical takes choices (and grid), not {', '.join(extra)}")
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad(f"choices must be a non-empty list, not {choices!r}")
        encoded = [_encode(c) for c in choices]
        if len(set(map(repr, encoded))) != len(encoded):
            raise bad(f"choices repeat a value: {choices}")
        if grid is not None and any(_encode(g) not in encoded for g in grid):
            raise bad(f"grid {grid} has values that are not among the choices {choices}")
        return Param(key, kind, choices=choices, grid=grid)
    if "choices" in spec:
        raise bad(f"choices belong to type categorical, not {kind}")
    number = _number(kind, bad)
    grid = [number(g, "a grid value") for g in grid] if grid is not None else None
    low = number(spec["low"], "low") if "low" in spec else (min(grid) if grid else None)
    high = number(spec["high"], "high") if "high" in spec else (max(grid) if grid else None)
    if low is None or high is None:
        raise bad(f"a {kind} range needs low and high (or a grid)")
    if low > high:
        raise bad(f"low ({low}) must not be above high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise bad(f"log must be true or false, not {log!r}")
    if log and low <= 0:
        raise bad(f"log: true needs low > 0, not {low}")
    step = spec.get("step")
    if step is not None:
        step = number(step, "step")
        if step <= 0:
            raise bad(f"step must be positive, not {step}")
        if log and not (kind == "int" and step == 1):
            raise bad("step and log: true cannot be combined; drop one of them")
    if grid is not None and any(not low <= g <= high for g in grid):
        raise bad(f"grid {grid} leaves the range [{low}, {high}]")
    return Param(key, kind, low=low, high=high, step=step, log=log, grid=grid)


def _number(kind: str, bad: Any) -> Any:
    def convert(value: Any, what: str) -> Any:
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise bad(f"{what} of an int range must be a whole number, not {value!r}")
            return int(value)
        try:  # YAML reads 1e-4 (no dot) as text
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise bad(f"{what} must be a number, not {value!r}") from None

    return convert


def config_keys(config: Any) -> list[str]:
    """Every dotted key of a resolved config, the keys inside dict values (``backbone_kwargs``) included."""
    keys = []
    for key in config.keys():
        keys.append(key)
        stack = [(key, config[key])]
        while stack:
            prefix, value = stack.pop()
            if isinstance(value, dict):
                for sub, inner in value.items():
                    keys.append(f"{prefix}.{sub}")
                    stack.append((f"{prefix}.{sub}", inner))
    return sorted(keys)


def check_keys(space: list[Param], config: Any, search_path: str) -> None:
    """Raise a ConfigError naming every key of the space that the config lacks, with close matches."""
    known = config_keys(config)
    problems = []
    for param in space:
        if param.key in known:
            continue
        leaf = param.key.rsplit(".", 1)[-1]
        same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf]  # the key, in another section
        suggest = functools.partial(did_you_mean, param.key, quote=False, form="; did you mean {}?")
        hint = suggest(known, cutoff=CLOSE_DOTTED) or suggest(same_leaf, cutoff=0.0) or suggest(known)
        problems.append(f"{param.key!r} is not a key of the config{hint}")
    if problems:
        raise ConfigError(
            f"{search_path}: " + "\n  ".join(problems) + "\n  (a key the config leaves out must be set in it first)"
        )
