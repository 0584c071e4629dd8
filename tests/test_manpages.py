# SPDX-License-Identifier: MIT OR Apache-2.0
"""Man pages and shell completion: generated from the commands (composefs/manpages.py), committed
under pkgdata/, installed into the environment's share/ so that man and bash find them there."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cfsrun import REPO, cfsctl

from composefs import manpages

SHARE = Path(sys.prefix) / "share"
COMMITTED = REPO / "pkgdata" / "data" / "share"


def test_committed_pages_are_what_the_commands_say():
    want = manpages.generated()
    have = {str(p.relative_to(COMMITTED)): p.read_text() for p in COMMITTED.rglob("*") if p.is_file()}
    stale = sorted(k for k in want if have.get(k) != want[k])
    extra = sorted(set(have) - set(want))
    assert not stale and not extra, f"run 'make man': stale {stale}, not generated {extra}"


def test_a_page_per_command():
    pages = manpages.generated()
    for name in ("cfsctl", "cfsctl-build", "cfsctl-info-dump", "cfsctl-oci-pull", "mkcomposefs", "composefs-info"):
        assert f"man/man1/{name}.1" in pages, name
    assert "man/man8/mount.composefs.8" in pages
    # The option help is the commands' own.
    assert "\\-\\-hardlinks" in pages["man/man1/cfsctl-build.1"]
    assert "\\-\\-digest\\-store=PATH" in pages["man/man1/mkcomposefs.1"]


@pytest.mark.skipif(not shutil.which("man"), reason="man (man-db) is not installed")
@pytest.mark.parametrize("page,section", [("cfsctl", "1"), ("cfsctl-mount", "1"), ("mkcomposefs", "1"),
                                          ("composefs-info", "1"), ("mount.composefs", "8")])
def test_man_finds_the_installed_pages(page, section):
    env = dict(os.environ, MANPATH=f"{SHARE / 'man'}:", MANWIDTH="80")
    where = subprocess.run(["man", "-w", section, page], env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(SHARE / "man")), where.stdout
    shown = subprocess.run(["man", "-P", "cat", section, page], env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and page.split(".")[0].split("-")[0] in shown.stdout
    assert "warning" not in shown.stderr.lower(), shown.stderr


def test_bash_completion_is_installed_and_completes_image_names(tmp_path):
    script = SHARE / "bash-completion" / "completions" / "cfsctl"
    assert script.is_file() and (SHARE / "zsh" / "site-functions" / "_cfsctl").is_file()
    repo = tmp_path / "repo"
    assert cfsctl("init", "--repo", repo).returncode == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    for name in ("app-one", "app-two", "base"):
        assert cfsctl("import", src, "--name", name, "--repo", repo).returncode == 0

    def complete(*words: str) -> list[str]:
        """What bash offers for the last of ``words`` (the word being typed, '' for a new one)."""
        quoted = " ".join(f"'{w}'" for w in words)
        code = (f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
                "_cfsctl_completion cfsctl; printf '%s\\n' \"${COMPREPLY[@]}\"")
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", CFS_REPO=str(repo))
        r = subprocess.run(["bash", "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return [w for w in r.stdout.splitlines() if w]

    assert {"build", "mount", "images"} <= set(complete("cfsctl", ""))
    assert set(complete("cfsctl", "mount", "app")) >= {"app-one", "app-two"}
    assert "base" not in complete("cfsctl", "mount", "app")
    assert set(complete("cfsctl", "rm", "")) == {"app-one", "app-two", "base"}
    assert "--hardlinks" in complete("cfsctl", "build", "--hard")
