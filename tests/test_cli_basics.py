"""The CLI starts, explains itself and reports its version."""

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "composefs.cli", *args], capture_output=True, text=True)


def test_version():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("cfsctl, version ")


def test_help_lists_usage():
    r = run("--help")
    assert r.returncode == 0
    assert "composefs" in r.stdout


def test_native_extension_loads():
    from composefs import _native

    assert issubclass(_native.FormatError, ValueError)
