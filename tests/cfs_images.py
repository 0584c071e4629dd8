# SPDX-License-Identifier: MIT OR Apache-2.0
"""Source trees, composefs images and object stores for the mount tests.

``make_tree`` writes a real tree with every file type; ``build_image`` turns a tree into a
composefs image plus objects; ``snapshot`` records a tree entry by entry so a mounted image can be
compared with its source.

``build_image`` uses our own writer (``cfsctl build --from-dump`` of a dump of the tree) when the
CLI has it; without it, it stages the tree in
exactly the composefs layout (each regular file a sparse file of its size with the overlay
``metacopy`` and ``redirect`` xattrs, contents moved to ``objects/XX/<62 hex>``) and packs the
staging tree with ``mkfs.erofs``: the same layout our writer produces, so mounting is exercised
the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- fs-verity digest (sha256, 4 KiB blocks, no salt): the object names -------------------------


def fsverity_digest(data: bytes) -> bytes:
    bs = 4096
    if data:
        level = [hashlib.sha256(data[i : i + bs].ljust(bs, b"\0")).digest() for i in range(0, len(data), bs)]
        while len(level) > 1:
            blob = b"".join(level)
            level = [hashlib.sha256(blob[i : i + bs].ljust(bs, b"\0")).digest() for i in range(0, len(blob), bs)]
        root = level[0]
    else:
        root = bytes(32)
    desc = struct.pack("<BBBBIQ64s32s144s", 1, 1, 12, 0, 0, len(data), root, b"", b"")
    return hashlib.sha256(desc).digest()


# --- source trees ------------------------------------------------------------------------------


def _w(path, data: bytes, mode=0o644, mtime=None, uid=0, gid=0):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.chown(path, uid, gid)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))


def make_tree(root: str, many: int = 0, large: int = 6 * 1024 * 1024, seed: int = 1) -> str:
    """A tree with every file type, xattrs, hardlinks, empty, small, inline-sized and large files;
    ``many`` extra small files in nested directories (for 10,000+ entry trees)."""
    import random

    rnd = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    t0 = 1_600_000_000_123_456_789
    d = os.path.join
    os.makedirs(d(root, "dir/sub/deeper"))
    os.makedirs(d(root, "empty-dir"))
    _w(d(root, "empty"), b"", 0o600, t0)
    _w(d(root, "small.txt"), b"hello composefs\n", 0o644, t0 + 1, uid=1000, gid=100)
    _w(d(root, "inline64"), b"x" * 64, 0o640, t0 + 2)
    _w(d(root, "block"), rnd.randbytes(4096), 0o755, t0 + 3, uid=70000, gid=70001)
    _w(d(root, "large.bin"), rnd.randbytes(large), 0o444, t0 + 4)
    _w(d(root, "dir/sub/deeper/leaf"), b"leaf\n", 0o4755, t0 + 5)
    _w(d(root, "dir/setgid"), b"sg\n", 0o2711, t0 + 6)
    _w(d(root, "dir/same-content-1"), b"shared content\n" * 100, 0o644, t0 + 7)
    _w(d(root, "dir/same-content-2"), b"shared content\n" * 100, 0o600, t0 + 8, uid=5)
    os.link(d(root, "small.txt"), d(root, "dir/hardlink-to-small"))
    os.link(d(root, "small.txt"), d(root, "dir/sub/hardlink2"))
    os.link(d(root, "empty"), d(root, "dir/empty-link"))
    os.symlink("small.txt", d(root, "symlink"))
    os.symlink("/absolute/dangling/target", d(root, "dir/dangling"))
    os.symlink("x" * 1000, d(root, "dir/long-symlink"))
    os.mkfifo(d(root, "dir/fifo"), 0o620)
    os.mknod(d(root, "dir/chardev"), 0o660 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(d(root, "dir/blockdev"), 0o640 | stat.S_IFBLK, os.makedev(259, 70000))
    os.mknod(d(root, "dir/socket"), 0o755 | stat.S_IFSOCK)
    os.mknod(d(root, "dir/whiteout-like"), 0o600 | stat.S_IFCHR, os.makedev(0, 1))
    names = ["spaces in name", "ünïcödé", "new\nline", "a,b:c", "-dash", "%41"]
    for i, n in enumerate(names):
        _w(d(root, "dir", n), f"name {i}\n".encode(), 0o644, t0 + 10 + i)
    # xattrs: user.* on files and dirs, trusted.* on a symlink, a big value, a binary value
    os.setxattr(d(root, "small.txt"), "user.mime", b"text/plain")
    os.setxattr(d(root, "small.txt"), "user.empty", b"")
    os.setxattr(d(root, "dir"), "user.dirattr", b"on a directory")
    os.setxattr(d(root, "large.bin"), "user.big", bytes(range(256)) * 8)
    os.setxattr(d(root, "large.bin"), "trusted.bin", b"\0\1\2\3")
    os.setxattr(d(root, "symlink"), "trusted.linkattr", b"on a symlink", follow_symlinks=False)
    os.setxattr(d(root, "dir/fifo"), "trusted.f", b"fifo attr")
    for k in range(3):
        os.setxattr(d(root, f"dir/same-content-{1 + (k % 2)}"), f"user.shared{k}", b"shared value")
    # many entries: files in nested directories, some empty, some shared content
    for i in range(many):
        sub = d(root, "many", f"{i // 500:03d}", f"{(i // 50) % 10}")
        if i % 50 == 0:
            os.makedirs(sub, exist_ok=True)
        p = d(sub, f"f{i:06d}")
        if i % 7 == 0:
            _w(p, b"", 0o644, t0 + i)
        elif i % 5 == 0:
            os.symlink(f"f{i - 1:06d}", p)
        else:
            _w(p, f"file {i % 997}\n".encode() * (1 + i % 13), 0o644, t0 + i)
    # directory mtimes last (creating children changes them)
    for dirpath, dirnames, _ in os.walk(root, topdown=False):
        os.utime(dirpath, ns=(t0 - 5, t0 - 5))
    os.chmod(d(root, "empty-dir"), 0o1777)
    return root


def add_overlay_markings(root: str) -> str:
    """What only overlay-aware readers treat specially, added to a make_tree() tree: whiteouts
    (chardev 0/0, which the writer stores escaped), an opaque directory, and trusted.overlay.* and
    user.overlay.* xattrs of the source (escaped in the image, shown unescaped by a mount).
    Needs root (mknod, trusted.*)."""
    d = os.path.join
    os.makedirs(d(root, "ovl/opaque"))
    os.mknod(d(root, "ovl/whiteout"), 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(d(root, "ovl/opaque/gone"), 0o644 | stat.S_IFCHR, os.makedev(0, 0))
    os.setxattr(d(root, "ovl/opaque"), "trusted.overlay.opaque", b"y")
    _w(d(root, "ovl/marked"), b"marked\n", 0o644)
    os.setxattr(d(root, "ovl/marked"), "trusted.overlay.custom", b"escaped")
    os.setxattr(d(root, "ovl/marked"), "trusted.overlay.redirect", b"/not/followed")
    os.setxattr(d(root, "ovl/marked"), "user.overlay.origin", b"user namespace")
    for dirpath, _, _ in os.walk(d(root, "ovl"), topdown=False):
        os.utime(dirpath, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return root


# --- snapshots ---------------------------------------------------------------------------------

INTERNAL_XATTRS = ("trusted.overlay.",)


def _xattrs(path: str) -> dict:
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for n in names:
        if n.startswith(INTERNAL_XATTRS):
            continue
        out[n] = os.getxattr(path, n, follow_symlinks=False).hex()
    return out


def snapshot(root: str, content: bool = True) -> dict:
    """Every entry under ``root`` (relative path -> attributes), plus hardlink groups."""
    entries = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""] if dirpath == root else [*dirnames, *filenames]:
            p = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            e = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime_ns": st.st_mtime_ns,
                "xattrs": _xattrs(p),
            }
            if not stat.S_ISDIR(st.st_mode):
                e["nlink"] = st.st_nlink
                e["size"] = st.st_size
            if stat.S_ISLNK(st.st_mode):
                e["target"] = os.readlink(p)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if stat.S_ISREG(st.st_mode):
                if content:
                    with open(p, "rb") as f:
                        e["sha256"] = hashlib.sha256(f.read()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            entries[rel] = e
    links = sorted(sorted(v) for v in inodes.values())
    return {"entries": entries, "hardlinks": links}


# --- images ------------------------------------------------------------------------------------


def cfsctl_has_build() -> bool:
    """Our own image writer (`cfsctl build --from-dump`) is available."""
    r = subprocess.run([sys.executable, "-m", "composefs.cli", "build", "--help"], capture_output=True, text=True)
    return r.returncode == 0 and "--from-dump" in r.stdout


def build_image(src: str, image: str, store: str, work: str, writer: str | None = None) -> str:
    """Build ``image`` from the tree ``src``, putting contents into ``store/XX/<rest>``.

    Returns which writer made it: "cfsctl" (our EROFS writer, fed a dump of the tree) or
    "mkfs.erofs" (the staging stand-in, when the writer is not there).
    """
    os.makedirs(store, exist_ok=True)
    if writer == "cfsctl" or (writer is None and cfsctl_has_build()):
        dump = os.path.join(work, "tree-" + os.path.basename(image) + ".dump")
        write_dump(src, dump, store)
        r = subprocess.run([sys.executable, "-m", "composefs.cli", "build", "--from-dump", dump, image],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"cfsctl build failed: {r.stderr}")
        os.unlink(dump)
        return "cfsctl"
    stage = os.path.join(work, "stage-" + os.path.basename(image))
    _stage(src, stage, store)
    subprocess.run(["mkfs.erofs", "--quiet", "--preserve-mtime", "-x1", "-zlz4", image, stage],
                   check=True, capture_output=True)
    shutil.rmtree(stage)
    return "mkfs.erofs"


def add_object(store: str, data: bytes) -> str:
    digest = fsverity_digest(data)
    h = digest.hex()
    obj = os.path.join(store, h[:2], h[2:])
    if not os.path.exists(obj):
        os.makedirs(os.path.dirname(obj), exist_ok=True)
        tmp = obj + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.rename(tmp, obj)
    return h


def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    for n in os.listxattr(src, follow_symlinks=False):
        os.setxattr(dst, n, os.getxattr(src, n, follow_symlinks=False), follow_symlinks=False)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def _stage(src: str, stage: str, store: str) -> None:
    seen: dict[tuple[int, int], str] = {}
    dirs = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out_dir = os.path.normpath(os.path.join(stage, rel))
        os.makedirs(out_dir, exist_ok=True)
        dirs.append((dirpath, out_dir))
        for name in filenames + [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]:
            p, q = os.path.join(dirpath, name), os.path.join(out_dir, name)
            st = os.lstat(p)
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in seen:
                os.link(seen[key], q)
                continue
            seen[key] = q
            m = st.st_mode
            if stat.S_ISREG(m):
                with open(q, "wb"):
                    pass
                if st.st_size:
                    with open(p, "rb") as f:
                        h = add_object(store, f.read())
                    os.truncate(q, st.st_size)
                    os.setxattr(q, "trusted.overlay.metacopy", bytes([0, 36, 0, 1]) + bytes.fromhex(h))
                    os.setxattr(q, "trusted.overlay.redirect", f"/{h[:2]}/{h[2:]}".encode())
            elif stat.S_ISLNK(m):
                os.symlink(os.readlink(p), q)
            else:
                os.mknod(q, m, st.st_rdev)
            _copy_meta(p, q, st)
    for dirpath, out_dir in reversed(dirs):
        _copy_meta(dirpath, out_dir, os.lstat(dirpath))


# --- composefs-dump(5) of a tree, for `cfsctl build --from-dump` ----------------------------------


def _esc(b: bytes, extra: bytes = b"") -> str:
    out = []
    for c in b:
        ch = bytes([c])
        if ch == b"\\":
            out.append("\\\\")
        elif ch == b"\n":
            out.append("\\n")
        elif ch == b"\t":
            out.append("\\t")
        elif ch == b"\r":
            out.append("\\r")
        elif c <= 0x20 or c >= 0x7F or ch in extra:
            out.append(f"\\x{c:02x}")
        else:
            out.append(ch.decode())
    return "".join(out)


def write_dump(src: str, dump: str, store: str) -> None:
    """Describe ``src`` as a composefs dump; regular file contents go into ``store``."""
    lines = []
    seen: dict[tuple[int, int], bytes] = {}
    srcb = os.fsencode(src)
    for dirpath, dirnames, filenames in os.walk(srcb):
        dirnames.sort()
        for name in [b""] + sorted(filenames) + [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]:
            p = os.path.join(dirpath, name) if name else dirpath
            rel = b"/" + os.path.relpath(p, srcb) if p != srcb else b"/"
            st = os.lstat(p)
            key = (st.st_dev, st.st_ino)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and key in seen:
                lines.append(f"{_esc(rel)} 0 @{st.st_mode:o} 1 0 0 0 0.0 {_esc(seen[key])} - -")
                continue
            seen[key] = rel
            payload, digest, size = "-", "-", st.st_size
            if stat.S_ISREG(st.st_mode) and st.st_size:
                with open(p, "rb") as f:
                    h = add_object(store, f.read())
                payload, digest = f"{h[:2]}/{h[2:]}", h
            elif stat.S_ISLNK(st.st_mode):
                payload = _esc(os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                size = 0
            elif not stat.S_ISREG(st.st_mode):
                size = 0
            xattrs = []
            for n in sorted(os.listxattr(p, follow_symlinks=False)):
                v = os.getxattr(p, n, follow_symlinks=False)
                xattrs.append(f"{_esc(n.encode(), b'=')}={_esc(v, b'=')}")
            mt = st.st_mtime_ns
            fields = [_esc(rel), str(size), f"{st.st_mode:o}", str(st.st_nlink), str(st.st_uid), str(st.st_gid),
                      str(st.st_rdev), f"{mt // 10**9}.{mt % 10**9}", payload, "-", digest, *xattrs]
            lines.append(" ".join(fields))
    with open(dump, "w") as f:
        f.write("\n".join(lines) + "\n")


@contextlib.contextmanager
def user_namespace(offset: int = 100000, count: int = 65536):
    """A user namespace whose ids 0..count-1 are offset.. outside; yields its /proc/PID/ns/user.

    A process (unshare --user) holds the namespace; root writes its maps from outside, so no
    newuidmap is needed."""
    cmd = ["unshare", "--user", "sleep", "600"]
    if os.environ.get("CFS_GUEST") == "1" and os.path.exists("/proc/1/root/bin/busybox"):
        # The guest runs the tests in `chroot /host`, and the kernel refuses a new user namespace
        # to a chrooted process (EPERM): make it from the guest's own root, with its busybox.
        cmd = ["chroot", "/proc/1/root", "/bin/busybox", "unshare", "-U", "/bin/busybox", "sleep", "600"]
    p = subprocess.Popen(cmd)
    try:
        ns = f"/proc/{p.pid}/ns/user"
        deadline = time.monotonic() + 120  # generous: an emulated guest on a busy host is slow
        while True:  # until unshare(2) has run in the child
            try:
                if os.readlink(ns) != os.readlink("/proc/self/ns/user"):
                    break
            except OSError:
                pass
            if p.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"unshare --user did not make a user namespace (exit status {p.poll()})")
            time.sleep(0.01)
        for m in ("uid_map", "gid_map"):
            with open(f"/proc/{p.pid}/{m}", "w") as f:
                f.write(f"0 {offset} {count}\n")
        yield ns
    finally:
        p.kill()
        p.wait()


def idmapped(ident: int, offset: int = 100000, count: int = 65536) -> int:
    """What an idmapped mount with user_namespace()'s mapping shows for an on-disk uid or gid:
    shifted inside the mapped range, the overflow id (65534) outside it."""
    return ident + offset if ident < count else 65534
