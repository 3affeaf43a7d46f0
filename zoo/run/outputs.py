"""What a run leaves: the test of its chosen weights after a fit, and its metrics as JSON."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

from lightning.pytorch import Trainer

from zoo.run.files import run_folder


def test_after_fit(trainer: Trainer, model: Any, datamodule: Any, baseline: bool = True) -> None:
    """Test the fit's best checkpoint (its last weights where there is none) unless the fit was interrupted,
    and write the test metrics (:func:`write_metrics`)."""
    if trainer.interrupted:
        return
    ckpt = trainer.checkpoint_callback
    ckpt_path = "best" if ckpt is not None and getattr(ckpt, "best_model_path", None) else None
    if ckpt_path is None and ckpt is not None and ckpt.monitor:
        print(f"testing the last weights: no best checkpoint by {ckpt.monitor} (it was never logged)", file=sys.stderr)
    warn_first_epoch_best(trainer)
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path)
    write_metrics(trainer, model, datamodule, "test", baseline)


test_after_fit.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest to collect


def write_metrics(trainer: Trainer, model: Any, datamodule: Any, stage: str, baseline: bool = True) -> Optional[str]:
    """Write the ``{stage}/*`` metrics as ``<run folder>/{stage}_metrics.json`` (on the global-zero process),
    with the baselines' beside the test metrics (zoo.baselines), and print them. Returns the file's path."""
    if not trainer.is_global_zero:
        return None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
    baselines: dict[str, float] = {}
    compared = ""
    if stage == "test" and baseline:
        from zoo.baselines import baselines_of_run  # fits scikit-learn models: imported when they run

        baselines, compared = baselines_of_run(trainer, model, datamodule, metrics)
    out_dir = run_folder(trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stage}_metrics.json"
    path.write_text(json.dumps({**metrics, **baselines}, indent=2, sort_keys=True) + "\n")
    summary = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
    print("\n".join(line for line in (summary, compared, f"metrics written to {path}") if line))
    return str(path)


def warn_first_epoch_best(trainer: Trainer) -> None:
    """A best checkpoint from the first of several epochs: nothing after it improved the monitored metric."""
    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") if ckpt is not None and getattr(ckpt, "monitor", None) else ""
    if best and trainer.current_epoch > 1 and os.path.basename(best).startswith("best-epoch=0-"):
        print(
            f"warning: the best checkpoint by {ckpt.monitor} is from the first epoch of {trainer.current_epoch}: "
            "training did not improve on it. The learning rate may be too high (zoo lr-find), or the validation "
            "split too small or unlike the training data to select on (--selection last)",
            file=sys.stderr,
        )


def diagnose_after_fit(trainer: Trainer, error: Optional[BaseException] = None) -> None:
    """The diagnosis of the fit that just ended (:mod:`zoo.diagnosis`), on the global-zero process: a short summary
    printed (one line for a healthy run), ``diagnosis.json`` in the run folder, and the findings to the loggers
    that take text or metrics (:func:`log_findings`). Nothing where the run recorded nothing (no logger).
    ``error``: what stopped the fit (a non-finite loss), itself a finding."""
    from zoo.diagnosis import RUN_FILES, diagnose_run, summary, write

    if not trainer.is_global_zero:
        return
    run = run_folder(trainer)
    if not any((run / name).is_file() for name in RUN_FILES):
        return
    facts = run_facts(trainer)
    if error is not None:
        facts["stopped"] = str(error)
    findings, _ = diagnose_run(run, facts)
    path = write(run, findings, facts)
    healthy = all(f.severity == "info" for f in findings)
    print(summary(findings, str(run), verbose=False))
    print(f"diagnosis written to {path}" + ("" if healthy else f"; the remedies: zoo diagnose {run}"))
    log_findings(trainer, findings, path)


def run_facts(trainer: Trainer) -> dict[str, Any]:
    """What the diagnosis needs that only the live run knows: the training and validation samples (after the
    budget's choices: a validation split joined to the training data counts 0) and the majority class's share of
    the training labels, where the datamodule tells."""
    from datamodules.base import labels_of

    datamodule, facts = trainer.datamodule, {}
    split_sizes = getattr(datamodule, "split_sizes", None)
    if callable(split_sizes):
        facts["train_samples"], facts["val_samples"] = split_sizes()
    labels = labels_of(getattr(datamodule, "train_set", None))
    if labels is not None and labels.numel():
        facts["majority_fraction"] = float(labels.bincount().max()) / labels.numel()
    return facts


def log_findings(trainer: Trainer, findings: list[Any], path: Any) -> None:
    """The findings to each logger that takes them: counts as metrics (``diagnosis/problems``,
    ``diagnosis/warnings``) and the findings as text (W&B: a table; TensorBoard: text; MLflow: diagnosis.json
    as an artifact). The CSV logger's run folder holds diagnosis.json itself. A logger that fails is a warning."""
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    counts = {f"diagnosis/{s}s": float(sum(f.severity == s for f in findings)) for s in ("problem", "warning")}
    rows = [[f.severity, f.title, f.evidence, "; ".join(f.remedies)] for f in findings]
    text = "\n\n".join(f"**{f.severity}: {f.title}**  \n{f.evidence}" for f in findings) or "healthy"
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            continue
        try:
            logger.log_metrics(counts, step=trainer.global_step)
            if isinstance(logger, WandbLogger):
                logger.log_text(key="diagnosis", columns=["severity", "finding", "evidence", "remedies"], data=rows)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("diagnosis", text, trainer.global_step)
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path))
            logger.save()
        except Exception as err:  # noqa: BLE001  (a tracker's failure must not fail a finished run)
            print(f"warning: the diagnosis was not logged to {type(logger).__name__}: {err}", file=sys.stderr)
