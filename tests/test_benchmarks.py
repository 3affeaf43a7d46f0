"""The benchmark machinery (benchmarks/): figures computed from both sides, the JSON a run writes, contention
marking, the exit status, and the batched loading candidate. Sizes are minimal; nothing here asserts a timing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import benchmarks.__main__ as runner
from benchmarks import common, overhead
from benchmarks.batched import BatchedView, batched_loader, crop_flip, rotate_resized_crop
from benchmarks.common import Figure, added, ratio
from benchmarks.startup import heavy_report, parse_importtime


# --- figures ---------------------------------------------------------------------------------------------
def test_ratio_and_added_are_computed_from_both_sides():
    r = ratio("throughput", zoo=90.0, plain=100.0, side_unit="samples/s", at_least=0.95)
    assert (r.measured, r.zoo, r.plain, r.passed, r.target) == (0.9, 90.0, 100.0, False, ">= 0.95 x")
    a = added("per step", zoo=2.0, plain=1.5, per=1000, scale=1e3, unit="ms", side_unit="s", at_most=0.6)
    assert a.measured == pytest.approx(0.5) and a.passed is True and a.target == "<= 0.6 ms"
    reported = Figure("no target", 1.0, "s")
    assert reported.passed is None and reported.to_json()["target"] == "(reported)"


def test_loss_difference_uses_numpys_five_decimals():
    assert overhead.loss_difference("l", [1.0, 2.0], [1.0 + 1e-5, 2.0]).passed is True
    assert overhead.loss_difference("l", [1.0, 2.0], [1.0, 2.0 + 2e-5]).passed is False


# --- contention ------------------------------------------------------------------------------------------
def test_others_cpu_use_marks_a_benchmark_contended(monkeypatch: pytest.MonkeyPatch):
    busy = iter([100.0, 104.0])  # the machine was busy 4 CPU seconds in the window ...
    own = iter([10.0, 11.0])  # ... of which this process used 1
    monkeypatch.setattr(common, "_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(common, "_own_seconds", lambda: next(own))
    clock = iter([0.0, 2.0])  # a 2-second window: others used 1.5 cores on average
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    with common.watch_load(start_loadavg=0.0) as window:
        pass
    assert window.others_cores == pytest.approx(1.5) and window.contended
    assert len(window.loadavg_start) == len(window.loadavg_end) == 3


def test_a_loaded_machine_before_the_run_marks_it_contended(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(common, "CONTENDED_CORES", math.inf)
    with common.watch_load(start_loadavg=common.CORES + 1.0) as window:
        pass
    assert window.contended
    with common.watch_load(start_loadavg=0.0) as window:
        pass
    assert not window.contended


# --- a real run, minimal size -----------------------------------------------------------------------------
def test_overhead_run_writes_json_with_both_sides(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "results.json"
    assert runner.main(["--tiny", "--only", "overhead", "--out", str(out)]) == 0  # missed targets do not fail it
    data = json.loads(out.read_text())
    assert data["mode"] == "tiny" and len(data["loadavg_before"]) == 3
    assert {"cpu", "cores", "torch", "lightning", "omp_wait_policy"} <= set(data["machine"])
    result = data["benchmarks"]["overhead"]
    assert result["error"] is None and isinstance(result["contended"], bool)
    assert {"loadavg_start", "loadavg_end", "others_cores", "seconds"} <= set(result["load"])
    figures = {f["name"]: f for f in result["figures"]}
    bare = figures["added time per step, bare Trainer"]
    steps = overhead.SIZES["tiny"]["epochs"] * overhead.SIZES["tiny"]["steps_per_epoch"]
    assert bare["zoo"] > 0 and bare["plain"] > 0
    assert bare["measured"] == pytest.approx((bare["zoo"] - bare["plain"]) / steps * 1e3)
    assert isinstance(bare["passed"], bool) and bare["target"] == "<= 0.6 ms"
    stats = figures["layer statistics for zoo diagnose, % of the training loop's CPU time with zoo fit's defaults"]
    assert stats["zoo"] > 0 and stats["measured"] == pytest.approx(stats["zoo"] / stats["plain"] * 100)
    losses = figures["loss difference zoo vs plain, last epoch train and val"]
    assert losses["passed"], losses  # the same network, data, order and optimizer on both sides
    assert "added time per step" in capsys.readouterr().out  # the table was printed


def test_parity_throughput_ratio_is_zoo_over_plain():
    from benchmarks import parity

    spec = parity.recipe(parity.CNN_RECIPE)
    data = torch.utils.data.Subset(parity.digits_data()[0], range(128))
    figures = parity.throughput("cnn", spec, data, (1, 8, 8), 10, 64, epochs=1, repeats=1, warmup=False)
    speed, losses = figures
    assert speed.measured == pytest.approx(speed.zoo / speed.plain) and speed.side_unit == "samples/s"
    assert 0 < speed.details["zoo_fit_setup_seconds"] < 5  # the loop is timed; fit's set-up is reported beside it
    # The zoo trains the CNN in channels_last, the plain loop contiguous: equal to rounding after 2 steps, but not
    # held to 5 decimals (a long run drifts).
    assert losses.measured < 1e-5 and losses.at_most is None, losses.details


@pytest.mark.slow  # two fits of a timm ResNet-18 built through the CLI: ~10 s, most of it importing timm
def test_feature_cache_compares_cache_off_and_on_with_the_same_results():
    from benchmarks import feature_cache

    figures = {f.name.split(": ", 1)[1]: f for f in feature_cache.run("tiny")}
    speed = figures["epoch after the first, cache off / on"]
    assert speed.measured == pytest.approx(speed.zoo / speed.plain) and speed.sides == ("cache off", "cache on")
    assert (
        speed.at_least == 10.0 and len(speed.details["epochs_on"][0]) == feature_cache.SIZES["tiny"]["images"]["epochs"]
    )
    assert speed.details["cache_lines"][0].startswith("feature cache: on;")
    assert figures["largest test metric difference, cache on vs off"].passed  # the same run, computed once
    assert figures["largest head weight difference after training"].measured < 1e-6


def test_a_broken_benchmark_fails_the_run_and_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def broken(mode: str) -> list[Figure]:
        raise RuntimeError("boom")

    monkeypatch.setattr(overhead, "run", broken)
    out = tmp_path / "r.json"
    assert runner.main(["--tiny", "--only", "overhead", "--out", str(out)]) == 2
    assert "boom" in json.loads(out.read_text())["benchmarks"]["overhead"]["error"]


def test_strict_fails_only_on_a_missed_target_without_contention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(overhead, "run", lambda mode: [Figure("slow", 2.0, "ms", at_most=1.0)])
    monkeypatch.setattr(runner, "loadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(common, "CONTENDED_CORES", math.inf)
    args = ["--tiny", "--only", "overhead", "--out", str(tmp_path / "r.json")]
    assert runner.main(args) == 0
    assert runner.main([*args, "--strict"]) == 1
    monkeypatch.setattr(common, "CONTENDED_CORES", -1.0)  # every run contended: a miss may be the machine's
    assert runner.main([*args, "--strict"]) == 0


# --- pieces ----------------------------------------------------------------------------------------------
def test_importtime_tree_gives_each_module_its_chain_of_importers():
    stderr = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:    100000 |     100000 |     transformers.utils",
            "import time:    200000 |     300000 |   transformers",
            "import time:     50000 |     350000 | torchmetrics",
            "import time:        10 |         10 | json",
        ]
    )
    rows = parse_importtime(stderr)
    assert rows[0] == ("transformers.utils", 0.1, 0.1, ["torchmetrics", "transformers"])
    report = heavy_report(rows, ("transformers", "timm"))
    assert set(report) == {"transformers"} and report["transformers"]["seconds"] == 0.3
    assert report["transformers"]["via"] == "torchmetrics > transformers"


def test_batched_view_reads_whole_batches_in_sampler_order():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    batches = list(batched_loader(BatchedView(x, y, None), batch_size=4))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(10))
    assert all(torch.equal(bx[:, 0].long(), by) for bx, by in batches)


def test_batched_crop_flip_is_a_crop_or_a_mirrored_crop_of_each_image():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = crop_flip(padding=0)(images)  # no padding: each image is itself or mirrored
    assert out.shape == images.shape and out.dtype == torch.uint8
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 16
    padded = crop_flip(padding=2)(images)
    assert padded.shape == images.shape


def test_batched_rotate_crop_keeps_the_shape_and_is_the_identity_at_zero():
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(rotate_resized_crop(0.0, (1.0, 1.0), (1.0, 1.0))(x), x, atol=1e-5)
    assert rotate_resized_crop(10.0, (0.8, 1.0), (0.9, 1.1))(x).shape == x.shape


# --- the GPU checks (benchmarks/gpu.py): what runs without a GPU ----------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_checks_refuse_without_cuda_and_write_nothing(tmp_path: Path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 77, result.stderr[-2000:]  # "skipped", not passed and not failed
    assert "no CUDA device here" in result.stderr and "nothing was run" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_gpu_checks_each_have_a_limit_within_eight_minutes_and_a_runner():
    from benchmarks import gpu

    assert set(gpu.LIMITS) == set(gpu.RUNNERS) == set(gpu.CHECKS)
    assert sum(gpu.LIMITS.values()) <= gpu.TOTAL <= 8 * 60
    if torch.cuda.device_count() < 2:
        assert gpu.check_ddp().startswith("skipped: ")


def test_gpu_run_reports_figures_skips_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The orchestration with the checks faked: a GPU-less machine can still run everything but the checks.
    from benchmarks import gpu
    from benchmarks.common import LoadWindow, Result

    fakes = {
        "precision": ([Figure("bf16-mixed: loss ratio", 0.5, "", at_most=0.9)], None, None),
        "ddp": ([], None, "skipped: 1 GPU here"),
        "fsdp": ([], "ran past its limit of 120 s", None),
    }
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu, "describe_gpus", lambda: {"gpus": [{"name": "Fake GPU", "memory_gib": 80.0}]})
    limits = {}

    def fake_check(name: str, limit: float):
        limits[name] = limit
        figures, error, skipped = fakes[name]
        return Result(name, figures, LoadWindow((0.0, 0.0, 0.0)), error), skipped

    monkeypatch.setattr(gpu, "run_check", fake_check)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--only", *fakes, "--out", str(out)]) == 2  # a check that errs fails the run
    data = json.loads(out.read_text())["checks"]
    assert data["precision"]["figures"][0]["passed"] is True and data["ddp"]["skipped"] == "skipped: 1 GPU here"
    assert "limit" in data["fsdp"]["error"] and limits == {n: gpu.LIMITS[n] for n in fakes}
    fakes["fsdp"] = ([Figure("changed groups", 0.0, "", at_least=1.0)], None, None)
    assert gpu.main(["--only", *fakes, "--out", str(out)]) == 1  # a missed target


@pytest.mark.slow
def test_gpu_throughput_twins_start_from_the_same_loss_on_cpu():
    # The zoo and its plain twin as the throughput check runs them (here on the CPU, tiny): the same network, seed
    # and batch give the same first loss; both time only the steps after the warm-up.
    from benchmarks import gpu
    from benchmarks.gpu_twins import plain_run, zoo_run

    spec, pool, shape, warmup = gpu.resnet_sides("cpu", "tiny")
    zoo = zoo_run(spec, pool, shape, "cpu", "32-true", warmup)
    plain = plain_run(spec, pool, shape, "cpu", "32-true", warmup, channels_last=True)
    steps = gpu.SIZES["tiny"]["warmup"] + gpu.SIZES["tiny"]["timed"]
    assert len(zoo["losses"]) == len(plain["losses"]) == steps
    assert zoo["losses"][0] == pytest.approx(plain["losses"][0], rel=1e-4)
    assert zoo["channels_last"] and zoo["seconds"] > 0 and plain["seconds"] > 0


def test_image_folder_figures_set_the_default_against_the_best_plain_decoding_loader():
    from benchmarks import image_folder

    best = {
        "zoo default (2 workers)": 90.0,
        "plain PIL decode + PIL resize": 60.0,
        "plain decode_jpeg + torch resize": 100.0,
        "zoo draft": 99.0,
        "zoo cache_dir, epoch 2+": 450.0,
        "plain in memory, 2 workers": 500.0,
        "plain in memory, whole batches": 300.0,
    }
    default, cache, against_memory, draft = image_folder.figures(10, best, cache_first_epoch=80.0)
    assert (default.zoo, default.plain, default.measured, default.passed) == (90.0, 100.0, 0.9, True)
    assert default.sides == ("zoo default (2 workers)", "plain decode_jpeg + torch resize")
    assert cache.measured == pytest.approx(5.0) and cache.details["cache_first_epoch"] == 80.0
    assert against_memory.plain == 500.0 and draft.measured == pytest.approx(1.1)
