"""Transfer learning, measured: configs of a ``# comparison:`` group run as a user would, over seeds, and
the pretrained ones must beat the from-scratch baseline by a clear margin.

- ``digits_transfer``: a ResNet pretrained on digits 0-4 (``# requires: digits_0to4_resnet``), then 10
  labelled images per class of 5-9: from scratch vs feature extraction vs progressive unfreezing.
- ``vader_words``: the sentiment of words never seen in training: the pretrained MiniLM (feature
  extraction, full fine-tuning, progressive unfreezing) vs a zoo transformer trained from scratch.

``python scripts/results.py <names> --seeds ... --section transfer --write`` writes the README's table
from the same configs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_diagnose import problems_in

_spec = importlib.util.spec_from_file_location("results", ROOT / "scripts" / "results.py")
results = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(results)  # type: ignore[union-attr]


def group(name: str) -> list[str]:
    return sorted(p.stem for p in results.EXPERIMENTS.glob("*.yaml") if results.comparison_of(p.stem) == name)


def measure(names: list[str], workdir: Path, seeds: list[int] | None) -> dict[str, float]:
    """Mean test metric of each config over ``seeds`` (one run each), every config checked against its target."""
    done: set[str] = set()
    means = {}
    for name in names:
        metric, threshold = results.target_of(name)
        run = results.run_seeds(name, workdir, seeds, done) if seeds else results.run(name, workdir, done=done)
        means[name] = run["metrics"][metric]
        print(f"{name}: mean {metric}={means[name]:.4f} over seeds {seeds}")
        assert means[name] >= threshold, f"{name}: {metric}={means[name]:.4f} < {threshold}"
        problems = problems_in(workdir / "runs" / name)  # no false alarm from the diagnosis either
        assert not problems, f"{name}: the diagnosis finds problems in a healthy run: {problems}"
    return means


@pytest.mark.slow
def test_pretrained_digits_backbone_beats_scratch_on_few_labels(workdir: Path):
    names = group("digits_transfer")
    assert names == ["digits_5to9_feature_extraction", "digits_5to9_progressive", "digits_5to9_scratch"]
    acc = measure(names, workdir, seeds=[42, 1, 2])
    # With 50 labelled images, honest selection trains the scratch baseline on all of them for its whole budget
    # (zoo/budget.py), which narrowed the gap to about 3 points over 3 seeds (seed spread ~3 points): the claim
    # is that unfreezing the pretrained backbone wins on the mean, with a point to spare for float noise
    # (thread counts alone move the mean by ~0.5 point).
    assert acc["digits_5to9_progressive"] >= acc["digits_5to9_scratch"] + 0.01
    metric, threshold = results.target_of("digits_0to4_resnet")  # the pretraining, run once before them
    assert results.latest_test_metrics("digits_0to4_resnet", workdir)[metric] >= threshold


@pytest.mark.slow
def test_pretrained_minilm_knows_words_a_scratch_model_never_saw(workdir: Path):
    names = group("vader_words")
    assert len(names) == 4
    acc = measure(names, workdir, seeds=None)
    scratch = acc.pop("vader_transformer_scratch")
    for name, value in acc.items():
        assert value >= scratch + 0.25, f"{name}: {value:.3f} vs scratch {scratch:.3f}"
