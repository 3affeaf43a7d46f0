"""Every YAML under configs/ loads: parsed by the CLI in the role its folder gives it (a complete config, or a
data / model / trainer / logger group under a complete one) and type-checked with --print_config, so a renamed
argument cannot leave a config behind that only fails when a user runs it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
BASE = "configs/experiments/digits_mlp.yaml"
# folder -> the arguments that put one of its files in its place (a complete config around a group file)
ROLES = {
    "experiments": lambda path: ["--config", path],
    "recipes": lambda path: ["--config", path],
    "diagnosis": lambda path: ["--config", path],  # broken on purpose, but each a complete config
    "data": lambda path: ["--model", "configs/model/mlp.yaml", "--data", path],
    "model": lambda path: ["--data", "configs/data/digits.yaml", "--model", path],
    "trainer": lambda path: ["--config", BASE, "--trainer", path],
    "logger": lambda path: ["--config", BASE, "--trainer.logger", path],
}
CLI_CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in CONFIGS.rglob("*.yaml") if p.parent.name != "search")
SEARCH_SPACES = sorted(p.relative_to(ROOT).as_posix() for p in (CONFIGS / "search").glob("*.yaml"))


def test_every_config_folder_has_a_role():
    folders = {p.parent.name for p in CONFIGS.rglob("*.yaml")}
    assert folders <= set(ROLES) | {"search"}, f"a new configs/ folder needs a role here: {folders - set(ROLES)}"
    assert len(CLI_CONFIGS) > 40 and SEARCH_SPACES  # the glob found the tree


@pytest.mark.parametrize("path", CLI_CONFIGS)
def test_config_loads(path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *ROLES[Path(path).parent.name](path), "--print_config"])
    printed = capsys.readouterr()
    assert exit_info.value.code == 0, printed.err[-2000:]
    resolved = yaml.safe_load(printed.out)
    group = yaml.safe_load((ROOT / path).read_text())
    # the file's own settings are in the resolved config, where its role puts them
    where = {
        "data": resolved["data"],
        "model": resolved["model"],
        "trainer": resolved["trainer"],
        "logger": resolved["trainer"]["logger"],
    }.get(Path(path).parent.name, resolved)
    if isinstance(where, list):  # a logger given once becomes a list of one
        (where,) = where
    for key in ("class_path", "accelerator", "strategy", "max_epochs"):
        if key in group and not isinstance(group[key], dict):
            assert where[key] == group[key], key


@pytest.mark.parametrize("path", SEARCH_SPACES)
def test_search_space_names_keys_of_its_config(path, monkeypatch):
    """A search space is checked against the config its header says to tune (every key must exist there)."""
    from zoo.commands.search_space import check_keys, load_space
    from zoo.run.build import parse

    monkeypatch.chdir(ROOT)
    (config,) = re.findall(r"zoo tune --config (\S+)", (ROOT / path).read_text())
    space = load_space(path)
    _, resolved = parse(["--config", config])
    check_keys(space, resolved, path)  # raises, naming the key, when one is not in the config
    assert space
