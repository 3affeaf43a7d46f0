"""`zoo models` (zoo.commands.models): its static table of the registered backbones is the registry's, and
listing them imports neither torch nor Lightning."""

from __future__ import annotations

import subprocess
import sys
from pprint import pformat

from tests.conftest import ROOT
from zoo.commands.models import REGISTERED, registered_rows


def test_static_table_is_the_registry():
    found = registered_rows()
    assert REGISTERED == found, (
        "zoo/commands/models.py's REGISTERED differs from the registry (a backbone added, renamed or changed); "
        f"replace it with:\n{pformat(found, width=120, sort_dicts=True)}"
    )


def test_listing_registered_names_imports_no_torch():
    code = (
        "import sys, cli\n"
        "cli.main(['models', 'res*'])\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'timm') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resnet18" in done.stdout and "11,168,832" in done.stdout and "mlp" not in done.stdout
    assert "heavy: []" in done.stdout
