"""`zoo benchmark`: the table from run folders, resuming, failed runs, bad input, and one real tiny benchmark."""

from __future__ import annotations

import json
import statistics
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from cli import main
from tests.conftest import TINY, run_zoo
from zoo.benchmark_table import DataSet, RunResult, read_references, read_run, write_benchmark
from zoo.commands import benchmark as bench

ACCS = {"ArrowHead": [0.80, 0.84, 0.82], "GunPoint": [0.96, 0.98, 1.0]}
JAPANESE_FCN = "configs/experiments/japanesevowels_fcn.yaml"


def fake_run(out: Path, dataset: str, seed: int, acc: float, baselines: bool = True) -> Path:
    """A finished run's folder as `zoo fit` and the benchmark leave it."""
    folder = out / dataset / f"seed_{seed}"
    folder.mkdir(parents=True)
    metrics = {"test/acc": acc, "test/loss": 0.5}
    if baselines:
        metrics |= {
            "baseline/majority/acc": 0.3,
            "baseline/minirocket/acc": acc - 0.01 * seed,
            "baseline/minirocket/seconds": 2.0,
        }
    (folder / "test_metrics.json").write_text(json.dumps(metrics))
    (folder / "benchmark_run.json").write_text(json.dumps({"returncode": 0, "seconds": 10.0 + seed}))
    return folder


def test_references_ship_with_the_package_and_hold_the_published_figures() -> None:
    text = resources.files("zoo").joinpath("references", "ucr_fawaz2019.csv").read_text()
    assert text.splitlines()[0] == "dataset,model,accuracy,std,runs,source"
    refs = {(r["dataset"], r["model"]): r for r in read_references()}
    expected = {
        ("JapaneseVowels", "ResNet"): 99.2,
        ("JapaneseVowels", "FCN"): 99.3,
        ("JapaneseVowels", "MLP"): 97.6,
        ("GunPoint", "ResNet"): 99.1,
        ("GunPoint", "FCN"): 100.0,
        ("ItalyPowerDemand", "ResNet"): 96.3,
        ("ArrowHead", "ResNet"): 84.5,
        ("OSULeaf", "ResNet"): 97.9,
    }
    for key, accuracy in expected.items():
        assert refs[key]["accuracy"] == accuracy, key
    assert all(r["source"] for r in refs.values())
    assert {d for d, _ in refs} == set(bench.SUITES["aeon-ucr"]) - {"BasicMotions"}  # no published DL figure


def test_table_json_and_picture_from_run_folders(tmp_path: Path) -> None:
    runs = [
        read_run(fake_run(tmp_path, name, seed, acc), name, seed)
        for name, accs in ACCS.items()
        for seed, acc in enumerate(accs)
    ]
    datasets = [DataSet("ArrowHead", n_train=36, n_test=175), DataSet("GunPoint", n_train=50, n_test=150)]
    table, paths = write_benchmark(tmp_path, datasets, runs, "test/acc", "fcn on two sets")

    arrow = next(line for line in table.splitlines() if line.startswith("| ArrowHead"))
    cells = [c.strip() for c in arrow.strip("|").split("|")]
    mean, std = statistics.mean(ACCS["ArrowHead"]) * 100, statistics.stdev(ACCS["ArrowHead"]) * 100
    assert cells[:3] == ["ArrowHead", "36/175", f"{mean:.1f} ± {std:.1f}"] == ["ArrowHead", "36/175", "82.0 ± 2.0"]
    assert cells[3] == "30.0 ± 0.0"  # baseline majority
    assert cells[4] == "81.0 ± 1.7"  # baseline minirocket: 0.80, 0.83, 0.80 (sample std 0.0173)
    assert "ResNet 84.5 ± 1.2 [1]" in cells[5] and "FCN 84.3 ± 1.5 [1]" in cells[5]
    assert cells[6:] == ["11 s", "3/3"]
    assert "| data set | n train/test | model test/acc (%) | baseline majority | baseline minirocket |" in table
    assert "[1] Fawaz et al. 2019, Deep learning for time series classification" in table

    data = json.loads((tmp_path / "benchmark.json").read_text())
    assert data["summary"]["GunPoint"]["model"]["mean"] == pytest.approx(0.98)
    assert data["summary"]["GunPoint"]["model"]["std"] == pytest.approx(0.02)
    assert data["summary"]["GunPoint"]["baselines"]["majority"]["mean"] == pytest.approx(0.3)
    assert len(data["runs"]) == 6 and data["runs"][0]["metrics"]["test/acc"] == 0.80
    assert [p.name for p in paths] == ["benchmark.md", "benchmark.json", "benchmark.png"]
    with Image.open(tmp_path / "benchmark.png") as image:
        image.load()
        assert image.format == "PNG" and 500 <= image.width <= 2000 and 300 <= image.height <= 1000


