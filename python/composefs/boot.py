# SPDX-License-Identifier: MIT OR Apache-2.0
"""Booting an operating system from a composefs image: the deployment layout on the root
partition and the kernel argument that names the image.

The layout on the target root (``--root DIR``, the partition the initramfs mounts as root=):

    composefs/                          the repository (objects/, images/, refs/, ...)
    state/deploy/<digest>/etc/upper     the /etc overlay's upper and work directories, one pair per
    state/deploy/<digest>/etc/work      deployment (a new image starts from its own /etc)
    state/deploy/<digest>/var/upper     /var in "overlay" mode: the image's /var under a
    state/deploy/<digest>/var/work      persistent upper of this deployment
    state/var                           /var in "bind" mode: one directory shared by every
                                        deployment (what survives an upgrade)

The early-boot side (``data/initramfs-tools``, installed into a root's /etc/initramfs-tools by
``install_initramfs``, and the native ``composefs-setup-root`` its boot script runs, installed into
the root's /usr/local/lib/composefs) reads ``composefs=<digest>`` from the kernel command line and
mounts exactly that image with its digest enforced; this module is the one place that writes the
layout it reads. The kernel argument is ``composefs=<64 hex>`` (the image's fs-verity sha256 digest), as
composefs-rs spells it for the same format.
"""

from __future__ import annotations

import os
from importlib import resources

from . import _native
from .errors import CfsError
from .mount import native_binary
from .repository import DIGEST_RE, Repository

# Where the repository and the state live on a root partition.
REPO_DIR = "composefs"
STATE_DIR = "state"
# Files shipped with the package and where they go under a root's /etc/initramfs-tools.
INITRAMFS_FILES = ("hooks/composefs", "scripts/local-bottom/composefs")
# The program the boot script runs (native/mount/src/setup_root), and where the hook finds it in
# the root it builds an initramfs for.
SETUP_ROOT = "composefs-setup-root"
SETUP_ROOT_DIR = "usr/local/lib/composefs"


def karg(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise CfsError(f"not an image digest: {digest!r}")
    return f"composefs={digest}"


def repo_path(root: str) -> str:
    return os.path.join(root, REPO_DIR)


def deploy_dir(root: str, digest: str) -> str:
    return os.path.join(root, STATE_DIR, "deploy", digest)


def _mkdirs(*paths: str, mode: int = 0o755) -> None:
    for p in paths:
        os.makedirs(p, exist_ok=True)
        st = os.lstat(p)
        if not os.path.isdir(p) or os.path.islink(p):
            raise CfsError("exists and is not a directory", p)
        if st.st_mode & 0o7777 != mode:
            os.chmod(p, mode)


def deploy(root: str, name_or_digest: str) -> dict:
    """Make the state directories of the image ``name_or_digest`` of ``root``'s repository and
    return {digest, karg, state}. Existing state (an /etc changed by an earlier boot) is kept."""
    if not os.path.isdir(root):
        raise CfsError("not a directory", root)
    repo = Repository.open(repo_path(root))
    with repo.locked():
        digest = repo.resolve(name_or_digest)
        if not DIGEST_RE.match(digest):
            raise CfsError(f"ref {name_or_digest!r} does not hold an image digest", repo.refs_dir)
        fd = repo.open_image(digest)  # the image must be there, a plain file of a trusted owner
        os.close(fd)
    state = deploy_dir(root, digest)
    _mkdirs(os.path.join(root, STATE_DIR), os.path.join(root, STATE_DIR, "deploy"), state,
            os.path.join(root, STATE_DIR, "var"))
    for sub in ("etc", "var"):
        _mkdirs(os.path.join(state, sub), os.path.join(state, sub, "upper"))
        # overlayfs wants an empty work directory only it uses
        _mkdirs(os.path.join(state, sub, "work"), mode=0o700)
    return {"digest": digest, "karg": karg(digest), "state": state, "repo": repo.path}


def install_initramfs(root: str) -> list[str]:
    """Copy the initramfs-tools hook and boot script into ``root``/etc/initramfs-tools and the
    program the script runs into ``root``/usr/local/lib/composefs (mode 0755, replacing older
    copies); returns the paths written."""
    etc = os.path.join(root, "etc", "initramfs-tools")
    if not os.path.isdir(etc):
        raise CfsError("no etc/initramfs-tools here (is initramfs-tools installed in this root?)", root)
    program = native_binary(SETUP_ROOT)
    src = resources.files(__package__).joinpath("data", "initramfs-tools")
    written = []
    for rel in INITRAMFS_FILES:
        dst = os.path.join(etc, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        _native.write_atomic(dst, src.joinpath(rel).read_bytes(), 0o755)
        written.append(dst)
    dst = os.path.join(root, SETUP_ROOT_DIR, SETUP_ROOT)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(program, "rb") as f:
        _native.write_atomic(dst, f.read(), 0o755)
    written.append(dst)
    return written
