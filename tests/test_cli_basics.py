# SPDX-License-Identifier: MIT OR Apache-2.0
"""The CLI starts, explains itself and reports its version."""

import json
import os
import subprocess
import sys

import pytest


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


# Where --repo is given: (before the command, after it); "A", "C": repositories, None: not given.
PLACES = {"before": ("A", None), "after": (None, "A"), "both": ("C", "A"), "none": (None, None)}


@pytest.mark.parametrize("env", [None, "B"], ids=["env-unset", "env-B"])
@pytest.mark.parametrize("place", list(PLACES))
def test_repo_on_the_command_line_beats_the_environment(three_repos, env, place):
    """The command's own --repo, else the one before the command, else $CFS_REPO, else the default
    (which is the machine's, not looked at here)."""
    before, after = PLACES[place]
    want = after or before or env
    if want is None:
        pytest.skip("the default repository is the machine's")
    repos = three_repos
    argv = ([] if before is None else ["--repo", repos[before]]) + ["images", "--json"]
    argv += [] if after is None else ["--repo", repos[after]]
    environ = {k: v for k, v in os.environ.items() if k != "CFS_REPO"}
    if env is not None:
        environ["CFS_REPO"] = str(repos[env])
    r = subprocess.run([sys.executable, "-m", "composefs.cli", *map(str, argv)], capture_output=True,
                       text=True, env=environ)
    assert r.returncode == 0, r.stderr
    assert [i["name"] for i in json.loads(r.stdout)] == [f"in-{want}"]


@pytest.fixture(scope="module")
def three_repos(tmp_path_factory) -> dict:
    """Repositories A, B and C, each holding one image named in-A, in-B, in-C."""
    t = tmp_path_factory.mktemp("repos")
    repos = {}
    for name in "ABC":
        src = t / f"src-{name}"
        src.mkdir()
        (src / "f").write_text(name)
        repos[name] = t / name
        assert run("init", "--repo", repos[name]).returncode == 0
        r = run("import", src, "--name", f"in-{name}", "--repo", repos[name])
        assert r.returncode == 0, r.stderr
    return repos


def test_every_global_option_with_an_envvar_ranks_below_the_command_line():
    """A command's option that cfsctl also takes before the command, and that has an environment
    variable, must be a GlobalOption (else the environment would beat the option given before the
    command)."""
    import click

    from composefs.cli import cli
    from composefs.globalopts import GlobalOption

    ctx = click.Context(cli)
    global_names = {p.name for p in cli.params}
    found = []

    def walk(group):
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if isinstance(cmd, click.Group):
                walk(cmd)
                continue
            for p in cmd.params:
                if p.name in global_names and getattr(p, "envvar", None):
                    found.append((name, p.name))
                    assert isinstance(p, GlobalOption), (name, p.name)

    walk(cli)
    assert ("images", "repo_path") in found and ("mount", "repo_path") in found


@pytest.mark.parametrize("words,want", [
    (["--repo", "{A}", "mount", "in-"], "in-A"),
    (["mount", "--repo", "{A}", "in-"], "in-A"),
    (["--repo", "{C}", "mount", "--repo", "{A}", "in-"], "in-A"),
    (["mount", "in-"], "in-B"),
])
def test_name_completion_uses_the_same_repository(three_repos, words, want):
    """Shell completion of an image name looks in the repository the command would use
    ($CFS_REPO is B here)."""
    words = ["cfsctl"] + [w.format(**{k: str(v) for k, v in three_repos.items()}) for w in words]
    env = dict(os.environ, CFS_REPO=str(three_repos["B"]), _CFSCTL_COMPLETE="bash_complete",
               COMP_WORDS=" ".join(words), COMP_CWORD=str(len(words) - 1))
    r = subprocess.run([sys.executable, "-m", "composefs.cli"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"plain,{want}"]
