"""zoo.diagnosis and `zoo diagnose`: each rule on synthetic histories (a failure named with its evidence, a healthy
history left alone), findings that another explains demoted, the run folder read and the command's errors; and
(slow) every broken recipe of configs/diagnosis trained and named, with nothing else severe."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import pytest

from tests.conftest import ROOT, run_zoo
from zoo.diagnosis import DIAGNOSIS_FILE, diagnose, read_record, summary
from zoo.diagnosis import rules as r
from zoo.diagnosis.findings import INFO, PROBLEM, WARNING
from zoo.diagnosis.record import ACTIVATION, LAYER_STATS_COLUMNS, LAYER_STATS_FILE, PARAM, LayerSeries, Record

CLASSIFIER = {"model": {"class_path": "zoo.tasks.Classifier", "init_args": {"optimizer": {"init_args": {"lr": 0.1}}}}}


# --- synthetic histories ------------------------------------------------------------------------------------
def record(
    train: Optional[list[float]] = None,
    val: Optional[list[float]] = None,
    train_acc: Optional[list[float]] = None,
    val_acc: Optional[list[float]] = None,
    step_loss: Optional[list[float]] = None,
    layers: Optional[list[LayerSeries]] = None,
    config: Optional[dict[str, Any]] = None,
    **kw: Any,
) -> Record:
    """A 10-class classifier's run with these curves (per epoch; ``step_loss`` per logged step)."""
    epochs = {}
    for name, values in (("train/loss", train), ("val/loss", val), ("train/acc", train_acc), ("val/acc", val_acc)):
        if values is not None:
            epochs[name] = dict(enumerate(values))
    steps = {"train/loss_step": {10 * i: v for i, v in enumerate(step_loss)}} if step_loss else {}
    return Record(
        epochs=epochs,
        steps=steps,
        layers=layers or [],
        config=config if config is not None else CLASSIFIER,
        hparams={"num_classes": 10},
        **kw,
    )


