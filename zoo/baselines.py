"""Strong cheap baselines, scored on the model's own test split: what tells whether deep learning helped.

Every test of a classifier or a regressor (``zoo fit``'s test after training, ``zoo test``) also fits, on the
train + validation data of :meth:`datamodules.base.ZooDataModule.baseline_data`:

- the trivial one: the majority class (classification) or the training mean (regression);
- the strong cheap one of the data's kind: gradient-boosted trees on tables (scikit-learn's
  HistGradientBoosting), MiniRocket on time series (aeon), TF-IDF word 1-2 grams under a logistic regression
  or ridge on text, a logistic regression or ridge on the standardised pixels of images;
- a linear probe where the backbone is pretrained: a logistic regression or ridge on the pretrained backbone's
  frozen ``forward_features``.

Each gives ``baseline/<name>/<metric>`` with the metrics the task logs at test (``acc``, ``f1`` and, for two
classes, ``auroc``; ``mae``, ``rmse`` and ``r2``) and ``baseline/<name>/seconds``. A baseline that cannot run
(a missing optional package, anything else) is skipped with a one-line note: it never loses the user's run.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

import numpy as np

from datamodules.base import BASELINE_CAP, BaselineData

SEED = 0  # every baseline's random_state
MIN_SERIES_LENGTH = 9  # MiniRocket's kernels span 9 steps
# What the comparison is made on: the metric and whether higher is better.
MAIN_METRIC = {"classification": ("acc", True), "regression": ("rmse", False)}

# A baseline's fit: predictions on the test part, and for two classes the positive class's score (else None).
Fit = Callable[[BaselineData, str], tuple[np.ndarray, Optional[np.ndarray]]]


# --- the baselines -----------------------------------------------------------------------------------
MAX_TREE_LEVELS = 255  # HistGradientBoosting's most categories per categorical column


def run_baselines(data: BaselineData, task: str) -> dict[str, float]:
    """The trivial baseline and the strong one of ``data.kind``, fitted on the training part and scored on the
    test part: flat ``{"baseline/<name>/<metric>": value}`` with ``seconds`` for each."""
    classify = task == "classification"
    strong: dict[str, tuple[str, Fit]] = {
        "table": ("hist_gradient_boosting", _trees),
        "series": ("minirocket", _minirocket),
        "text": ("tfidf_logreg" if classify else "tfidf_ridge", _tfidf),
        "image": ("pixels_logreg" if classify else "pixels_ridge", _linear),
    }
    if data.kind not in strong:
        raise ValueError(f"unknown baseline data kind {data.kind!r}; one of {sorted(strong)}")
    results: dict[str, float] = {}
    for name, fit in (("majority" if classify else "mean", _trivial), strong[data.kind]):

        def labelled(fit: Fit = fit) -> tuple[Any, np.ndarray, Optional[np.ndarray]]:
            return (data.y_test, *fit(data, task))

        results.update(timed(name, task, labelled))
    return results


def timed(name: str, task: str, fit: Callable[[], tuple[Any, np.ndarray, Optional[np.ndarray]]]) -> dict[str, float]:
    """Runs one baseline's ``fit`` (which returns the test labels, its predictions of them and, for two classes,
    its scores of the positive class) and scores it; a failure is a one-line note and no keys."""
    start = time.perf_counter()
    try:
        y_test, predictions, scores = fit()
        results = score(task, y_test, predictions, scores)
    except ImportError as err:  # an optional package (aeon)
        package = (err.name or str(err)).split(".")[0]
        print(f"baseline {name} skipped: {package} is not installed (pip install {package})", file=sys.stderr)
        return {}
    except Exception as err:  # noqa: BLE001  (a baseline must never lose the run it is compared with)
        said = " ".join(str(err).split())[:300]
        print(f"baseline {name} failed and is skipped: {type(err).__name__}: {said}", file=sys.stderr)
        return {f"baseline/{name}/failed": 1.0}  # so that the comparison does not pass over it in silence
    results["seconds"] = time.perf_counter() - start
    return {f"baseline/{name}/{metric}": float(value) for metric, value in results.items()}


def score(task: str, y_true: Any, predictions: np.ndarray, scores: Optional[np.ndarray]) -> dict[str, float]:
    """The metrics the task logs at test, with the same definitions (zoo.tasks.classification / regression)."""
    from sklearn.metrics import f1_score, r2_score, roc_auc_score

    if task == "classification":
        y = np.asarray(y_true).astype(np.int64)
        # torchmetrics' macro F1 averages over the classes present in the labels or the predictions, as sklearn's.
        f1 = f1_score(y, predictions, average="macro", zero_division=0)
        out = {"acc": float(np.mean(predictions == y)), "f1": f1}
        if scores is not None and len(np.unique(y)) == 2:
            out["auroc"] = roc_auc_score(y, scores)
        return out
    y = _targets(y_true)
    error = np.asarray(predictions, dtype=np.float64).reshape(y.shape) - y
    return {
        "mae": float(np.abs(error).mean()),
        "rmse": math.sqrt(float(np.square(error).mean())),
        "r2": r2_score(y, y + error, multioutput="uniform_average"),
    }


def _targets(y: Any) -> np.ndarray:
    """Regression targets as ``(N, num_targets)`` floats."""
    y = np.asarray(y, dtype=np.float64)
    return y.reshape(len(y), -1)


def _binary(y_train: np.ndarray) -> bool:
    return set(np.unique(y_train).tolist()) == {0, 1}


def _trivial(data: BaselineData, task: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The majority class of the training part, or its mean."""
    n = len(data.y_test)
    if task == "classification":
        y = np.asarray(data.y_train).astype(np.int64)
        return np.full(n, np.bincount(y).argmax()), np.full(n, 0.5) if _binary(y) else None
    return np.repeat(_targets(data.y_train).mean(0, keepdims=True), n, axis=0), None


