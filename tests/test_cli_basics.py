# SPDX-License-Identifier: MIT OR Apache-2.0
"""The CLI starts, explains itself and reports its version."""

import json
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


def test_help_lists_every_command_and_each_loads():
    """Sub-commands are imported lazily; each one listed must still load and explain itself."""
    r = run("--help")
    names = [line.split()[0] for line in r.stdout.split("Commands:")[1].splitlines() if line.strip()]
    for name in ("build", "digest", "info", "mount", "umount", "init", "import", "gc", "oci"):
        assert name in names
    for name in names:
        sub = run(name, "--help")
        assert sub.returncode == 0, (name, sub.stderr)
        assert sub.stdout.startswith(f"Usage: cfsctl {name} "), name


def test_build_imports_only_what_it_needs():
    code = ("import sys; from composefs.cli import cli; cli(['build', '--help'], standalone_mode=False); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('composefs.'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.splitlines()[-1].split())
    assert "composefs.cmd_build" in loaded
    assert not loaded & {"composefs.cmd_mount", "composefs.mount", "composefs.cmd_repo", "composefs.repository"}


def test_non_utf8_paths_in_errors_are_shown_escaped(tmp_path):
    """Error messages name the path; bytes that are not UTF-8 show as \\xNN, never raw (a raw
    byte may be half of an escape sequence for the terminal)."""
    import os

    name = os.fsencode(tmp_path) + b"/not-utf8-\xff\xfe"
    os.mkfifo(name)  # digest refuses a FIFO: the error comes from the native core
    missing = os.fsencode(tmp_path) + b"/missing-\xff"  # build refuses it in Python
    for args, path in ((["digest", name], name), (["build", "--print-digest-only", missing], missing)):
        r = subprocess.run([sys.executable, "-m", "composefs.cli", *args], capture_output=True)
        assert r.returncode != 0
        shown = path.replace(b"\xff", b"\\xff").replace(b"\xfe", b"\\xfe")
        assert r.stderr.startswith(b"cfsctl: error: " + shown + b": "), r.stderr


def test_global_options_before_and_after_the_command(tmp_path):
    """--repo and --json mean the same before the command as after it; a command's own value
    wins; one a command does not take is a usage error naming it."""
    repo, other = tmp_path / "r", tmp_path / "other"
    for where in (repo, other):
        assert run("init", "--repo", where).returncode == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 100)
    assert run("import", str(src), "--name", "app", "--repo", repo).returncode == 0
    for argv in (["--repo", repo, "--json", "images"], ["--json", "images", "--repo", repo],
                 ["images", "--json", "--repo", repo], ["--repo", other, "images", "--repo", repo, "--json"]):
        r = run(*argv)
        assert r.returncode == 0, (argv, r.stderr)
        assert [i["name"] for i in json.loads(r.stdout)] == ["app"], argv
    r = run("--repo", repo, "digest", src / "f")
    assert r.returncode == 2 and "--repo does not apply to 'digest'" in r.stderr
    r = run("--json", "digest", src / "f")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["path"] == str(src / "f")
