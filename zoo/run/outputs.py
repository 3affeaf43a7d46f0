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