def _fitted(model: Any, data: BaselineData, task: str, x_train: Any, x_test: Any) -> tuple[np.ndarray, Any]:
    """Fits a scikit-learn estimator and predicts the test part (a regressor of several targets, one per target
    where the estimator predicts one only)."""
    if task == "classification":
        y = np.asarray(data.y_train).astype(np.int64)
        model.fit(x_train, y)
        scores = None
        if _binary(y):
            # the positive class's probability, or a ridge classifier's decision value: AUROC needs only their order
            proba = getattr(model, "predict_proba", None)
            scores = proba(x_test)[:, 1] if proba is not None else model.decision_function(x_test)
        return model.predict(x_test), scores
    y = _targets(data.y_train)
    if y.shape[1] == 1:
        return model.fit(x_train, y[:, 0]).predict(x_test), None
    from sklearn.multioutput import MultiOutputRegressor

    return MultiOutputRegressor(model).fit(x_train, y).predict(x_test), None


def _trees(data: BaselineData, task: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """scikit-learn's HistGradientBoosting with its defaults, the categorical columns as categories."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    kind = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
    x_train, x_test = (np.asarray(x, dtype=np.float64) for x in (data.x_train, data.x_test))
    # Columns with no value in training say nothing (and crash its binning); a category of more than 255 levels
    # is beyond its categorical support, so its codes go in as numbers.
    kept = [j for j in range(x_train.shape[1]) if not np.isnan(x_train[:, j]).all()]
    categorical = [
        kept.index(j) for j in (data.categorical or []) if j in kept and np.nanmax(x_train[:, j]) < MAX_TREE_LEVELS
    ]
    model = kind(categorical_features=categorical or None, random_state=SEED)
    return _fitted(model, data, task, x_train[:, kept], x_test[:, kept])


def padded_series(series: list[Any], length: int) -> np.ndarray:
    """``(N, C, length)``: each ``(T_i, C)`` series padded at its end with its last value (NaN as 0), so series
    of different lengths, and ones shorter than MiniRocket's 9 steps, become one array."""
    out = []
    for s in series:
        s = np.nan_to_num(np.asarray(s, dtype=np.float64).reshape(len(s), -1))
        tail = np.repeat(s[-1:], length - len(s), axis=0) if len(s) else np.zeros((length, 1))
        out.append(np.concatenate([s, tail]).T)
    return np.stack(out)


def _minirocket(data: BaselineData, task: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """MiniRocket's features (aeon) under a ridge classifier or regressor with a cross-validated penalty."""
    from aeon.transformations.collection.convolution_based import MiniRocket
    from sklearn.linear_model import RidgeClassifierCV, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    length = max(MIN_SERIES_LENGTH, *(len(s) for s in [*data.x_train, *data.x_test]))
    x_train, x_test = padded_series(data.x_train, length), padded_series(data.x_test, length)
    transform = MiniRocket(random_state=SEED)
    features_train = transform.fit_transform(x_train)
    features_test = transform.transform(x_test)
    ridge = RidgeClassifierCV if task == "classification" else RidgeCV
    model = make_pipeline(StandardScaler(with_mean=False), ridge(alphas=np.logspace(-3, 3, 10)))  # as aeon's classifier
    return _fitted(model, data, task, features_train, features_test)


def _tfidf(data: BaselineData, task: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """TF-IDF of word 1- and 2-grams under a logistic regression (classification) or ridge (regression)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline

    head = LogisticRegression(max_iter=1000, random_state=SEED) if task == "classification" else Ridge()
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), head)
    return _fitted(model, data, task, list(data.x_train), list(data.x_test))


def _linear(data: BaselineData, task: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """A logistic regression (classification) or ridge (regression) on standardised, flattened inputs."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    head = LogisticRegression(max_iter=500, random_state=SEED) if task == "classification" else Ridge()
    x_train, x_test = (np.asarray(x, dtype=np.float32).reshape(len(x), -1) for x in (data.x_train, data.x_test))
    return _fitted(make_pipeline(StandardScaler(), head), data, task, x_train, x_test)


# --- beside a run's test --------------------------------------------------------------------------------
def baselines_of_run(
    trainer: Any, model: Any, datamodule: Any, metrics: dict[str, float]
) -> tuple[dict[str, float], str]:
    """The baselines of a classifier's or regressor's test (``{}`` and ``""`` for other tasks or data without
    baselines), and the lines that set them beside the model's ``metrics``: what ``zoo fit`` / ``zoo test``
    write into ``test_metrics.json`` and print."""
    from zoo.tasks import Classifier, Regressor

    task = "classification" if isinstance(model, Classifier) else "regression" if isinstance(model, Regressor) else None
    if task is None or datamodule is None:
        return {}, ""
    limit = tested_samples(trainer, datamodule)
    try:
        data = datamodule.baseline_data()
        if data is not None and limit is not None and limit < len(data.y_test):
            print(
                f"baselines: scored on the first {limit} test samples, as the model was (trainer.limit_test_batches)",
                file=sys.stderr,
            )
            data = BaselineData(
                data.kind, data.x_train, data.y_train, data.x_test[:limit], data.y_test[:limit], data.categorical
            )
        results = run_baselines(data, task) if data is not None else {}
    except Exception as err:  # noqa: BLE001  (the data's baseline must never lose the run it is compared with)
        print(f"baselines skipped: {type(err).__name__}: {' '.join(str(err).split())[:300]}", file=sys.stderr)
        results = {}
    results.update(linear_probe(model, datamodule, task, limit))
    return results, comparison(metrics, results, task)


def tested_samples(trainer: Any, datamodule: Any) -> Optional[int]:
    """How many test samples (the first ones: the test loader keeps their order) the model was scored on, where
    ``trainer.limit_test_batches`` cut the split short on one process; None for the whole split."""
    test_set = getattr(datamodule, "test_set", None)
    batches = list(getattr(trainer, "num_test_batches", None) or [])
    if test_set is None or not batches or not math.isfinite(batches[0]) or trainer.world_size > 1:
        return None
    n = min(len(test_set), int(batches[0]) * datamodule.batch_size)
    return n if n < len(test_set) else None


def comparison(metrics: dict[str, float], baselines: dict[str, float], task: str) -> str:
    """Each baseline's main metric beside the model's, then one sentence: does the model beat the best one?"""
    metric, higher = MAIN_METRIC[task]
    suffix = f"/{metric}"
    scores = {k.split("/")[1]: v for k, v in baselines.items() if k.startswith("baseline/") and k.endswith(suffix)}
    ours = metrics.get(f"test/{metric}")
    if not scores or ours is None:
        return ""
    lines = [
        f"baselines on the same test split, by {metric} ({'higher' if higher else 'lower'} is better):",
        f"  {'model':<24}{ours:.4f}",
    ]
    for name, value in scores.items():
        lines.append(f"  {name:<24}{value:.4f}   ({baselines.get(f'baseline/{name}/seconds', math.nan):.1f} s)")
    failed = [k.split("/")[1] for k in baselines if k.startswith("baseline/") and k.endswith("/failed")]
    if failed:
        lines.append(f"  {', '.join(failed)} failed (see above): the comparison is with the others only")
    best = (max if higher else min)(scores, key=lambda name: scores[name])
    margin = (ours - scores[best]) if higher else (scores[best] - ours)
    if abs(margin) < 5e-5:  # the same score, up to float32 (the model's metrics) against float64
        lines.append(f"the model (test/{metric} {ours:.4f}) ties with the best baseline {best} ({scores[best]:.4f})")
    elif margin > 0:
        lines.append(
            f"the model (test/{metric} {ours:.4f}) beats the best baseline {best} ({scores[best]:.4f}) by {margin:.4f}"
        )
    else:
        lines.append(f"the model (test/{metric} {ours:.4f}) does not beat the baseline {best} ({scores[best]:.4f})")
    return "\n".join(lines)


# --- the linear probe of a pretrained backbone ----------------------------------------------------------
def linear_probe(
    model: Any, datamodule: Any, task: str, test_samples: Optional[int] = None, cap: int = BASELINE_CAP
) -> dict[str, float]:
    """``baseline/linear_probe/...``: a logistic regression or ridge on the frozen features of the model's
    backbone as pretrained (rebuilt with its pretrained weights, not the fine-tuned ones), for train + validation
    (at most ``cap`` samples) and the test split (its first ``test_samples``); {} where it is not pretrained."""
    from zoo.registry import split_source

    hparams = model.hparams
    backbone = str(hparams.get("backbone"))
    if split_source(backbone)[0] is None or hparams.get("pretrained") is False:
        return {}

    def fit() -> tuple[Any, np.ndarray, Optional[np.ndarray]]:
        from zoo.registry import create_backbone

        facts = {"input_shape": tuple(model.input_shape)}
        if hparams.get("vocab_size") is not None:
            facts["vocab_size"] = hparams["vocab_size"]
        kwargs = dict(hparams.get("backbone_kwargs") or {})
        network = create_backbone(backbone, pretrained=hparams.get("pretrained"), **facts, **kwargs).to(model.device)
        train = features(network, [datamodule.train_dataloader(), datamodule.val_dataloader()], cap)
        test = features(network, [datamodule.test_dataloader()], test_samples)
        return test[1], *_linear(BaselineData("features", *train, *test), task)

    return timed("linear_probe", task, fit)


def features(network: Any, loaders: list[Any], limit: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, num_features), labels)`` of the batches of ``loaders``, in eval mode without gradients,
    up to ``limit`` samples."""
    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    device = next(network.parameters()).device
    network.eval()
    xs, ys, seen = [], [], 0
    with torch.no_grad():
        for loader in loaders:
            for x, y in loader:
                if limit is not None and seen >= limit:
                    break
                x = move_data_to_device(x, device)
                out = network.forward_features(**x) if isinstance(x, Mapping) else network.forward_features(x)
                xs.append(out.float().cpu().numpy())
                ys.append(y.numpy())
                seen += len(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x, y) if limit is None else (x[:limit], y[:limit])