def layer(name: str, kind: str = PARAM, steps: int = 12, **stats: Any) -> LayerSeries:
    """A layer with ``stats`` over ``steps`` logged steps: a constant, or a list of one value per step."""
    found = LayerSeries(name, kind, steps=[10 * i for i in range(steps)], epochs=[i // 4 for i in range(steps)])
    for stat in found.stats:
        value = stats.get(stat)
        found.stats[stat] = list(value) if isinstance(value, list) else [value] * steps
    return found


def mlp(grads: list[float], update: float = 1e-3, **activation: Any) -> list[LayerSeries]:
    """Linear layers with these gradient norms, a ReLU after each but the last (the head)."""
    layers = []
    for i, grad in enumerate(grads):
        layers.append(layer(f"block{i}.linear", grad_norm=grad, update_ratio=update, act_std=1.0, act_mean=0.0))
        if i < len(grads) - 1:
            layers.append(layer(f"block{i}.act", ACTIVATION, act_std=0.5, **activation))
    return layers


HEALTHY = dict(
    train=[1.8, 0.9, 0.5, 0.3, 0.2, 0.15, 0.12, 0.1],
    val=[1.2, 0.7, 0.45, 0.33, 0.28, 0.26, 0.25, 0.25],
    train_acc=[0.5, 0.8, 0.9, 0.93, 0.95, 0.96, 0.97, 0.97],
    val_acc=[0.7, 0.85, 0.9, 0.92, 0.93, 0.93, 0.94, 0.94],
    step_loss=[2.3 * 0.85**i for i in range(30)],
)


def codes(found: list[r.Finding], severity: Optional[str] = None) -> set[str]:
    return {f.code for f in found if severity is None or f.severity == severity}


# --- a healthy run ------------------------------------------------------------------------------------------
def test_a_healthy_run_says_so_in_one_line():
    run = record(**HEALTHY, layers=mlp([0.3, 0.5, 0.8], dead_fraction=0.02))
    assert diagnose(run) == []
    text = summary(diagnose(run), "runs/x/version_0")
    assert text.count("\n") == 0 and "healthy" in text


def test_a_run_too_short_to_judge_says_that_instead():
    text = summary(diagnose(record(train=[2.3], val=[2.2])), "runs/x")
    assert "too few to judge" in text and "healthy" not in text


# --- gradients ------------------------------------------------------------------------------------------------
def test_vanishing_gradients_are_named_with_the_layers_and_the_ratio():
    found = r.vanishing_gradients(record(layers=mlp([1e-9, 1e-8, 1e-6, 1e-3, 1e-2, 0.5])))
    assert found is not None and found.severity == PROBLEM
    assert "block0.linear" in found.evidence and "block5.linear" in found.evidence
    assert found.numbers["ratio"] < 1e-3 and any("He" in remedy for remedy in found.remedies)
    assert r.vanishing_gradients(record(layers=mlp([5e-3, 4e-3, 0.1, 0.5, 0.6, 0.8]))).severity == WARNING
    assert r.vanishing_gradients(record(layers=mlp([0.2, 0.3, 0.5, 0.4, 1.0]))) is None


def test_exploding_gradients_clipping_on_most_steps():
    config = {**CLASSIFIER, "trainer": {"gradient_clip_val": 1.0}}
    found = r.exploding_gradients(record(layers=mlp([3e4, 3e4, 3e5]), config=config))
    assert found is not None and found.severity == PROBLEM and found.numbers["clipped_fraction"] == 1.0
    assert "clipping at 1" in found.evidence


def test_exploding_gradients_growing_by_orders_of_magnitude_or_spiking():
    growing = [0.5 * 2**i for i in range(12)]  # 0.5 to 1,024
    found = r.exploding_gradients(record(layers=mlp([0.1, 0.1, 0.1]) + [layer("head", grad_norm=growing)]))
    assert found is not None and found.severity == PROBLEM and found.numbers["growth"] >= 100
    spiky = [1.0] * 8 + [500.0] + [1.0] * 3
    found = r.exploding_gradients(record(layers=[layer("fc", grad_norm=spiky), layer("a"), layer("b")]))
    assert found is not None and found.severity == WARNING and found.numbers["spikes"] == 1
    # Large gradients at the start that settle are how training begins, not a spike.
    settling = [100.0 * 0.5**i for i in range(12)]
    assert r.exploding_gradients(record(layers=[layer("fc", grad_norm=settling)])) is None


def test_a_group_unfrozen_during_training_is_not_a_gradient_that_grew():
    unfrozen = [None] * 6 + [50.0] * 6  # a fine-tuning schedule unfreezes the backbone half-way
    layers = [layer("backbone", grad_norm=unfrozen), layer("head", grad_norm=0.1), layer("act", ACTIVATION)]
    assert r.exploding_gradients(record(layers=layers)) is None


def test_activations_whose_scale_grows_through_the_layers_explode():
    layers = [layer(f"l{i}", grad_norm=1.0, act_std=8.0**i) for i in range(6)]  # 1 to 32,768
    found = r.exploding_gradients(record(layers=layers))
    assert found is not None and found.severity == PROBLEM and "l0" in found.evidence and "l5" in found.evidence


# --- activations ----------------------------------------------------------------------------------------------
def test_saturated_units():
    found = r.saturated_units(record(layers=mlp([0.1, 0.1, 0.1], saturated_fraction=0.7)))
    assert found is not None and found.severity == PROBLEM and "70% of block0.act" in found.evidence
    assert r.saturated_units(record(layers=mlp([0.1, 0.1, 0.1], saturated_fraction=0.25))).severity == WARNING
    assert r.saturated_units(record(layers=mlp([0.1, 0.1, 0.1], saturated_fraction=0.01))) is None


def test_dead_relus_at_the_end_of_training():
    found = r.dead_relus(record(layers=mlp([0.0, 0.0, 0.1], dead_fraction=0.95)))
    assert found is not None and found.severity == PROBLEM and "95% of the units of block0.act" in found.evidence
    dying = [0.05] * 4 + [0.2] * 4 + [0.3] * 4  # a third died during training
    assert r.dead_relus(record(layers=mlp([0.1, 0.1, 0.1], dead_fraction=dying))).severity == WARNING
    # A quarter never firing from the start (a dense layer over ReLU outputs) is how some layers learn.
    assert r.dead_relus(record(layers=mlp([0.1, 0.1, 0.1], dead_fraction=0.3))) is None
    recovered = [0.9] * 4 + [0.0] * 8  # dead at first, alive again: not dead at the end
    assert r.dead_relus(record(layers=mlp([0.1, 0.1, 0.1], dead_fraction=recovered))) is None


# --- the learning rate ----------------------------------------------------------------------------------------
def test_learning_rate_too_high_needs_the_loss_and_the_step_size_to_agree():
    diverging = dict(train=[40, 80, 7, 5, 6], step_loss=[38, 12, 57, 35, 272, 8, 11, 6, 5.9, 5.1, 11, 6, 3.6, 6.1])
    found = r.lr_too_high(record(**diverging, layers=mlp([0.01, 0.02, 0.6], update=0.4)))
    assert found is not None and found.severity == PROBLEM
    assert "no better than a guess's (2.3)" in found.evidence and "learning rate is 0.1" in found.evidence
    # Small steps: a loss that goes wrong is something else (dead units, data), not the step size.
    assert r.lr_too_high(record(**diverging, layers=mlp([0.01, 0.02, 0.6], update=1e-3))) is None
    # Without layer statistics, the loss alone tells.
    assert r.lr_too_high(record(**diverging)).severity == PROBLEM
    assert r.lr_too_high(record(**HEALTHY, layers=mlp([0.3, 0.5, 0.8]))) is None


def test_learning_rate_too_low():
    flat = dict(train=[2.37, 2.37, 2.36, 2.36, 2.36], step_loss=[2.4, 2.33, 2.31, 2.36] * 4)
    found = r.lr_too_low(record(**flat, layers=mlp([0.5, 0.9, 1.4], update=1e-6)))
    assert found is not None and found.severity == PROBLEM and "1e-06 of their norm" in found.evidence
    assert r.lr_too_low(record(**flat, layers=mlp([0.5, 0.9, 1.4], update=1e-3))) is None
    converged = record(**flat, train_acc=[0.99] * 5, layers=mlp([0.5, 0.9, 1.4], update=1e-6))
    assert r.lr_too_low(converged) is None  # a model already fitted may barely move


# --- the train / validation curves -----------------------------------------------------------------------------
def test_overfitting_turns_up_the_validation_loss_while_the_training_loss_falls():
    memorised = record(
        train=[2.1, 0.5, 0.1, 0.01, 0.003, 0.001, 0.0005, 0.0003],
        val=[1.3, 0.6, 0.4, 0.35, 0.37, 0.4, 0.42, 0.45],
        train_acc=[0.3, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        val_acc=[0.6, 0.85, 0.89, 0.89, 0.89, 0.88, 0.88, 0.88],
    )
    found = r.overfitting(memorised)
    assert found is not None and found.severity == PROBLEM
    assert "lowest at epoch 3 (0.35)" in found.evidence and "accuracy 1.000 on the training data" in found.evidence
    mild = record(
        train=[0.5, 0.3, 0.2, 0.15, 0.12, 0.1],
        val=[0.3, 0.25, 0.22, 0.25, 0.26, 0.27],
        train_acc=[0.8, 0.9, 0.95, 0.96, 0.97, 0.97],
        val_acc=[0.9, 0.93, 0.95, 0.95, 0.95, 0.95],
    )
    assert r.overfitting(mild).severity == WARNING  # the best checkpoint was not overfitted
    assert r.overfitting(record(**HEALTHY)) is None


def test_underfitting_stays_near_a_guess_and_the_majority_class():
    found = r.underfitting(
        record(
            train=[9.3, 7.1, 6.6, 5.2, 4.6, 4.6, 4.1, 3.6, 3.4, 3.7],
            val=[2.48, 2.44, 2.41, 2.39, 2.37, 2.35, 2.33, 2.32, 2.31, 2.31],
            train_acc=[0.1] * 10,
            config={"model": {"class_path": "zoo.tasks.Classifier", "init_args": {"head_dropout": 0.9}}},
            facts={"majority_fraction": 0.1},
        )
    )
    assert found is not None and found.severity == PROBLEM
    assert "training accuracy 0.100" in found.evidence and "head_dropout 0.9" in found.evidence
    assert r.underfitting(record(**HEALTHY, facts={"majority_fraction": 0.1})) is None


def test_best_epoch_first_and_a_validation_set_too_small():
    found = r.best_epoch_first(record(train=[1, 0.5, 0.3, 0.2], val=[0.5, 0.6, 0.7, 0.8]))
    assert found is not None and found.severity == WARNING and "epoch 0" in found.evidence
    found = r.small_validation(record(**HEALTHY, facts={"val_samples": 30}))
    assert found is not None and found.severity == WARNING and "30 validation samples" in found.evidence
    assert r.small_validation(record(**HEALTHY, facts={"val_samples": 500})) is None
    assert r.small_validation(record(**HEALTHY, facts={"val_samples": 0})) is None  # joined: nothing selected on


def test_constant_prediction_scores_as_the_majority_class():
    constant = {"test/acc": 0.1, "test/f1": 0.0182, "baseline/majority/acc": 0.1, "baseline/majority/f1": 0.0182}
    found = r.constant_prediction(record(**HEALTHY, test=constant))
    assert found is not None and found.severity == PROBLEM
    assert r.constant_prediction(record(**HEALTHY, test={**constant, "test/acc": 0.9, "test/f1": 0.9})) is None
    # No baselines run: the training labels' majority share, and the F1 of predicting it.
    found = r.constant_prediction(
        record(**HEALTHY, test={"test/acc": 0.1, "test/f1": 0.018}, facts={"majority_fraction": 0.1})
    )
    assert found is not None
    assert r.constant_prediction(record(**HEALTHY, test={"test/r2": 0.001})).code == "constant_prediction"


def test_a_training_error_is_a_finding():
    found = r.training_stopped(record(facts={"stopped": "the training loss is nan at epoch 0, step 4. Try a lower"}))
    assert (
        found is not None
        and found.severity == PROBLEM
        and found.evidence == "the training loss is nan at epoch 0, step 4"
    )


# --- findings together ------------------------------------------------------------------------------------------
def test_a_finding_another_explains_becomes_info_naming_its_cause():
    run = record(
        train=[2.3] * 6,
        val=[2.3] * 6,
        train_acc=[0.1] * 6,
        facts={"majority_fraction": 0.1},
        layers=mlp([0.0, 0.0, 0.1], dead_fraction=1.0),
    )
    found = {f.code: f for f in diagnose(run)}
    assert found["dead_relus"].severity == PROBLEM
    for consequence in ("vanishing_gradients", "underfitting"):
        assert found[consequence].severity == INFO and found[consequence].title.endswith(
            "(a consequence of the dead ReLUs)"
        )
    assert codes(diagnose(run), PROBLEM) == {"dead_relus"}
    assert list(found)[0] == "dead_relus"  # the most severe first


def test_a_warning_that_explains_a_problem_is_its_cause():
    # Gradients 200 times smaller in the first layers (a warning alone) beside a model that learns nothing.
    run = record(
        train=[2.3, 2.1, 1.9, 1.85, 1.82, 1.8, 1.8, 1.79, 1.8, 1.79],
        val=[2.2, 2.0, 1.95, 1.9, 1.9, 1.89, 1.89, 1.89, 1.9, 1.89],
        train_acc=[0.15, 0.18, 0.19, 0.2, 0.2, 0.19, 0.2, 0.2, 0.19, 0.2],
        facts={"majority_fraction": 0.1},
        layers=mlp([0.001, 0.0005, 0.0003, 0.005, 0.035, 0.24]),
    )
    found = {f.code: f for f in diagnose(run)}
    assert found["vanishing_gradients"].severity == PROBLEM
    assert found["underfitting"].severity == INFO and found["underfitting"].title.endswith("vanishing gradients)")


def test_a_consequence_names_the_first_cause_of_a_chain():
    run = record(
        train=[40, 80, 7, 5, 6],
        step_loss=[38, 12, 57, 35, 272, 8, 11, 6, 5.9, 5.1, 11, 6, 3.6, 6.1],
        layers=mlp([0.01, 0.02, 0.6], update=0.4, dead_fraction=1.0),
        test={"test/acc": 0.1, "test/f1": 0.018, "baseline/majority/acc": 0.1, "baseline/majority/f1": 0.018},
    )
    found = {f.code: f for f in diagnose(run)}
    assert codes(list(found.values()), PROBLEM) == {"lr_too_high"}
    # constant prediction <- dead ReLUs <- the learning rate: the learning rate is named
    assert found["constant_prediction"].title.endswith("(a consequence of the learning rate too high)")


# --- the run folder and the command -------------------------------------------------------------------------
def write_run(folder: Path) -> Path:
    """A run folder as `zoo fit` leaves it: metrics.csv, layer_stats.csv, config, hparams, test metrics."""
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "grad_norm/total", "step", "train/loss", "train/loss_step", "val/loss"])
        for epoch in range(4):
            writer.writerow([epoch, 1.0, 10 * epoch + 9, "", 2.3, ""])
            writer.writerow([epoch, "", 10 * epoch + 9, 2.3, "", 2.3])
    with open(folder / LAYER_STATS_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LAYER_STATS_COLUMNS)
        for step in range(0, 40, 10):
            writer.writerow([step, step // 10, "fc1", "param", 0.0, 1e-6, 0.1, 1.0, "", ""])
            writer.writerow([step, step // 10, "relu", "activation", "", "", 0.0, 0.0, 1.0, ""])
            writer.writerow([step, step // 10, "head", "param", 0.1, 1e-4, 0.0, 0.1, "", ""])
    (folder / "config.yaml").write_text("model:\n  class_path: zoo.tasks.Classifier\n  init_args: {}\n")
    (folder / "hparams.yaml").write_text("num_classes: 10\ninput_shape: !!python/tuple\n- 1\n- 8\n")
    (folder / "test_metrics.json").write_text(json.dumps({"test/acc": 0.1, "test/f1": 0.018}))
    return folder


def test_a_run_folder_is_read_whole(tmp_path: Path):
    run = read_record(write_run(tmp_path / "run"))
    assert [(layer.name, layer.kind) for layer in run.layers] == [("fc1", PARAM), ("relu", ACTIVATION), ("head", PARAM)]
    assert run.layers[1].values("dead_fraction") == [1.0] * 4 and run.layers[1].stats["grad_norm"] == [None] * 4
    assert run.curve("val/loss") == [(e, 2.3) for e in range(4)] and len(run.step_curve("grad_norm/total")) == 4
    assert run.hparams["num_classes"] == 10 and run.test["test/acc"] == 0.1  # Lightning's tuple tag read safely
    assert run.setting("model.class_path") == "zoo.tasks.Classifier"


def test_zoo_diagnose_prints_and_writes_the_findings(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from cli import main

    run = write_run(tmp_path / "run")
    main(["diagnose", str(run)])
    out = capsys.readouterr().out
    assert "PROBLEM  dead ReLUs" in out and "remedies:" in out
    written = json.loads((run / DIAGNOSIS_FILE).read_text())
    assert written["healthy"] is False and written["findings"][0]["code"] == "dead_relus"


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_zoo_diagnose_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], folder):
    from cli import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["diagnose", str(tmp_path / folder)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error: ") and ("no such folder" in err or "has no metrics.csv" in err)


# --- the loggers ---------------------------------------------------------------------------------------------
FINDINGS = [r.Finding("dead_relus", PROBLEM, "dead ReLUs", "99% of the units of fc never fire", ["a lower LR"])]


@pytest.mark.slow  # importing TensorBoard's reader: seconds
def test_tensorboard_gets_the_counts_and_the_findings_as_text(tmp_path: Path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from zoo.run.outputs import log_findings

    logger = TensorBoardLogger(tmp_path)
    log_findings(SimpleNamespace(loggers=[logger], global_step=7), FINDINGS, tmp_path / DIAGNOSIS_FILE)
    events = EventAccumulator(str(logger.log_dir), size_guidance={"tensors": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("diagnosis/problems")] == [(7, 1.0)]
    (text,) = events.Tensors("diagnosis/text_summary")
    assert "dead ReLUs" in text.tensor_proto.string_val[0].decode()


@pytest.mark.slow  # MLflow's SQLite store migrates its schema first: seconds
def test_mlflow_gets_the_counts_and_diagnosis_json_as_an_artifact(tmp_path: Path):
    import mlflow
    from lightning.pytorch.loggers import MLFlowLogger

    from zoo.run.outputs import log_findings

    store = f"sqlite:///{tmp_path}/mlflow.db"
    logger = MLFlowLogger(tracking_uri=store, artifact_location=str(tmp_path / "artifacts"))
    (tmp_path / DIAGNOSIS_FILE).write_text("{}")
    log_findings(SimpleNamespace(loggers=[logger], global_step=7), FINDINGS, tmp_path / DIAGNOSIS_FILE)
    client = mlflow.tracking.MlflowClient(store)
    assert [a.path for a in client.list_artifacts(logger.run_id)] == [DIAGNOSIS_FILE]
    assert client.get_run(logger.run_id).data.metrics == {"diagnosis/problems": 1.0, "diagnosis/warnings": 0.0}


# --- trained runs (slow) ---------------------------------------------------------------------------------------
def problems_in(runs: Path) -> list[dict[str, Any]]:
    """The findings of severity problem in every diagnosis.json under ``runs`` (an experiment's run folders); the
    slow tests of the healthy recipes (tests/test_e2e.py, tests/test_transfer.py) expect none."""
    written = sorted(runs.glob(f"**/{DIAGNOSIS_FILE}"))
    assert written, f"no {DIAGNOSIS_FILE} under {runs}: zoo fit did not diagnose the run"
    return [
        {"run": str(path.parent), **finding}
        for path in written
        for finding in json.loads(path.read_text())["findings"]
        if finding["severity"] == PROBLEM
    ]


# --- the broken recipes, trained (slow) -------------------------------------------------------------------------
# Each recipe of configs/diagnosis fails in one way: the finding it must get (a problem unless named here).
RECIPES = {
    "vanishing_gradients": "vanishing_gradients",
    "saturated_sigmoid": "saturated_units",
    "exploding": "exploding_gradients",
    "dead_relu": "dead_relus",
    "lr_too_high": "lr_too_high",
    "lr_too_low": "lr_too_low",
    "overfitting": "overfitting",
    "underfitting": "underfitting",
    "small_validation": "small_validation",
}
WARNINGS = {"small_validation"}  # a too small validation set is worth a look, not a broken result


def test_every_broken_recipe_is_checked():
    assert set(RECIPES) == {p.stem for p in (ROOT / "configs" / "diagnosis").glob("*.yaml")}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_broken_recipe_is_named_and_nothing_else_is_severe(recipe: str, workdir: Path):
    done = run_zoo(
        "fit",
        "--config",
        f"configs/diagnosis/{recipe}.yaml",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--pictures=false",
        "--baseline=false",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (written,) = (workdir / "runs" / f"diagnosis_{recipe}").glob(f"*/{DIAGNOSIS_FILE}")
    found = {f["code"]: f for f in json.loads(written.read_text())["findings"]}
    expected = RECIPES[recipe]
    assert expected in found, f"{recipe}: {expected} not named; found {found}"
    assert found[expected]["severity"] == (WARNING if recipe in WARNINGS else PROBLEM), found[expected]
    others = {code for code, f in found.items() if f["severity"] == PROBLEM and code != expected}
    assert not others, f"{recipe}: more than its own failure is severe: {[found[c] for c in others]}"
    assert f"{found[expected]['title']}" in done.stdout  # the summary at the end of the fit names it
    assert all(not math.isnan(v) for v in found[expected]["numbers"].values() if isinstance(v, float))
