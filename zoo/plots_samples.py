"""Pictures of samples: predictions beside their true labels, the samples with the highest loss (fastai's
``plot_top_losses``) and a training batch as the model sees it after augmentation (fastai's ``show_batch``).

A :class:`Sample` is one input, already turned into something to draw (an image, a series, a table row or a
text), with what the model made of it. :mod:`zoo.callbacks.samples` makes them from batches while a run
evaluates; :func:`write_samples` keeps them in the run folder (``samples.npz``) so that `zoo report` draws the
same pictures again. Drawing is on matplotlib's Agg canvas (:func:`zoo.plots.new_figure`), without torch.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from zoo.errors import DataError
from zoo.plots import new_figure

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

KINDS = ("image", "series", "table", "text")
SAMPLES_FILE = "samples.npz"
_DPI = 120
_CELL = {"image": (1.7, 2.0), "series": (2.6, 2.0), "table": (2.4, 2.0), "text": (3.2, 2.0)}  # inches per sample
_COLUMNS = {"image": 8, "series": 4, "table": 4, "text": 4}


@dataclass
class Sample:
    """One input and what the model made of it.

    Attributes:
        kind: ``image`` (``(H, W)`` or ``(H, W, 3)``), ``series`` (``(T, C)``), ``table`` (``(F,)`` features)
            or ``text``.
        data: the input: an array, or the text itself.
        true: the label or target value(s), as shown.
        predicted: the prediction, as shown ("" for a batch shown before the model sees it).
        loss: this sample's loss.
        probability: the predicted class's probability (classification).
        wrong: whether the predicted class is not the true one; None where there is no right or wrong.
    """

    kind: str
    data: Any
    true: str = ""
    predicted: str = ""
    loss: Optional[float] = None
    probability: Optional[float] = None
    wrong: Optional[bool] = None


# --- the three pictures ------------------------------------------------------------------------------
def plot_predictions(
    samples: Sequence[Sample], path: Optional[Union[str, Path]] = None, title: str = ""
) -> Optional[Figure]:
    """A grid of samples titled "true -> predicted (probability)", mistakes in red. None without samples."""

    def caption(s: Sample) -> str:
        shown = f"{s.true} \u2192 {s.predicted}"
        return shown + (f" ({s.probability:.2f})" if s.probability is not None else "")

    heading = "sample predictions: true \u2192 predicted (probability)"
    if any(s.wrong for s in samples):
        heading += ", mistakes in red"
    return _grid(samples, caption, _join(heading, title), path)


def plot_top_losses(
    samples: Sequence[Sample], path: Optional[Union[str, Path]] = None, title: str = ""
) -> Optional[Figure]:
    """The samples with the highest loss, highest first, titled as fastai's ``plot_top_losses``: predicted /
    actual, then loss / probability of the prediction. None without samples."""
    ranked = sorted((s for s in samples if s.loss is not None), key=lambda s: -float(s.loss))  # type: ignore[arg-type]

    def caption(s: Sample) -> str:
        first = f"{s.predicted} / {s.true}" if s.predicted else s.true
        second = f"{s.loss:.2f}" + (f" / {s.probability:.2f}" if s.probability is not None else "")
        return f"{first}\n{second}"

    classified = any(s.probability is not None for s in ranked)
    heading = "top losses: predicted / actual\nloss" + (" / probability of the prediction" if classified else "")
    return _grid(ranked, caption, _join(heading, title), path)


def plot_batch(samples: Sequence[Sample], path: Optional[Union[str, Path]] = None, title: str = "") -> Optional[Figure]:
    """A training batch as the model sees it (after augmentation and mixing), titled by its labels."""
    return _grid(
        samples, lambda s: s.true, _join("a training batch as the model sees it (after any augmentation)", title), path
    )


def _join(heading: str, title: str) -> str:
    return f"{title}\n{heading}" if title else heading


DRAWERS = {"predictions": plot_predictions, "top_losses": plot_top_losses, "train_batch": plot_batch}


# --- drawing one grid ------------------------------------------------------------------------------
def _grid(samples: Sequence[Sample], caption: Any, suptitle: str, path: Optional[Union[str, Path]]) -> Optional[Figure]:
    samples = [s for s in samples if s.kind in KINDS]
    if not samples:
        return None
    kind = samples[0].kind
    columns = min(len(samples), _COLUMNS[kind])
    rows = math.ceil(len(samples) / columns)
    width, height = _CELL[kind]
    if kind == "text":  # as tall as the longest text needs
        height = 0.8 + 0.14 * max(len(_wrapped(str(s.data))) for s in samples)
    fig, axes = new_figure(
        max(4.0, width * columns), height * rows + 0.6 + 0.2 * suptitle.count("\n"), nrows=rows, ncols=columns
    )
    limits = _image_limits(samples)
    drawn = axes[: len(samples)]
    for ax, sample in zip(drawn, samples):
        _draw(ax, sample, limits)
        ax.set_title(caption(sample), fontsize=8, color="red" if sample.wrong else "black")
    if kind == "table":  # one scale for every row: a feature far out stands out against the others
        low, high = min(ax.get_ylim()[0] for ax in drawn), max(ax.get_ylim()[1] for ax in drawn)
        for ax in drawn:
            ax.set_ylim(low, high)
    for ax in axes[len(samples) :]:
        ax.set_axis_off()
    fig.suptitle(suptitle, fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=_DPI)
    return fig


def _image_limits(samples: Sequence[Sample]) -> Optional[tuple[float, float]]:
    """One intensity range for every image of a picture (inputs are standardised): what augmentation does to
    brightness and contrast stays visible, which a range per image would undo."""
    import numpy as np

    images = [np.asarray(s.data, dtype=float) for s in samples if s.kind == "image"]
    if not images:
        return None
    values = np.concatenate([i.ravel() for i in images])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = np.percentile(values, [0.5, 99.5])
    return float(low), float(high if high > low else low + 1.0)


def _draw(ax: Any, sample: Sample, limits: Optional[tuple[float, float]]) -> None:
    import numpy as np

    if sample.kind == "image":
        pixels = np.asarray(sample.data, dtype=float)
        low, high = limits or (0.0, 1.0)
        pixels = np.clip((pixels - low) / (high - low), 0.0, 1.0)
        ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
    elif sample.kind == "series":
        values = np.asarray(sample.data, dtype=float)
        values = values.reshape(len(values), -1)[:, :8]  # (T, C): eight channels at most stay readable
        for c in range(values.shape[1]):
            ax.plot(values[:, c], linewidth=0.9, color=f"C{c}")
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
        ax.grid(alpha=0.3)
    elif sample.kind == "table":
        values = np.asarray(sample.data, dtype=float).ravel()[:32]
        colors = ["C3" if v < 0 else "C0" for v in values]
        ax.bar(np.arange(len(values)), values, color=colors, width=0.8)
        ax.axhline(0.0, color="0.3", linewidth=0.6)
        ax.set_xticks([])
        ax.tick_params(labelsize=6)
    else:  # text
        ax.text(0.03, 0.92, "\n".join(_wrapped(str(sample.data))), va="top", ha="left", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("0.8")


def _wrapped(text: str, width: int = 34, lines: int = 6) -> list[str]:
    """A text in at most ``lines`` lines of ``width`` characters, cut with an ellipsis where longer."""
    wrapped = textwrap.wrap(text, width) or [""]
    if len(wrapped) > lines:
        wrapped = [*wrapped[: lines - 1], wrapped[lines - 1][: width - 1] + "\u2026"]
    return wrapped


# --- keeping them in the run folder ------------------------------------------------------------------
def write_samples(path: Union[str, Path], sets: Mapping[str, tuple[Sequence[Sample], str]]) -> None:
    """Save named sets of samples, each with a note of where they come from (the split, the epoch or the
    checkpoint), as one ``.npz`` file: arrays as arrays, the rest as JSON, read back without pickle by
    :func:`read_samples`."""
    import numpy as np

    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for name, (samples, source) in sets.items():
        rows = []
        for i, sample in enumerate(samples):
            row = asdict(sample)
            if isinstance(sample.data, str):
                row["data"] = sample.data
            else:
                key = f"{name}.{i}"
                arrays[key] = np.asarray(sample.data, dtype=np.float16 if sample.kind == "image" else np.float32)
                row["data"] = {"array": key}
            rows.append(row)
        meta[name] = {"source": source, "samples": rows}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def read_samples(path: Union[str, Path]) -> dict[str, tuple[list[Sample], str]]:
    """The sets of samples :func:`write_samples` saved: name -> (samples, where they come from).

    Raises:
        DataError: not such a file.
    """
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            sets = {}
            for name, entry in meta.items():
                samples = []
                for row in entry["samples"]:
                    stored = row.pop("data")
                    value = data[stored["array"]].astype(np.float32) if isinstance(stored, dict) else stored
                    samples.append(Sample(data=value, **row))
                sets[name] = (samples, str(entry.get("source", "")))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a samples file of the zoo ({type(err).__name__}: {err}); delete it") from None
    return sets
