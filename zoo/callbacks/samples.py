"""Samples for a run's pictures, gathered while it evaluates: the first samples of the split and those with the
highest loss, each with what the model made of it, without running the model again.

A forward hook keeps the output the task's own validation or test step computed; each sample's loss is the
task's ``loss`` on that sample alone (vectorised with ``torch.func.vmap`` where the loss allows it). What is
kept between batches is ``count`` samples on the CPU, so the cost is one small loss call and a ``topk`` per
evaluation batch. :func:`to_samples` turns what was kept into :class:`zoo.plots_samples.Sample` pictures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from zoo.plots_samples import Sample

IMAGE_SIDE = 128  # larger images are shrunk to this side: a picture's cell is ~200 pixels wide


@dataclass
class Kept:
    """One sample as evaluated: its input, label and output on the CPU, its loss, its place in the split."""

    x: Any
    label: torch.Tensor
    output: Optional[torch.Tensor]
    loss: Optional[float]
    order: int


def per_sample_losses(loss: Callable[[Any, Any], torch.Tensor], output: torch.Tensor, target: Any) -> torch.Tensor:
    """``loss`` of each sample of a batch on its own, ``(B,)``: the task's loss on a batch of one, for every
    sample at once where ``torch.func.vmap`` can batch it (cross-entropy with class weights cannot), else one
    call per sample."""
    with torch.no_grad():
        try:
            return torch.func.vmap(lambda o, t: loss(o.unsqueeze(0), _unsqueeze(t)).reshape(()))(output, target)
        except Exception:  # noqa: BLE001  # an operation vmap has no rule for: the loop gives the same numbers
            return torch.stack(
                [loss(output[i : i + 1], take(target, slice(i, i + 1))).reshape(()) for i in range(len(output))]
            )


def _unsqueeze(t: Any) -> Any:
    return {k: _unsqueeze(v) for k, v in t.items()} if isinstance(t, Mapping) else t.unsqueeze(0)


def take(x: Any, index: Any) -> Any:
    """Sample(s) ``index`` of a batch's inputs: a tensor, or a dict of them (sequence and text batches)."""
    if isinstance(x, Mapping):
        return {k: take(v, index) for k, v in x.items()}
    return x[index] if isinstance(x, torch.Tensor) else x


def _to_cpu(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _to_cpu(v) for k, v in x.items()}
    return x.detach().cpu().clone() if isinstance(x, torch.Tensor) else x


class SampleCollector:
    """Keeps, over one evaluation epoch, the first ``count`` samples and the ``count`` with the highest loss.

    Call :meth:`start` at the epoch's start, :meth:`batch_start` and :meth:`batch_end` around each batch, and
    :meth:`stop` at its end; ``first`` and ``top`` (highest loss first; of equal losses, the earlier sample)
    then hold what was kept.
    """

    def __init__(self, count: int = 16) -> None:
        self.count = count
        self.first: list[Kept] = []
        self.top: list[Kept] = []
        self._seen = 0
        self._output: Optional[torch.Tensor] = None
        self._handle: Optional[Any] = None

    def start(self, module: nn.Module) -> None:
        self.stop()
        self.first, self.top, self._seen = [], [], 0
        self._handle = module.register_forward_hook(self._keep_output)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def batch_start(self) -> None:
        self._output = None

    def _keep_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._output is None and isinstance(output, torch.Tensor):  # the step's own forward: the first one
            self._output = output.detach()

    def batch_end(self, module: nn.Module, batch: Any) -> None:
        """Keep what this batch adds to the first samples and to the highest losses."""
        output, self._output = self._output, None
        if self.count < 1 or not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            return
        x, y = batch
        size = len(y)
        if output is None or output.dim() == 0 or output.shape[0] != size:
            output = None  # a task whose forward is not what its step compared: inputs and labels only
        losses = None
        loss = getattr(module, "loss", None)
        if output is not None and callable(loss):
            target_of = getattr(module, "target_of", None)
            target = target_of(x, y) if callable(target_of) else y
            try:
                losses = per_sample_losses(loss, output, target).float()
            except Exception:  # noqa: BLE001  # a loss that takes no batch of one: no top losses, the rest stays
                losses = None
        for i in range(min(size, self.count - len(self.first))):
            self.first.append(self._kept(x, y, output, losses, i))
        if losses is not None:
            values, index = losses.nan_to_num(math.inf).topk(min(self.count, size))
            floor = self.top[-1].loss if len(self.top) >= self.count else None
            for value, i in zip(values.tolist(), index.tolist()):
                if floor is not None and value <= floor:  # sorted: none of the rest beats the kept ones either
                    break
                self.top.append(self._kept(x, y, output, losses, i))
            self.top.sort(key=lambda k: (-(k.loss if k.loss is not None and k.loss == k.loss else math.inf), k.order))
            del self.top[self.count :]
        self._seen += size

    def _kept(self, x: Any, y: Any, output: Optional[torch.Tensor], losses: Optional[torch.Tensor], i: int) -> Kept:
        return Kept(
            x=_to_cpu(take(x, i)),
            label=_to_cpu(y[i]),
            output=None if output is None else _to_cpu(output[i]),
            loss=None if losses is None else float(losses[i]),
            order=self._seen + i,
        )


