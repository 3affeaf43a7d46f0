"""The dependencies pyproject.toml admits: never a release known to be malicious, and the installed ones."""

from __future__ import annotations

import sys
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

# Releases published with malicious code (GHSA-w37p-236h-pfx3, Lightning-AI/pytorch-lightning#21691), and the last
# ones whose checkpoint hyperparameters could run code (GHSA-qqmf-gpg7-g8gw, fixed in 2.6.6).
MALICIOUS = {name: ("2.6.2", "2.6.3", "2.6.5") for name in ("lightning", "pytorch-lightning")}


def specifier_of(name: str) -> SpecifierSet:
    """The versions of ``name`` that pyproject.toml's dependencies allow."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = [r.specifier for r in map(Requirement, dependencies) if canonicalize_name(r.name) == name]
    assert len(found) == 1, f"pyproject.toml should name {name} once among the dependencies, not {len(found)} times"
    return found[0]


@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_lightning_excludes_its_malicious_releases_and_allows_the_installed_one(name: str) -> None:
    allowed = specifier_of(name)
    assert not [v for v in MALICIOUS[name] if v in allowed], allowed
    assert "2.6.6" in allowed and "2.7.0" in allowed
    assert "3.0" not in allowed  # an upper bound: the zoo uses some of Lightning's private APIs
    assert version(name) in allowed, f"{name} {version(name)} is installed but pyproject.toml excludes it"


def test_the_cpu_only_install_script_runs_the_readmes_commands() -> None:
    # The script itself takes minutes (pip), so CI does not run it; it must stay the README's install, and parse.
    import re
    import subprocess

    script = (ROOT / "scripts" / "cpu_only_install.sh").read_text()
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"\.venv/bin/pip install (torch torchvision --index-url \S+)", readme)
    assert command, "the README's CPU-only install command"
    assert f"CPU_TORCH=${{CPU_TORCH:-{command.group(1)}}}" in script
    assert '-m pip install --progress-bar off -e ".[dev]"' in script and '.venv/bin/pip install -e ".[dev]"' in readme
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "cpu_only_install.sh")]).returncode == 0
