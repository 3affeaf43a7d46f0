"""What went wrong in a training run, named from what it recorded: `zoo diagnose RUN_DIR`, and the summary at the
end of every `zoo fit`.

- :mod:`zoo.diagnosis.record`: the run folder read into a :class:`Record` (metrics.csv, layer_stats.csv, the test
  metrics, the config), standard library and PyYAML only;
- :mod:`zoo.diagnosis.rules` (the layers) and :mod:`zoo.diagnosis.curves` (the curves and results): one small
  pure function per failure (vanishing and exploding gradients, dead and saturated units, a learning rate too
  high or too low, over- and underfitting, a best epoch that is the first, a validation set too small, a
  constant prediction), each a :class:`Finding` with its evidence and remedies (:mod:`zoo.diagnosis.findings`);
- here: the findings of a run, a finding another one explains demoted to ``info`` (dead ReLUs explain the
  vanishing gradients below them), the text a user reads and ``diagnosis.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from zoo.diagnosis.findings import INFO, MIN_EPOCHS, MIN_STEPS, PROBLEM, SEVERITIES, WARNING, Finding
from zoo.diagnosis.record import DIAGNOSIS_FILE, LAYER_STATS_FILE, RUN_FILES, Record, read_record
from zoo.diagnosis.rules import EXPLAINED_BY, RULES

__all__ = [
    "DIAGNOSIS_FILE",
    "LAYER_STATS_FILE",
    "RUN_FILES",
    "diagnose_run",
    "Finding",
    "Record",
    "diagnose",
    "read_record",
    "summary",
    "write",
]


TOO_SHORT = "too_short"
TOO_SHORT_TEXT = (
    f"fewer than {MIN_EPOCHS} epochs and {MIN_STEPS} logged steps were recorded, too few to judge the learning rate "
    "and the fit (train longer, or log more often: trainer.log_every_n_steps)"
)


def diagnose(record: Record) -> list[Finding]:
    """Every rule's finding on ``record``, most severe first. A finding that a problem found beside it explains
    (:data:`~zoo.diagnosis.rules.EXPLAINED_BY`) becomes ``info`` and names the first cause: a constant prediction
    from dead ReLUs from a learning rate too high names the learning rate. A warning that explains a problem is
    that problem's cause, and a problem itself."""
    found = [f for f in (rule(record) for rule in RULES) if f is not None]
    # A warning that would explain a problem found beside it is its cause: a problem itself (large steps beside
    # dead ReLUs, gradients 100 times smaller in the first layers beside a model that does not learn).
    warned = {f.code: f for f in found if f.severity == WARNING}
    for finding in [f for f in found if f.severity == PROBLEM]:
        for cause in EXPLAINED_BY.get(finding.code, ()):
            if cause in warned:
                warned[cause].severity = PROBLEM
    problems = {f.code: f.title for f in found if f.severity == PROBLEM}

    def root(code: str, seen: tuple[str, ...] = ()) -> str:
        """The problem at the start of ``code``'s chain of explanations (itself where nothing explains it)."""
        cause = next((c for c in EXPLAINED_BY.get(code, ()) if c in problems and c not in seen), None)
        return code if cause is None else root(cause, (*seen, code))

    for finding in found:
        cause = root(finding.code)
        if cause != finding.code:
            finding.severity = INFO
            finding.title += f" (a consequence of the {problems[cause]})"
            finding.remedies = []
    if not _enough(record) and not problems:
        found.append(Finding(TOO_SHORT, INFO, "too little recorded to judge the curves", TOO_SHORT_TEXT))
    return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


def _enough(record: Record) -> bool:
    return len(record.curve("train/loss")) >= MIN_EPOCHS or len(record.step_curve("train/loss_step")) >= MIN_STEPS


def summary(findings: list[Finding], run: str, verbose: bool = True) -> str:
    """The text a user reads: one line for a healthy run; else a head line and each finding with its evidence
    and remedies (``verbose``) or its title alone."""
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    if not counts[PROBLEM] and not counts["warning"]:
        if any(f.code == TOO_SHORT for f in findings):
            return f"diagnosis of {run}: nothing wrong in what was recorded, but {TOO_SHORT_TEXT}"
        return f"diagnosis of {run}: healthy, nothing went wrong that the recorded numbers show"
    head = ", ".join(f"{n} {s}{'s' if n > 1 else ''}" for s, n in counts.items() if n)
    lines = [f"diagnosis of {run}: {head}"]
    for finding in findings:
        lines.append(f"  {finding.severity.upper() if finding.severity != INFO else 'info':8s} {finding.title}")
        if verbose or finding.severity != INFO:
            lines.append(f"           {finding.evidence}")
        if verbose and finding.remedies:
            lines.append(f"           remedies: {'; '.join(finding.remedies)}")
    return "\n".join(lines)


def write(run: Path, findings: list[Finding], facts: dict[str, Any]) -> Path:
    """``diagnosis.json`` in the run folder: the findings, whether the run is healthy, and the live run's facts
    (a later `zoo diagnose` reads them from here)."""
    healthy = not any(f.severity != INFO for f in findings)
    data = {"healthy": healthy, "findings": [f.to_json() for f in findings], "facts": facts}
    path = run / DIAGNOSIS_FILE
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def diagnose_run(run: Path, facts: Optional[dict[str, Any]] = None) -> tuple[list[Finding], Record]:
    """The findings of a run folder (see :func:`read_record` for ``facts``)."""
    record = read_record(run, facts)
    return diagnose(record), record