def test_one_seed_has_no_std_and_a_failed_run_is_listed(tmp_path: Path) -> None:
    ok = read_run(fake_run(tmp_path, "GunPoint", 0, 0.9, baselines=False), "GunPoint", 0)
    failed = RunResult(
        "GunPoint", 1, str(tmp_path / "GunPoint/seed_1"), False, log="x/benchmark.log", reason="exit code 1"
    )
    table, _ = write_benchmark(tmp_path, [DataSet("GunPoint")], [ok, failed], "test/acc", "t")
    row = next(line for line in table.splitlines() if line.startswith("| GunPoint"))
    assert "| 90.0 |" in row and row.endswith("| 1/2 |")
    assert "- GunPoint seed 1: exit code 1; log x/benchmark.log" in table


@pytest.fixture
def fake_fit(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """`zoo fit` replaced: ItalyPowerDemand seed 1 fails, every other run writes its metrics; the calls are kept."""
    calls: list[list[str]] = []

    def execute(command: list[str], log: Path) -> int:
        calls.append(command)
        log.write_text("training...\n")
        if "--data.name=ItalyPowerDemand" in command and "--data.seed=1" in command:
            log.write_text("RuntimeError: boom\n")
            return 1
        (log.parent / "test_metrics.json").write_text(json.dumps({"test/acc": 0.5}))
        return 0

    monkeypatch.setattr(bench, "execute", execute)
    monkeypatch.setattr(bench, "preflight", lambda config, args: None)
    return calls


def test_finished_runs_are_reused_and_a_failed_run_does_not_stop_the_others(
    workdir: Path, fake_fit: list[list[str]], capsys: pytest.CaptureFixture
) -> None:
    fake_run(workdir / "out", "GunPoint", 0, 0.97)
    main(
        [
            "benchmark",
            "--config",
            JAPANESE_FCN,
            "--datasets",
            "GunPoint",
            "ItalyPowerDemand",
            "--seeds",
            "0",
            "1",
            "--out",
            "out",
            "--trainer.max_epochs=1",
        ]
    )
    printed = capsys.readouterr().out
    assert len(fake_fit) == 3  # GunPoint seed 0 was finished
    assert "run 1/4  GunPoint  seed 0  test/acc=0.9700  10 s  (finished before: reused)" in printed
    assert "run 4/4  ItalyPowerDemand  seed 1  FAILED (exit code 1" in printed
    command = fake_fit[0]
    assert command[command.index("--config") + 1] == JAPANESE_FCN and "--trainer.max_epochs=1" in command
    assert {"--data.name=GunPoint", "--seed_everything=1", "--data.seed=1"} <= set(command)
    logger = json.loads(next(a for a in command if a.startswith("--trainer.logger=")).split("=", 1)[1])
    assert logger["init_args"] == {"save_dir": str(workdir / "out"), "name": "GunPoint", "version": "seed_1"}
    log = workdir / "out/ItalyPowerDemand/seed_1/benchmark.log"
    assert f"- ItalyPowerDemand seed 1: exit code 1; log {log}" in (workdir / "out/benchmark.md").read_text()
    assert "| ItalyPowerDemand | 67/1029 | 50.0 |" in printed and "| 1/2 |" in printed

    fake_fit.clear()  # again: only the failed run runs
    main(
        [
            "benchmark",
            "--config",
            JAPANESE_FCN,
            "--datasets",
            "GunPoint",
            "ItalyPowerDemand",
            "--seeds",
            "0",
            "1",
            "--out",
            "out",
        ]
    )
    assert len(fake_fit) == 1 and "--data.seed=1" in fake_fit[0] and "--data.name=ItalyPowerDemand" in fake_fit[0]
    fake_fit.clear()
    main(["benchmark", "--config", JAPANESE_FCN, "--datasets", "GunPoint", "--seeds", "0", "--out", "out", "--rerun"])
    assert len(fake_fit) == 1


def test_dry_run_prints_the_commands_and_runs_nothing(
    workdir: Path, fake_fit: list[list[str]], capsys: pytest.CaptureFixture
) -> None:
    fake_run(workdir / "out", "GunPoint", 0, 0.97)
    train, test = workdir / "Mine_TRAIN.ts", workdir / "Mine_TEST.ts"
    for path in (train, test):
        path.write_text("@problemName Mine\n@classLabel true a b\n@data\n1,2,3:a\n\n4,5,6:b\n")
    main(
        [
            "benchmark",
            "--config",
            JAPANESE_FCN,
            "--datasets",
            "GunPoint",
            f"{train}:{test}",
            "--seeds",
            "0",
            "--out",
            "out",
            "--dry-run",
        ]
    )
    printed = capsys.readouterr().out
    assert fake_fit == [] and not (workdir / "out/benchmark.md").exists()
    assert "# run 1/2 GunPoint seed 0 (finished: reused)" in printed
    assert f"--data.name=null --data.train_file={train} --data.test_file={test}" in printed
    assert bench.resolve_dataset(str(workdir)).n_train == 2  # a folder holding one pair


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "nope.yaml", "--datasets", "GunPoint"], "--config nope.yaml: no such file"),
        (["--config", JAPANESE_FCN, "--datasets", "GunPont"], "aeon ships no .ts files for data.name='GunPont'"),
        (["--config", JAPANESE_FCN, "--datasets", "a.ts:b.ts"], "no such file a.ts, b.ts"),
        (["--config", JAPANESE_FCN, "--datasets", "GunPoint", "GunPoint"], "data set GunPoint given twice"),
        (["--config", JAPANESE_FCN], "give --datasets or --suite"),
        (["--config", JAPANESE_FCN, "--datasetz", "GunPoint"], "did you mean --datasets?"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_code_2(
    workdir: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unknown_override_stops_before_any_run(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--config", JAPANESE_FCN, "--datasets", "GunPoint", "--out", "out", "--bogus=1"])
    assert exit_info.value.code == 2 and "--bogus" in capsys.readouterr().err
    assert not (workdir / "out").exists()


@pytest.mark.slow
def test_a_real_tiny_benchmark(workdir: Path) -> None:
    done = run_zoo(
        "benchmark",
        "--config",
        JAPANESE_FCN,
        "--datasets",
        "ItalyPowerDemand",
        "--seeds",
        "0",
        "--out",
        "bench",
        *TINY,
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = workdir / "bench/ItalyPowerDemand/seed_0"
    acc = json.loads((run / "test_metrics.json").read_text())["test/acc"]
    assert "ItalyPowerDemand" in (run / "config.yaml").read_text() and (run / "benchmark.log").is_file()
    assert f"run 1/1  ItalyPowerDemand  seed 0  test/acc={acc:.4f}" in done.stdout
    assert f"| ItalyPowerDemand | 67/1029 | {acc * 100:.1f} |" in (workdir / "bench/benchmark.md").read_text()
    assert "ResNet 96.3 ± 0.4" in done.stdout and str(workdir / "bench/benchmark.png") in done.stdout


def test_zoo_help_lists_benchmark_and_benchmark_help_shows_its_options(capsys: pytest.CaptureFixture) -> None:
    main(["--help"])
    assert "  benchmark  one recipe over data sets x seeds" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "--suite {aeon-ucr}" in printed and "--dry-run" in printed and "PickupGestureWiimoteZ" in printed