class TestSamples(Callback):
    """Collects the test split's first samples and highest losses (:class:`SampleCollector`) into ``collector``:
    what `zoo report` uses when it tests a run's checkpoint itself."""

    def __init__(self, count: int = 16) -> None:
        self.collector = SampleCollector(count)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.collector.start(pl_module)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.collector.batch_start()

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        self.collector.batch_end(pl_module, batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.collector.stop()


# --- what the pictures show --------------------------------------------------------------------------
def to_samples(kept: list[Kept], module: Any, datamodule: Any) -> list[Sample]:
    """Pictures of kept samples: the input as an image, series, table row or text, the label, the prediction
    (a class and its probability, or values in the targets' units) and the loss. Inputs that are none of
    those are left out."""
    names = class_names(datamodule, getattr(module, "num_classes", None))
    samples = []
    for k in kept:
        shown = input_of(k.x, datamodule)
        if shown is None:
            continue
        kind, data = shown
        sample = Sample(kind=kind, data=data, true=label_text(k.label, names), loss=k.loss)
        if k.output is not None:
            _describe_output(sample, k, module, names)
        samples.append(sample)
    return samples


def _describe_output(sample: Sample, k: Kept, module: Any, names: list[str]) -> None:
    output = k.output.float()  # type: ignore[union-attr]
    predictions = getattr(module, "predictions", None)
    with torch.no_grad():
        value = predictions(output.unsqueeze(0).to(_device_of(module)))[0].cpu() if callable(predictions) else output
    if names and output.dim() == 1 and output.numel() == len(names):  # class logits
        probs = value if callable(predictions) else output.softmax(-1)
        predicted = int(probs.argmax())
        true = int(k.label.argmax()) if k.label.is_floating_point() else int(k.label)
        sample.predicted, sample.probability = names[predicted], float(probs[predicted])
        sample.wrong = predicted != true
    elif value.numel() <= 4:  # a few regression targets; a reconstruction (autoencoder) is not shown as numbers
        sample.predicted = _numbers(value)


def _device_of(module: Any) -> torch.device:
    device = getattr(module, "device", None)  # a LightningModule's
    return device if isinstance(device, torch.device) else torch.device("cpu")


def batch_samples(batch: Any, datamodule: Any, num_classes: Any, count: int) -> list[Sample]:
    """The first ``count`` samples of a training batch with their labels (mixed labels as their two classes)."""
    if count < 1 or not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        return []
    x, y = batch
    names = class_names(datamodule, num_classes)
    samples = []
    for i in range(min(count, len(y))):
        shown = input_of(_to_cpu(take(x, i)), datamodule)
        if shown is not None:
            samples.append(Sample(*shown, true=label_text(_to_cpu(y[i]), names)))
    return samples


def class_names(datamodule: Any, num_classes: Any) -> list[str]:
    """The data's class names, else ``0 .. n-1``; empty when the task has no classes."""
    if not isinstance(num_classes, int) or num_classes < 2:
        return []
    names = getattr(datamodule, "class_names", None) if datamodule is not None else None
    names = [str(n) for n in names] if names else []
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def label_text(label: torch.Tensor, names: list[str]) -> str:
    """A label as shown: the class name; a mixed label (MixUp / CutMix class probabilities) as its two largest
    classes with their shares; a regression target as its values."""
    if names and not label.is_floating_point() and label.numel() == 1:
        return names[int(label)]
    if names and label.is_floating_point() and label.numel() == len(names):
        shares, classes = label.float().topk(2)
        if float(shares[1]) < 0.01:
            return names[int(classes[0])]
        return " + ".join(f"{names[int(c)]} {float(s):.2f}" for s, c in zip(shares, classes))
    return _numbers(label) if label.numel() <= 4 else ""


def _numbers(values: torch.Tensor) -> str:
    return ", ".join(f"{float(v):.3g}" for v in values.flatten())


def input_of(x: Any, datamodule: Any) -> Optional[tuple[str, Any]]:
    """One sample's input as something to draw: ``(kind, data)``, see :class:`zoo.plots_samples.Sample`.

    Images are ``(C, H, W)`` tensors, series ``(T, C)`` floats, table rows ``(F,)`` floats and texts token ids;
    sequence and text samples come as dicts of ``x`` (or ``input_ids``) and a ``mask`` of their real steps.
    """
    if isinstance(x, Mapping):
        values = x.get("x", x.get("input_ids"))
        mask = x.get("mask", x.get("attention_mask"))
        if not isinstance(values, torch.Tensor):
            return None
        if isinstance(mask, torch.Tensor) and mask.dim() == 1:
            values = values[: int(mask.sum())]  # padding is at the end
        if values.is_floating_point():
            return "series", values.float().reshape(len(values), -1).numpy()
        return "text", decode(values, datamodule)
    if not isinstance(x, torch.Tensor):
        return None
    if not x.is_floating_point():
        return ("text", decode(x, datamodule)) if x.dim() == 1 else None
    x = x.float()
    if x.dim() == 3:  # (C, H, W)
        if max(x.shape[1:]) > IMAGE_SIDE:
            scale = IMAGE_SIDE / max(x.shape[1:])
            size = [max(1, round(s * scale)) for s in x.shape[1:]]
            x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", antialias=True)[0]
        return "image", (x.permute(1, 2, 0) if x.shape[0] == 3 else x[0]).numpy()
    if x.dim() == 2:
        return "series", x.numpy()
    if x.dim() == 1:
        return "table", x.numpy()
    return None


def decode(ids: torch.Tensor, datamodule: Any) -> str:
    """Token ids as text: through the data's HuggingFace tokenizer or word vocabulary, else the ids."""
    ids = [int(i) for i in ids.flatten()]
    tokenizer = getattr(datamodule, "hf_tokenizer", None) if datamodule is not None else None
    if tokenizer is not None:
        return str(tokenizer.decode(ids, skip_special_tokens=True))
    vocab = getattr(datamodule, "vocab", None) if datamodule is not None else None
    if isinstance(vocab, Mapping):
        words = {i: w for w, i in vocab.items()}
        return " ".join(words.get(i, "?") for i in ids)
    return " ".join(map(str, ids))
