"""The README's "Python API" block, run exactly as written: the README cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT


def readme_block(section: str) -> str:
    """The first ```python block of a README section (``## <section>``)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", body, re.DOTALL)
    assert found, f"no python block under ## {section}"
    return found.group(1)


def test_python_api_block_trains_a_classifier(workdir: Path):
    code = readme_block("Python API")
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)  # noqa: S102  (our own README)
    metrics = namespace["trainer"].callback_metrics
    assert float(metrics["test/acc"]) >= 0.85, dict(metrics)  # the README says about 0.95
    assert namespace["model"].backbone_name == "cnn"
    assert not (workdir / "lightning_logs").exists()  # logger=False, no checkpoints: nothing left behind
