"""Pictures of a run drawn while it runs: the same PNGs as `zoo report`, and images in the run's trackers (W&B,
MLflow, TensorBoard)."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

from zoo.callbacks.samples import Kept, SampleCollector, batch_samples, to_samples
from zoo.diagnosis.record import LAYER_STATS_FILE
from zoo.plots_samples import SAMPLES_FILE, Sample
from zoo.run.files import run_folder
from zoo.trackers import log_picture, picture_loggers

log = logging.getLogger(__name__)

CONFUSION_FILE = "test_confusion.json"
PICTURES = {
    "learning_curves": "learning_curves.png",
    "learning_rate": "learning_rate.png",
    "confusion_matrix": "confusion_matrix.png",
    "predictions": "predictions.png",
    "top_losses": "top_losses.png",
    "train_batch": "train_batch.png",
    "layer_stats": "layer_stats.png",
}


def write_confusion(path: Path, matrix: list[list[int]], class_names: list[str]) -> None:
    """``{"class_names": [...], "matrix": [[...]]}``, rows = true class, as `zoo report` reads it."""
    path.write_text(json.dumps({"class_names": class_names, "matrix": matrix}) + "\n")


class RunPictures(Callback):
    """Draws a run's pictures into its folder, so they exist without running `zoo report`.

    At the end of fit: ``learning_curves.png`` and ``learning_rate.png``; ``train_batch.png``, the first training
    batch as the model saw it (after augmentation and mixing); ``predictions.png`` (the first samples of the
    last validation, true and predicted labels) and ``top_losses.png`` (its samples of highest loss); and
    ``layer_stats.png``, heat maps of per-layer gradient norms and activation statistics, when the run wrote a
    ``layer_stats.csv``. At the end of test: ``predictions.png`` and ``top_losses.png`` again, from the test
    split, and for a classifier ``test_confusion.json`` (rows = true class) and ``confusion_matrix.png``; the
    learning curves are redrawn with the test metrics in their title. The samples behind the pictures are kept
    in ``samples.npz`` for `zoo report`.

    The numbers are collected here while the run goes (epoch metrics, each optimizer group's LR), so any logger
    works; the confusion matrix is the one the task's own test step accumulated (``Classifier.test_confusion``),
    and the samples' outputs those of the task's own validation and test steps (a forward hook keeps them,
    :mod:`zoo.callbacks.samples`), so nothing runs the model twice. Under DDP the samples are rank 0's share.

    When the run logs to a tracker that shows pictures (W&B, MLflow, TensorBoard: :func:`zoo.trackers.log_picture`),
    the same pictures go there as images, plus the validation confusion matrix and a few sample predictions (image
    inputs) after each validation.

    Args:
        every_n_epochs: trackers only: log the validation confusion matrix and samples every n epochs (0: never).
        num_samples: trackers only: sample predictions shown per validation (image inputs only; 0: none).
        sample_pictures: samples in each of the predictions, top-losses and training-batch pictures (0: none).
    """

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 8, sample_pictures: int = 16) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.sample_pictures = sample_pictures
        self._collector = SampleCollector(sample_pictures)
        self._validated: Optional[tuple[list[Kept], list[Kept], str]] = None  # the last validation's samples
        self._batch: Optional[list[Sample]] = None  # the first training batch, as the model saw it
        self._sample_sets: dict[str, tuple[list[Sample], str]] = {}  # what samples.npz holds: samples, split
        self._layer_stats_drawn: Optional[tuple[int, int]] = None  # the drawn layer_stats.csv's mtime and size
        self.history: dict[str, dict[float, float]] = defaultdict(dict)
        self._samples: Optional[tuple[list[Any], list[str], list[bool]]] = None
        self._fitted = False  # whether this process trained: `zoo test` alone draws no learning curves

    # --- collecting the numbers ------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:  # after every epoch-start hook (fine-tuning multipliers, schedulers) has run
            self._record_learning_rates(trainer)
            if self._batch is None and trainer.is_global_zero:  # after the batch-level augmentation and mixing
                num_classes = getattr(pl_module, "num_classes", None)
                self._batch = batch_samples(batch, trainer.datamodule, num_classes, self.sample_pictures)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record_finished_training_epoch(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Logged at this epoch's start (FineTuning): read before the next epoch's start logs the next value.
        self._record(trainer, ("finetune/",))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record_finished_training_epoch(trainer)

    # --- the samples of each evaluation: first ones and highest losses ------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and self.sample_pictures > 0:
            self._collector.start(pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.sample_pictures > 0:
            self._collector.start(pl_module)

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._collector.batch_start()

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._collector.batch_start()

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not dataloader_idx:
            self._collector.batch_end(pl_module, batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._collector.stop()
        if self.sample_pictures > 0:
            split = f"validation, epoch {trainer.current_epoch}"
            self._validated = (self._collector.first, self._collector.top, split)
            if trainer.state.fn == TrainerFn.VALIDATING and trainer.is_global_zero:  # `zoo validate`: no fit end
                self._draw_samples(trainer, pl_module, *self._validated)
        self._record(trainer, ("val/",))
        if not self._trackers_due(trainer):
            return
        confusion = getattr(pl_module, "val_confusion", None)
        matrix = confusion.compute().tolist() if confusion is not None and confusion.update_count else None
        if trainer.is_global_zero:
            if matrix is not None:
                names = _class_names(trainer, len(matrix))
                title = f"validation confusion matrix, epoch {trainer.current_epoch}"
                figure = partial(_confusion_figure, matrix, names, title)
                self._log_figure(trainer, "pictures/val_confusion_matrix", figure)
            samples = self._samples
            if samples is not None:
                from zoo.plots import plot_samples

                self._log_figure(trainer, "pictures/val_samples", partial(plot_samples, *samples))
        self._samples = None

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx or trainer.sanity_checking:
            return
        self._collector.batch_end(pl_module, batch)
        if batch_idx or self.num_samples < 1:
            return
        if not self._trackers_due(trainer) or not hasattr(pl_module, "val_confusion"):
            return
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            return
        x, y = batch
        if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] in (1, 3)):
            return  # pictures of inputs only make sense for images
        x, y = x[: self.num_samples], y[: self.num_samples]
        with torch.no_grad():  # a handful of samples, once per validation: cheap next to the epoch itself
            predicted = pl_module(x).argmax(-1)
        names = _class_names(trainer, int(getattr(pl_module, "num_classes", 0)))
        pixels = x.detach().float().cpu()
        images = [p[0].numpy() if p.shape[0] == 1 else p.permute(1, 2, 0).numpy() for p in pixels]
        titles = [f"{names[int(t)]} \u2192 {names[int(p)]}" for t, p in zip(y, predicted)]
        self._samples = (images, titles, [bool(t != p) for t, p in zip(y, predicted)])

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer, ("test/",))
        self._collector.stop()
        if trainer.is_global_zero and self.sample_pictures > 0:
            tested = Path(trainer.ckpt_path).name if trainer.ckpt_path else ""
            split = "test" + (f", {tested}" if tested else "")
            self._draw_samples(trainer, pl_module, self._collector.first, self._collector.top, split)
        confusion = getattr(pl_module, "test_confusion", None)
        if confusion is None or not confusion.update_count:
            return
        matrix = confusion.compute().tolist()  # on every process: compute() gathers the counts under DDP
        if not trainer.is_global_zero:
            return
        out = run_folder(trainer)
        out.mkdir(parents=True, exist_ok=True)
        names = _class_names(trainer, len(matrix))
        write_confusion(out / CONFUSION_FILE, matrix, names)
        figure = partial(_confusion_figure, matrix, names, "test confusion matrix")
        self._draw(trainer, "pictures/test_confusion_matrix", out / PICTURES["confusion_matrix"], figure)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fitted = True
        if not trainer.is_global_zero:
            return
        self._draw_history(trainer, to_trackers=True)
        if self._validated is not None:
            self._draw_samples(trainer, pl_module, *self._validated)
        if self._batch:
            self._draw_sample_set(trainer, "train_batch", self._batch, "the first training batch")
        self._draw_layer_stats(trainer)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After `zoo fit` the best checkpoint is tested: the curves gain the test metrics in their title.
        if trainer.is_global_zero and self._fitted and self._has_epochs():
            self._draw_history(trainer, to_trackers=False, only=("learning_curves",))
        if trainer.is_global_zero and self._fitted:  # complete by now, whenever its writer closed it
            self._draw_layer_stats(trainer)

    def state_dict(self) -> dict[str, Any]:
        # A resumed run draws its whole history, not only the epochs after the resume.
        return {"history": {k: dict(v) for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks for test and validate from a checkpoint too: after `zoo fit` tests the
        # best checkpoint, the live history (every epoch) must not fall back to the best one's (up to it).
        if self._has_epochs():
            return
        self.history = defaultdict(dict, {k: dict(v) for k, v in (state_dict.get("history") or {}).items()})

    # --- helpers ---------------------------------------------------------------------------------
    def _record(self, trainer: Trainer, prefixes: tuple[str, ...], epoch: Optional[int] = None) -> None:
        at = float(trainer.current_epoch if epoch is None else epoch)
        for name, value in trainer.callback_metrics.items():
            if name.startswith(prefixes) and not name.endswith("_step"):
                try:
                    self.history[name][at] = float(value)
                except (TypeError, ValueError):  # a non-scalar someone logged; not a curve
                    continue

    def _record_finished_training_epoch(self, trainer: Trainer) -> None:
        """The training metrics of the epoch that just ended, under that epoch, as the loggers got them.

        Lightning calls a callback's ``on_train_epoch_end`` before the task's, where the task logs its epoch
        loss and metrics, and hands them to the loggers (``metrics.csv``) after both: the next epoch's start,
        or the end of training, is the first hook that sees them. Read earlier, each epoch got the one before's.
        """
        if trainer.current_epoch > 0:  # counts finished epochs by now
            self._record(trainer, ("train/",), epoch=trainer.current_epoch - 1)

    def _record_learning_rates(self, trainer: Trainer) -> None:
        """Each group's LR under the LearningRateMonitor's names (``lr-AdamW/head``), as `zoo report` reads them."""
        seen: dict[str, int] = defaultdict(int)
        for optimizer in trainer.optimizers:
            cls = type(optimizer).__name__
            seen[cls] += 1
            prefix = f"lr-{cls}" + (f"-{seen[cls] - 1}" if seen[cls] > 1 else "")
            groups = optimizer.param_groups
            for i, group in enumerate(groups):
                unnamed = len(groups) == 1 and "name" not in group
                name = prefix if unnamed else f"{prefix}/{group.get('name', f'pg{i + 1}')}"
                self.history[name][float(trainer.current_epoch)] = float(group["lr"])

    def _has_epochs(self) -> bool:
        return any(k.startswith(("train/", "val/")) and v for k, v in self.history.items())

    def _draw_history(self, trainer: Trainer, to_trackers: bool, only: tuple[str, ...] = tuple(PICTURES)) -> None:
        from zoo.plots import best_epoch, plot_learning_curves, plot_learning_rates

        if not self._has_epochs():
            return
        out = run_folder(trainer)
        out.mkdir(parents=True, exist_ok=True)
        history = dict(self.history)
        ckpt = trainer.checkpoint_callback
        best_path = getattr(ckpt, "best_model_path", "") or ""
        best = best_epoch(history, [best_path] if best_path else [])
        title = str(out)
        draw: dict[str, Callable[[], Any]] = {
            "learning_curves": lambda: plot_learning_curves(history, best=best, title=title),
            "learning_rate": lambda: plot_learning_rates(history, title=title),
        }
        for name in only:
            if name in draw:
                key = f"pictures/{name}" if to_trackers else None
                self._draw(trainer, key, out / PICTURES[name], draw[name])

    def _draw_samples(
        self, trainer: Trainer, pl_module: LightningModule, first: list[Kept], top: list[Kept], split: str
    ) -> None:
        """``predictions.png`` and ``top_losses.png`` of an evaluation's samples; the samples into samples.npz."""
        try:
            shown = {"predictions": to_samples(first, pl_module, trainer.datamodule)}
            if any(k.loss is not None for k in top):
                shown["top_losses"] = to_samples(top, pl_module, trainer.datamodule)
        except Exception as err:  # noqa: BLE001  # pictures never stop a run
            log.warning("could not draw the sample pictures: %s: %s", type(err).__name__, err)
            return
        for name, samples in shown.items():
            self._draw_sample_set(trainer, name, samples, split)

    def _draw_sample_set(self, trainer: Trainer, name: str, samples: list[Sample], split: str) -> None:
        from zoo.plots_samples import DRAWERS, write_samples

        if not samples:
            return
        out = run_folder(trainer)
        out.mkdir(parents=True, exist_ok=True)
        title = f"{out}: {split}"
        self._sample_sets[name] = (samples, split)
        self._draw(trainer, f"pictures/{name}", out / PICTURES[name], partial(DRAWERS[name], samples, title=title))
        try:
            write_samples(out / SAMPLES_FILE, self._sample_sets)
        except OSError as err:
            log.warning("could not write %s: %s", out / SAMPLES_FILE, err)

    def _draw_layer_stats(self, trainer: Trainer) -> None:
        from zoo.plots_layers import plot_layer_stats

        path = run_folder(trainer) / LAYER_STATS_FILE
        if not path.is_file():  # written by the layer-statistics callback, when the run has it
            return
        stat = path.stat()
        if (stat.st_mtime_ns, stat.st_size) != self._layer_stats_drawn:  # redrawn only when the file grew
            self._layer_stats_drawn = (stat.st_mtime_ns, stat.st_size)
            make = partial(plot_layer_stats, path, title=str(path.parent))
            self._draw(trainer, "pictures/layer_stats", path.parent / PICTURES["layer_stats"], make)

    def _draw(self, trainer: Trainer, key: Optional[str], path: Path, make: Callable[[], Any]) -> None:
        """Draw a figure, save it to ``path`` and log it to the run's trackers under ``key``. A failure to draw is
        a warning: the run's weights and metrics matter more than its pictures."""
        try:
            fig = make()
            if fig is None:
                return
            fig.savefig(path, dpi=120)
            log.info("%s written", path)
            if key:
                log_picture(trainer, key, fig, path)
        except Exception as err:  # noqa: BLE001
            log.warning("could not draw %s: %s: %s", path.name, type(err).__name__, err)

    def _log_figure(self, trainer: Trainer, key: str, make: Callable[[], Any]) -> None:
        try:
            log_picture(trainer, key, make())
        except Exception as err:  # noqa: BLE001
            log.warning("could not log %s: %s: %s", key, type(err).__name__, err)

    def _trackers_due(self, trainer: Trainer) -> bool:
        every = self.every_n_epochs
        return every > 0 and trainer.current_epoch % every == 0 and bool(picture_loggers(trainer))


def _class_names(trainer: Trainer, count: int) -> list[str]:
    names = getattr(trainer.datamodule, "class_names", None) if trainer.datamodule is not None else None
    names = [str(n) for n in names] if names else []
    return names if len(names) == count else [str(i) for i in range(count)]


def _confusion_figure(matrix: list[list[int]], names: list[str], title: str) -> Any:
    from zoo.plots import plot_confusion_matrix

    return plot_confusion_matrix(matrix, names, title=title)
