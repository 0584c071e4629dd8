# SPDX-License-Identifier: MIT OR Apache-2.0
"""`cfsctl boot`: the deployment layout on a target root, the kernel argument, installing the
initramfs-tools files. The boot itself is proven in QEMU (qemu/boot.py, make qemu-boot-test)."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

from cfsrun import cfsctl

from composefs.fsverity import digest_file


def ok(*args):
    r = cfsctl(*args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout.decode()


def one_line_error(r):
    err = r.stderr.decode()
    assert r.returncode != 0
    assert err.startswith("cfsctl: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def target(tmp_path):
    """A target root partition: ROOT/composefs holding image 'os' of a small tree."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "var").mkdir()
    (tree / "etc" / "hostname").write_text("box\n")
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "tool").write_bytes(os.urandom(5000))
    root = tmp_path / "root"
    ok("init", "--repo", root / "composefs")
    ok("import", tree, "--name", "os", "--repo", root / "composefs")
    return root


def image_digest(root: Path) -> str:
    (img,) = [p for p in (root / "composefs" / "images").iterdir() if len(p.name) == 64]
    return img.name


def test_deploy_prints_karg_and_makes_the_state_layout(target):
    digest = image_digest(target)
    # the kernel argument names the image by its own fs-verity digest
    assert digest_file(target / "composefs" / "images" / digest) == bytes.fromhex(digest)
    out = ok("boot", "deploy", "os", "--root", target)
    assert out == f"composefs={digest}\n"
    state = target / "state" / "deploy" / digest
    for sub in ("etc", "var"):
        assert stat.S_IMODE((state / sub / "upper").stat().st_mode) == 0o755
        assert stat.S_IMODE((state / sub / "work").stat().st_mode) == 0o700
    assert (target / "state" / "var").is_dir()
    assert ok("boot", "karg", "os", "--root", target) == out
    assert ok("boot", "karg", digest[:12], "--root", target) == out


def test_deploy_again_keeps_state_and_writes_karg_file(target, tmp_path):
    digest = image_digest(target)
    ok("boot", "deploy", "os", "--root", target)
    kept = target / "state" / "deploy" / digest / "etc" / "upper" / "hostname"
    kept.write_text("changed at run time\n")
    karg_file = tmp_path / "karg"
    out = ok("boot", "deploy", digest, "--root", target, "--karg-file", karg_file, "--json")
    assert f'"karg": "composefs={digest}"' in out
    assert karg_file.read_text() == f"composefs={digest}\n"
    assert kept.read_text() == "changed at run time\n"


@pytest.mark.parametrize("args, says", [
    (["boot", "deploy", "nosuch"], "no image named 'nosuch'"),
    (["boot", "karg", "nosuch"], "no image named 'nosuch'"),
    (["boot", "deploy", "0" * 64], "no image named"),
])
def test_deploy_unknown_image_is_one_line(target, args, says):
    err = one_line_error(cfsctl(*args, "--root", target))
    assert says in err
    assert not (target / "state").exists()


def test_deploy_without_repository(tmp_path):
    err = one_line_error(cfsctl("boot", "deploy", "os", "--root", tmp_path))
    assert "not a composefs repository" in err


def test_deploy_image_file_missing(target):
    digest = image_digest(target)
    (target / "composefs" / "images" / digest).unlink()
    err = one_line_error(cfsctl("boot", "deploy", "os", "--root", target))
    assert digest in err


def test_install_initramfs(tmp_path):
    root = tmp_path / "sysroot"
    err = one_line_error(cfsctl("boot", "install-initramfs", "--root", root.mkdir() or root))
    assert "initramfs-tools" in err
    (root / "etc" / "initramfs-tools").mkdir(parents=True)
    out = ok("boot", "install-initramfs", "--root", root).split()
    base = root / "etc" / "initramfs-tools"
    want = [base / "hooks" / "composefs", base / "scripts" / "local-bottom" / "composefs"]
    program = root / "usr" / "local" / "lib" / "composefs" / "composefs-setup-root"
    assert out == [str(p) for p in want + [program]]
    # the program the boot script runs, where the hook copies it from
    assert stat.S_IMODE(program.stat().st_mode) == 0o755
    assert program.read_bytes()[:4] == b"\x7fELF"
    assert "/usr/local/lib/composefs/composefs-setup-root" in want[0].read_text()
    # a wrong call is one "boot stopped" line, which the script hands to panic
    r = subprocess.run([str(program)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("composefs: boot stopped: usage: composefs-setup-root ROOTMNT") and r.stderr.count("\n") == 1
    for p in want:
        assert stat.S_IMODE(p.stat().st_mode) == 0o755
        assert p.read_bytes().startswith(b"#!/bin/sh\n")
        # Debian's initramfs runs these with dash: the syntax must be POSIX sh
        r = subprocess.run(["dash", "-n", str(p)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        # initramfs-tools asks every script for its prerequisites before ordering them
        r = subprocess.run(["dash", str(p), "prereqs"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip() == "", (r.stdout, r.stderr)
