# SPDX-License-Identifier: MIT OR Apache-2.0
"""The package as a user gets it: the wheel maturin builds, installed into a brand-new virtualenv
(pytest-virtualenv) from the base interpreter, then cfsctl and the Python API run from there with
no source tree on the path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pytest_virtualenv import VirtualEnv

from cfsrun import REPO

BIN = Path(sys.executable).parent


def build_wheel(out: Path) -> Path:
    # The environment `make setup` builds the extension in (see the Makefile): the same one lets
    # cargo reuse that release build instead of compiling everything again.
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    # The native mount.composefs goes into the wheel as a script; `make stage-helper` builds it.
    r = subprocess.run(["make", "-s", "stage-helper"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([BIN / "maturin", "build", "--release", "-q", "-o", out], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = out.glob("composefs-*.whl")
    return wheel


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"))
    env = VirtualEnv(workspace=tmp_path_factory.mktemp("venv"), delete_workspace=True)
    try:
        env.run([env.python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel], capture=True)
        yield env
    finally:
        env.teardown()


def run(venv: VirtualEnv, *args, check: bool = True) -> subprocess.CompletedProcess:
    # From the workspace, with the environment pytest-virtualenv made (no PYTHONPATH).
    r = subprocess.run([str(a) for a in args], cwd=venv.workspace, env=venv.env, capture_output=True, text=True,
                       timeout=300)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_installed_from_the_wheel_not_the_source_tree(venv):
    r = run(venv, venv.python, "-c", "import composefs, composefs._native as n; print(composefs.__file__, n.__file__)")
    for path in r.stdout.split():
        assert Path(path).is_relative_to(venv.virtualenv), path
        assert not Path(path).is_relative_to(REPO / "python"), path
    site = Path(r.stdout.split()[0]).parent
    assert (site / "py.typed").is_file()
    assert (site / "_native.pyi").is_file()


def test_cfsctl_builds_and_digests(venv, tmp_path):
    cfsctl = venv.virtualenv / "bin" / "cfsctl"
    # The native front, handing --help and every other command but mount/umount to cfsctl-py.
    assert cfsctl.read_bytes()[:4] == b"\x7fELF"
    assert "build" in run(venv, cfsctl, "--help").stdout
    helper = venv.virtualenv / "bin" / "mount.composefs"
    assert helper.read_bytes()[:4] == b"\x7fELF"  # the native helper, not a Python script
    assert run(venv, helper, "--version").stdout.startswith("mount.composefs ")
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "big").write_bytes(b"composefs " * 10000)
    (src / "small").write_bytes(b"hi\n")
    b = run(venv, cfsctl, "build", src, tmp_path / "img.cfs", "--digest-store", tmp_path / "objects", "--json")
    summary = json.loads(b.stdout)
    assert summary["objects"] == 1 and summary["counts"]["inline_files"] == 1
    d = run(venv, cfsctl, "digest", "--json", src / "d" / "big")
    (digest,) = [e["digest"] for e in json.loads(d.stdout)]
    assert (tmp_path / "objects" / digest[:2] / digest[2:]).is_file()
    bad = run(venv, cfsctl, "build", tmp_path / "missing", tmp_path / "x.cfs", check=False)
    assert bad.returncode != 0 and bad.stderr.startswith("cfsctl: error: ") and "Traceback" not in bad.stderr
    info = run(venv, cfsctl, "info", "header", "--json", tmp_path / "img.cfs")
    assert json.loads(info.stdout)[0]["digest"] == summary["digest"]


def test_the_api_from_the_installed_package(venv, tmp_path):
    script = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        import composefs

        src, work = Path(sys.argv[1]), Path(sys.argv[2])
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "file").write_bytes(b"x" * 5000)
        built = composefs.build_from_directory(src, work / "img.cfs", store=work / "objects")
        repo = composefs.Repository.create(work / "repo")
        imported = repo.import_directory(src, "app")
        print(json.dumps({
            "built": built.digest,
            "inspected": composefs.inspect_image(work / "img.cfs").digest,
            "imported": imported.digest,
            "objects": composefs.image_objects(work / "img.cfs"),
            "file": composefs.digest_file(src / "sub" / "file").hex(),
            "images": [i.name for i in repo.images()],
            "fsck_ok": repo.fsck().ok,
        }))
    """)
    r = run(venv, venv.python, "-c", script, tmp_path / "src", tmp_path)
    out = json.loads(r.stdout)
    assert out["built"] == out["inspected"] == out["imported"]
    assert out["objects"] == [f"{out['file'][:2]}/{out['file'][2:]}"]
    assert out["images"] == ["app"] and out["fsck_ok"]


def test_cfsctl_mounts_and_unmounts_from_the_wheel(venv, tmp_path):
    """The front as installed by pip: mount and umount natively, images through cfsctl-py."""
    with open("/proc/filesystems") as f:
        have = {line.split()[-1] for line in f if line.strip()}
    if os.geteuid() != 0 or not {"erofs", "overlay"} <= have:
        pytest.skip("mounting needs root and erofs + overlay in /proc/filesystems")
    cfsctl = venv.virtualenv / "bin" / "cfsctl"
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_bytes(b"from the wheel\n" * 100)
    run(venv, cfsctl, "build", src, tmp_path / "img.cfs", "--digest-store", tmp_path / "objects")
    m = json.loads(run(venv, cfsctl, "mount", tmp_path / "img.cfs", mnt, "--basedir", tmp_path / "objects",
                       "--json").stdout)
    try:
        assert m["backend"] in ("overlay", "kernel") and (mnt / "f").read_bytes() == b"from the wheel\n" * 100
    finally:
        u = json.loads(run(venv, cfsctl, "umount", mnt, "--json").stdout)
    assert u["mountpoint"] == str(mnt) and not os.path.ismount(mnt)
