"""What a run folder recorded, read into one :class:`Record` for the rules of :mod:`zoo.diagnosis.rules`: the
logger's ``metrics.csv`` (epoch and step values), ``layer_stats.csv`` (zoo.callbacks.layer_stats), the test
metrics, the resolved config and the facts known only while the run was live (the data's sizes).

Standard library and PyYAML only: reading a run imports neither torch nor Lightning.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

LAYER_STATS_FILE = "layer_stats.csv"  # written by zoo.callbacks.layer_stats.LayerStats
LAYER_STATS_COLUMNS = (
    "step",
    "epoch",
    "layer",
    "kind",
    "grad_norm",
    "update_ratio",
    "act_mean",
    "act_std",
    "dead_fraction",
    "saturated_fraction",
)
LAYER_STATS = LAYER_STATS_COLUMNS[4:]  # the statistics; the first four columns say where and what
PARAM, ACTIVATION = "param", "activation"  # the kinds of layer
DIAGNOSIS_FILE = "diagnosis.json"
RUN_FILES = ("metrics.csv", LAYER_STATS_FILE)  # a folder with neither recorded nothing to diagnose

Series = dict[int, float]  # epoch or step -> value


@dataclass
class LayerSeries:
    """One layer's statistics over the logging steps, in step order (None where a statistic does not apply)."""

    name: str
    kind: str  # PARAM or ACTIVATION
    steps: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    stats: dict[str, list[Optional[float]]] = field(default_factory=lambda: {s: [] for s in LAYER_STATS})

    def values(self, stat: str) -> list[float]:
        """The recorded values of ``stat``, those that apply."""
        return [v for v in self.stats[stat] if v is not None]

    def spans(self, stat: str) -> tuple[int, int]:
        """The first and last epoch ``stat`` was recorded in."""
        epochs = [e for e, v in zip(self.epochs, self.stats[stat]) if v is not None]
        return (epochs[0], epochs[-1]) if epochs else (0, 0)


@dataclass
class Record:
    """A run as the rules read it.

    Attributes:
        epochs: epoch-level metrics (``train/loss``, ``val/loss``, ``val/acc``, ...): name -> {epoch: value}.
        steps: step-level metrics (``train/loss_step``, ``grad_norm/total``): name -> {step: value}.
        layers: the layers of ``layer_stats.csv``, first layer first (forward order); [] without the file.
        test: the test metrics and the baselines' (``test_metrics.json``).
        config: the resolved config (``config.yaml``); hparams: the model's (``hparams.yaml``: num_classes, ...).
        facts: what only the live run knew: ``train_samples``, ``val_samples``, ``majority_fraction``.
    """

    epochs: dict[str, Series] = field(default_factory=dict)
    steps: dict[str, Series] = field(default_factory=dict)
    layers: list[LayerSeries] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def setting(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (``trainer.gradient_clip_val``), ``init_args`` levels skipped."""
        node: Any = self.config
        for part in dotted.split("."):
            if isinstance(node, dict) and part not in node and isinstance(node.get("init_args"), dict):
                node = node["init_args"]
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def curve(self, name: str) -> list[tuple[int, float]]:
        """An epoch-level metric as (epoch, value) pairs in epoch order."""
        return sorted(self.epochs.get(name, {}).items())

    def step_curve(self, name: str) -> list[tuple[int, float]]:
        """A step-level metric as (step, value) pairs in step order."""
        return sorted(self.steps.get(name, {}).items())


def read_record(run: Path, facts: Optional[dict[str, Any]] = None) -> Record:
    """Everything ``run`` recorded. ``facts``: the live run's (at the end of `zoo fit`); else those a previous
    diagnosis stored in ``diagnosis.json``."""
    record = Record()
    if (run / "metrics.csv").is_file():
        record.epochs, record.steps = read_metrics(run / "metrics.csv")
    if (run / LAYER_STATS_FILE).is_file():
        record.layers = read_layer_stats(run / LAYER_STATS_FILE)
    record.test = _json(run / "test_metrics.json")
    record.config = _yaml(run / "config.yaml")
    record.hparams = _yaml(run / "hparams.yaml")
    record.facts = dict(facts) if facts is not None else dict(_json(run / DIAGNOSIS_FILE).get("facts") or {})
    return record


def read_metrics(path: Path) -> tuple[dict[str, Series], dict[str, Series]]:
    """A CSVLogger's ``metrics.csv`` as epoch-level and step-level values (a row with an epoch counts in the
    first, a row with a step in the second; Lightning writes both for most rows)."""
    epochs: dict[str, Series] = {}
    steps: dict[str, Series] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch, step = _int(row.get("epoch")), _int(row.get("step"))
            for name, text in row.items():
                value = _float(text)
                if name in ("epoch", "step") or value is None:
                    continue
                if epoch is not None:
                    epochs.setdefault(name, {})[epoch] = value
                if step is not None:
                    steps.setdefault(name, {})[step] = value
    return epochs, steps


def read_layer_stats(path: Path) -> list[LayerSeries]:
    """``layer_stats.csv`` as one :class:`LayerSeries` per layer, in the file's (forward) order."""
    layers: dict[str, LayerSeries] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step, epoch = _int(row.get("step")), _int(row.get("epoch"))
            name = row.get("layer") or ""
            if step is None or epoch is None or not name:
                continue
            layer = layers.setdefault(name, LayerSeries(name, row.get("kind") or PARAM))
            layer.steps.append(step)
            layer.epochs.append(epoch)
            for stat in LAYER_STATS:
                layer.stats[stat].append(_float(row.get(stat)))
    return list(layers.values())


def _int(text: Optional[str]) -> Optional[int]:
    value = _float(text)
    return int(value) if value is not None and math.isfinite(value) else None


def _float(text: Optional[str]) -> Optional[float]:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class _Loader(yaml.SafeLoader):
    """Safe YAML that reads the tuples Lightning writes into hparams.yaml (``!!python/tuple``) as lists."""


_Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
