# SPDX-License-Identifier: MIT OR Apache-2.0
"""The scripts that run only in the QEMU guest or under bench/ import what the package still has.

A name they import from ``composefs`` that a refactor removed fails only when that guest job
runs (qemu/boot/enable_verity.py imported a helper gone from repository.py, and only the boot
test, the last of ``make test``, said so). Here every ``from composefs... import NAME`` in those
files is resolved on the host, in a second.
"""

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p for d in ("qemu", "bench", "tests/guest") for p in (ROOT / d).rglob("*.py")
                 if "work" not in p.relative_to(ROOT).parts)


def imported_names(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for each composefs import in the file; name None for ``import composefs.x``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "composefs":
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.split(".")[0] == "composefs"]
    return out


def test_the_scripts_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in SCRIPTS}
    assert "qemu/boot/enable_verity.py" in names and any(n.startswith("tests/guest/") for n in names)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_composefs_imports_resolve(path):
    for module, name in imported_names(path):
        mod = importlib.import_module(module)
        if name is not None and name != "*":
            assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}"), \
                f"{path.relative_to(ROOT)}: from {module} import {name}: no such name"
