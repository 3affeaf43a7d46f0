"""The pictures of samples (predictions, top losses, a training batch) and the per-layer heat maps: which samples
are kept, how each kind of input is drawn, and what a tiny fit writes. The real digits run is tests/test_report.py's."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.callbacks.samples import SampleCollector, input_of, label_text, per_sample_losses, to_samples
from zoo.errors import DataError
from zoo.plots_layers import LAYER_STATS_COLUMNS, plot_layer_stats, read_layer_stats
from zoo.plots_samples import Sample, plot_batch, plot_predictions, plot_top_losses, read_samples, write_samples


class _Scores(nn.Module):
    """A "model" whose output for input ``x`` is ``x`` itself: the test chooses every sample's logits, so every loss."""

    num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)


def _evaluate(collector: SampleCollector, module: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    collector.start(module)
    for x, y in batches:
        collector.batch_start()
        module.loss(module(x), y)  # the task's step: one forward, which the hook keeps
        collector.batch_end(module, [x, y])
    collector.stop()


def test_the_collector_keeps_the_highest_losses_of_the_whole_split_and_its_first_samples() -> None:
    torch.manual_seed(0)
    batches = [(torch.randn(n, 3) * 3, torch.randint(0, 3, (n,))) for n in (8, 8, 5, 8)]
    batches[2][0][1] = batches[1][0][6]  # the same logits and label twice: the earlier sample wins the tie
    batches[2][1][1] = batches[1][1][6]
    collector = SampleCollector(count=6)
    module = _Scores()
    _evaluate(collector, module, batches)

    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    losses = F.cross_entropy(x, y, reduction="none")
    order = sorted(range(len(y)), key=lambda i: (-float(losses[i]), i))
    assert [k.order for k in collector.top] == order[:6]
    assert [k.loss for k in collector.top] == pytest.approx(losses[order[:6]].tolist(), rel=1e-6)
    for k in collector.top:  # each kept sample is the one its loss belongs to
        assert torch.equal(k.x, x[k.order]) and int(k.label) == int(y[k.order])
    assert [k.order for k in collector.first] == list(range(6))
    assert module._forward_hooks == {}  # stop() leaves the model as it was


def test_a_model_without_a_loss_gives_samples_but_no_top_losses() -> None:
    collector = SampleCollector(count=4)
    module = nn.Linear(3, 3)
    collector.start(module)
    x, y = torch.randn(5, 3), torch.randint(0, 3, (5,))
    collector.batch_start()
    module(x)
    collector.batch_end(module, [x, y])
    assert len(collector.first) == 4 and collector.top == []
    assert all(k.loss is None and k.output is not None for k in collector.first)


def test_per_sample_losses_are_the_task_loss_of_each_sample() -> None:
    from zoo.tasks import Classifier, Regressor

    torch.manual_seed(0)
    output, target = torch.randn(7, 3), torch.randint(0, 3, (7,))
    plain = Classifier(backbone="mlp", input_shape=(4,), num_classes=3, label_smoothing=0.1)
    expected = F.cross_entropy(output, target, reduction="none", label_smoothing=0.1)
    assert per_sample_losses(plain.loss, output, target) == pytest.approx(expected.tolist(), rel=1e-5)
    # Class weights: vmap has no rule for them, one call per sample gives the loss of that sample alone, which
    # weighted cross-entropy divides by the sample's own weight: the unweighted loss.
    weighted = Classifier(backbone="mlp", input_shape=(4,), num_classes=3, class_weights=[1.0, 5.0, 9.0])
    unweighted = F.cross_entropy(output, target, reduction="none")
    assert per_sample_losses(weighted.loss, output, target) == pytest.approx(unweighted.tolist(), rel=1e-5)
    regressor = Regressor(backbone="mlp", input_shape=(4,), num_targets=1, target_mean=[100.0], target_std=[10.0])
    values, predicted = torch.tensor([90.0, 130.0]), torch.tensor([[0.0], [1.0]])
    assert per_sample_losses(regressor.loss, predicted, values) == pytest.approx([1.0, 4.0])  # standardised units


def test_each_kind_of_input_becomes_a_picture() -> None:
    kind, image = input_of(torch.rand(3, 300, 150), None)
    assert kind == "image" and image.shape == (128, 64, 3)  # shrunk to 128 pixels, channels last
    assert input_of(torch.rand(1, 8, 8), None)[1].shape == (8, 8)
    series = {"x": torch.arange(20.0).reshape(10, 2), "mask": torch.tensor([True] * 6 + [False] * 4)}
    kind, values = input_of(series, None)
    assert kind == "series" and values.shape == (6, 2) and values[-1].tolist() == [10.0, 11.0]  # padding cut

    class Words:
        vocab = {"<pad>": 0, "<unk>": 1, "not": 2, "bad": 3}

    text = {"x": torch.tensor([2, 3, 1, 0, 0]), "mask": torch.tensor([True, True, True, False, False])}
    assert input_of(text, Words()) == ("text", "not bad <unk>")
    assert input_of(torch.tensor([2, 3]), None) == ("text", "2 3")  # no vocabulary: the ids
    kind, row = input_of(torch.tensor([0.5, -1.0, 2.0]), None)
    assert kind == "table" and row.tolist() == [0.5, -1.0, 2.0]


def test_labels_as_shown() -> None:
    names = ["cat", "dog", "fox"]
    assert label_text(torch.tensor(2), names) == "fox"
    assert label_text(torch.tensor([0.3, 0.0, 0.7]), names) == "fox 0.70 + cat 0.30"  # MixUp / CutMix
    assert label_text(torch.tensor([0.0, 1.0, 0.0]), names) == "dog"
    assert label_text(torch.tensor(151.25), []) == "151"


def test_classifier_samples_name_the_predicted_class_and_its_probability() -> None:
    from zoo.callbacks.samples import Kept

    class Data:
        class_names = ["cat", "dog", "fox"]

    kept = [Kept(torch.rand(3, 4, 4), torch.tensor(0), torch.tensor([0.0, 2.0, 0.0]), 1.9, 0)]
    (sample,) = to_samples(kept, _Scores(), Data())
    assert (sample.true, sample.predicted, sample.wrong) == ("cat", "dog", True)
    assert sample.probability == pytest.approx(np.exp(2) / (np.exp(2) + 2))


def _samples(kind: str, losses: list[float]) -> list[Sample]:
    rng = np.random.default_rng(0)
    data = {"image": lambda: rng.random((8, 8)), "series": lambda: rng.random((20, 3)), "table": lambda: rng.random(5)}
    return [
        Sample(kind, data[kind]() if kind in data else f"text {i}", f"t{i}", f"p{i}", loss, 0.5, wrong=i % 2 == 1)
        for i, loss in enumerate(losses)
    ]


def test_top_losses_are_drawn_highest_first_with_predicted_actual_loss_probability() -> None:
    fig = plot_top_losses(_samples("image", [0.5, 3.25, 1.0]))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["p1 / t1\n3.25 / 0.50", "p2 / t2\n1.00 / 0.50", "p0 / t0\n0.50 / 0.50"]
    colours = [ax.title.get_color() for ax in fig.axes if ax.get_title()]
    assert colours == ["red", "black", "black"]  # mistakes in red
    assert "predicted / actual" in fig.get_suptitle()


def test_series_text_and_table_samples_are_drawn_as_lines_words_and_bars() -> None:
    series = plot_predictions(_samples("series", [1.0, 2.0]))
    assert [len(ax.get_lines()) for ax in series.axes[:2]] == [3, 3]  # one line per channel
    texts = plot_predictions(_samples("text", [1.0]))
    assert "text 0" in [t.get_text() for t in texts.axes[0].texts]
    table = plot_batch(_samples("table", [1.0, 1.0]))
    assert len(table.axes[0].patches) == 5 and table.axes[0].get_title() == "t0"
    assert table.axes[0].get_ylim() == table.axes[1].get_ylim()  # one scale for every row
    assert plot_predictions([]) is None


def test_samples_file_round_trip(tmp_path: Path) -> None:
    sets = {"top_losses": (_samples("image", [2.0, 1.0]), "test"), "predictions": (_samples("text", [1.0]), "val")}
    write_samples(tmp_path / "samples.npz", sets)
    back = read_samples(tmp_path / "samples.npz")
    assert back.keys() == sets.keys() and back["top_losses"][1] == "test"
    first, text = back["top_losses"][0][0], back["predictions"][0][0]
    assert first.data == pytest.approx(sets["top_losses"][0][0].data, abs=1e-3)  # kept as float16
    assert (first.true, first.loss, first.wrong, text.data) == ("t0", 2.0, False, "text 0")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a samples file"):
        read_samples(tmp_path / "bad.npz")


# --- per-layer heat maps --------------------------------------------------------------------------------------
def _write_layer_stats(path: Path) -> None:
    """Three parameters and two activations over four logging steps of two epochs; one gradient not logged."""
    rows = []
    for step, epoch in ((0, 0), (5, 0), (10, 1), (15, 1)):
        for i, layer in enumerate(["stem.weight", "block.weight", "head.weight"]):
            grad = "" if (layer, step) == ("block.weight", 5) else 10.0 ** (i - 3) * (step + 1)
            rows.append([step, epoch, layer, "param", grad, 1e-3, "", "", "", ""])
        for layer, dead in (("stem.act", 0.1), ("block.act", 0.9)):
            rows.append([step, epoch, layer, "activation", "", "", 0.2, 1.5, dead, step / 20])
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([LAYER_STATS_COLUMNS, *rows])


def test_layer_stats_become_heat_maps_in_forward_order(tmp_path: Path) -> None:
    _write_layer_stats(tmp_path / "layer_stats.csv")
    maps = read_layer_stats(tmp_path / "layer_stats.csv")
    assert set(maps) == {"grad_norm", "update_ratio", "act_mean", "act_std", "dead_fraction", "saturated_fraction"}
    grad = maps["grad_norm"]
    assert grad.layers == ["stem.weight", "block.weight", "head.weight"] and grad.steps == [0, 5, 10, 15]
    assert grad.epochs == [0, 0, 1, 1]
    assert grad.values[0].tolist() == pytest.approx([1e-3, 6e-3, 11e-3, 16e-3])
    assert np.isnan(grad.values[1, 1])  # an empty cell is no value, not zero
    assert maps["dead_fraction"].layers == ["stem.act", "block.act"]

    fig = plot_layer_stats(tmp_path / "layer_stats.csv", tmp_path / "layer_stats.png")
    heat_axes = [ax for ax in fig.axes if ax.get_images()]
    titles = [ax.get_title() for ax in heat_axes]
    assert titles[0] == "gradient norm (log scale)" and "fraction of dead units" in titles
    image = heat_axes[0].get_images()[0]
    assert image.get_array().shape == (3, 4) and type(image.norm).__name__ == "LogNorm"
    assert [t.get_text() for t in heat_axes[0].get_yticklabels()] == grad.layers
    dead = heat_axes[titles.index("fraction of dead units")].get_images()[0]
    assert (dead.norm.vmin, dead.norm.vmax) == (0.0, 1.0)
    assert (tmp_path / "layer_stats.png").stat().st_size > 10_000


def test_a_layer_stats_file_in_another_format_is_named(tmp_path: Path) -> None:
    (tmp_path / "layer_stats.csv").write_text("step,layer,grad_norm\n0,a,1.0\n")
    with pytest.raises(DataError, match="no column epoch, kind, update_ratio"):
        read_layer_stats(tmp_path / "layer_stats.csv")
    (tmp_path / "layer_stats.csv").write_text(",".join(LAYER_STATS_COLUMNS) + "\n")
    assert plot_layer_stats(tmp_path / "layer_stats.csv") is None  # no rows yet: no picture


def test_report_draws_the_heat_maps_of_a_run_that_has_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from zoo.commands.report import main as report
    from zoo.errors import ZooError

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,train/loss_epoch,val/loss\n0,9,1.0,\n0,9,,0.9\n")
    with pytest.raises(ZooError, match="has no layer_stats.csv"):
        report([str(run), "--plots", "layer_stats"])
    _write_layer_stats(run / "layer_stats.csv")
    report([str(run), "--plots", "layer_stats"])
    assert capsys.readouterr().out.split() == [str(run / "layer_stats.png")]
    assert (run / "layer_stats.png").stat().st_size > 10_000


# --- a tiny fit in this process --------------------------------------------------------------------------------
def test_a_fit_and_test_draw_the_sample_pictures_from_the_steps_own_outputs(tmp_path: Path) -> None:
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from zoo.callbacks.pictures import RunPictures
    from zoo.tasks import Classifier

    class LayerStats(Callback):
        def on_train_end(self, trainer, pl_module):  # before RunPictures draws at the end of fit
            _write_layer_stats(Path(trainer.log_dir) / "layer_stats.csv")

    class Mixed(Classifier):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            x, y = batch
            if self.trainer.training:  # what MixUp does to a training batch once it is on the device
                y = 0.7 * F.one_hot(y, 3).float() + 0.3 * F.one_hot(y.roll(1), 3).float()
            return [x, y]

    torch.manual_seed(0)
    model = Mixed(backbone="mlp", backbone_kwargs={"hidden_sizes": [8]}, input_shape=(6,), num_classes=3)
    train_y = torch.randint(0, 3, (48,))
    train = DataLoader(TensorDataset(torch.randn(48, 6), train_y), batch_size=8)
    test_x, test_y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    test = DataLoader(TensorDataset(test_x, test_y), batch_size=16)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=CSVLogger(tmp_path),
        callbacks=[LayerStats(), RunPictures(sample_pictures=5)],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train, test)
    run = Path(trainer.log_dir)
    drawn_at_fit_end = read_samples(run / "samples.npz")
    assert drawn_at_fit_end["top_losses"][1] == "validation, epoch 1"
    assert (run / "layer_stats.png").is_file()
    trainer.test(model, test, verbose=False)

    sets = read_samples(run / "samples.npz")
    model.eval()
    with torch.no_grad():
        logits = model(test_x)
    losses = F.cross_entropy(logits, test_y, reduction="none")
    top = losses.argsort(descending=True)[:5]
    shown = sets["top_losses"][0]
    assert sets["top_losses"][1] == "test"
    assert [s.loss for s in shown] == pytest.approx(losses[top].tolist(), rel=1e-5)
    assert [s.true for s in shown] == [str(int(test_y[i])) for i in top]
    assert [s.predicted for s in shown] == [str(int(logits[i].argmax())) for i in top]
    assert np.allclose([s.data for s in sets["predictions"][0]], test_x[:5].numpy())  # the split's first samples
    batch, source = sets["train_batch"]
    assert source == "the first training batch"  # as the model saw it: after the transfer hooks mixed it
    first = train_y[:8]
    mixed = [f"{a} 0.70 + {b} 0.30" if a != b else str(int(a)) for a, b in zip(first, first.roll(1))]
    assert [s.true for s in batch] == mixed[:5] and any("+" in s.true for s in batch)
    for name in ("predictions", "top_losses", "train_batch", "layer_stats"):
        assert (run / f"{name}.png").stat().st_size > 10_000, name
