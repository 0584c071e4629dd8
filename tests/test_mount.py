# SPDX-License-Identifier: MIT OR Apache-2.0
"""Mounting composefs images on this kernel (EROFS + overlayfs) with `cfsctl mount`/`umount` and
`mount -t composefs` through the native mount.composefs helper (native/mount).

Needs root (CI runs as root) and erofs + overlay in /proc/filesystems; skips only when those are
really absent.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cfs_images  # noqa: E402

from composefs import mount as cm  # noqa: E402
from composefs import _native, mountapi  # noqa: E402


def _have_fs(name: str) -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1:] == [name] for line in f)


IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="mounting needs root")
needs_mount = pytest.mark.skipif(
    not (IS_ROOT and _have_fs("erofs") and _have_fs("overlay")),
    reason="needs root and erofs + overlay in /proc/filesystems",
)


def cfsctl(*args, user: int | None = None, check=False):
    cmd = [sys.executable, "-m", "composefs.cli", *map(str, args)]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
    if check:
        assert r.returncode == 0, r.stderr
    return r


# --- state of the system, to prove nothing is left behind ---------------------------------------


def mounts_under(path: str) -> list[str]:
    path = os.path.realpath(path)
    return [e.mountpoint for e in cm.read_mountinfo() if e.mountpoint == path or e.mountpoint.startswith(path + "/")]


def loops_backed_by(*files: str) -> list[str]:
    wanted = {os.path.realpath(f) for f in files}
    out = []
    for name in os.listdir("/sys/block"):
        bf = f"/sys/block/{name}/loop/backing_file"
        try:
            with open(bf) as f:
                if f.read().strip().removesuffix(" (deleted)") in wanted:
                    out.append(name)
        except OSError:
            pass
    return out


def temp_dirs() -> set[str]:
    return set(os.listdir("/run/composefs")) if os.path.isdir("/run/composefs") else set()


def assert_clean(tmp, images, before_tmp):
    assert mounts_under(tmp) == []
    assert loops_backed_by(*images) == []
    assert temp_dirs() <= before_tmp


# --- images ------------------------------------------------------------------------------------


class Built:
    def __init__(self, base: str, many: int = 0, large: int = 6 * 1024 * 1024, seed: int = 1, name="img",
                 writer: str | None = None):
        self.base = base
        self.src = cfs_images.make_tree(os.path.join(base, f"src-{name}"), many=many, large=large, seed=seed)
        self.store = os.path.join(base, "store")
        self.image = os.path.join(base, f"{name}.cfs")
        self.builder = cfs_images.build_image(self.src, self.image, self.store, base, writer)
        self.snap = cfs_images.snapshot(self.src)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 10,000+ entry tree with every file type, its image and its objects."""
    if not IS_ROOT:
        pytest.skip("building the test trees needs root (device nodes, owners, trusted xattrs)")
    b = Built(str(tmp_path_factory.mktemp("big")), many=10000)
    assert len(b.snap["entries"]) > 10000
    return b


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    if not IS_ROOT:
        pytest.skip("building the test trees needs root (device nodes, owners, trusted xattrs)")
    return Built(str(tmp_path_factory.mktemp("small")), many=100, large=300_000)


@pytest.fixture
def mnt(tmp_path):
    """A mount point that is guaranteed to be unmounted after the test."""
    d = tmp_path / "mnt"
    d.mkdir()
    yield str(d)
    for _ in range(4):
        if not mounts_under(str(d)):
            break
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def compare(src_snap: dict, mounted: str) -> None:
    got = cfs_images.snapshot(mounted)
    a, b = src_snap["entries"], got["entries"]
    assert sorted(a) == sorted(b)
    diffs = [(k, a[k], b[k]) for k in a if a[k] != b[k]]
    assert diffs == [], diffs[:5]
    assert got["hardlinks"] == src_snap["hardlinks"]
    assert src_snap["hardlinks"], "the source tree should have hardlinks"


# --- mounting and unmounting -------------------------------------------------------------------


@needs_mount
def test_mount_big_tree_equals_source_then_umount_leaves_nothing(big, mnt, tmp_path):
    before = temp_dirs()
    r = cfsctl("mount", big.image, mnt, "--basedir", big.store, "--json", check=True)
    info = json.loads(r.stdout)
    assert info["backend"] == "overlay" and info["mountpoint"] == mnt
    # Only the overlay is visible: the EROFS mount is detached.
    entries = [e for e in cm.read_mountinfo() if e.mountpoint == mnt]
    assert [(e.fstype, e.source) for e in entries] == [("overlay", "composefs")]
    assert not [e for e in cm.read_mountinfo() if e.fstype == "erofs" and big.base in e.mountpoint]
    compare(big.snap, mnt)
    st = os.statvfs(mnt)
    assert st.f_flag & os.ST_RDONLY
    with pytest.raises(OSError) as ei:
        open(os.path.join(mnt, "new-file"), "w")
    assert ei.value.errno == errno.EROFS
    r = cfsctl("umount", mnt, "--json", check=True)
    assert json.loads(r.stdout)["fstype"] == "overlay"
    assert_clean(str(tmp_path), [big.image], before)
    assert os.listdir(mnt) == []


@needs_mount
def test_images_come_from_our_writer(small, big):
    assert (small.builder, big.builder) == ("cfsctl", "cfsctl")


@needs_mount
def test_image_from_mkfs_erofs_mounts_too(mnt, tmp_path):
    """An image packed by erofs-utils from a staging tree in the composefs layout mounts the same."""
    b = Built(str(tmp_path), many=50, large=100_000, writer="mkfs.erofs")
    assert b.builder == "mkfs.erofs"
    cfsctl("mount", b.image, mnt, "--basedir", b.store, check=True)
    try:
        compare(b.snap, mnt)
    finally:
        cfsctl("umount", mnt, check=True)


# Every way the stock mount can be assembled, as chosen on older kernels.
STRATEGIES = [
    ("file", "new"),  # 6.13+: EROFS from the file, layers as fds
    ("loop", "new"),  # no file-backed EROFS: read-only autoclear loop device
    ("file", "new-paths"),  # 6.7-6.12: lowerdir+=/proc/self/fd/N, datadir+=PATH
    ("file", "attached"),  # before 6.15 overlayfs refuses detached layers: a brief temporary mount
    ("loop", "attached"),
    ("file", "mixed"),  # 6.5/6.6: fsmount'ed EROFS, mount(2) with lowerdir=/proc/self/fd/N::OBJ
    ("loop", "mixed"),
    ("file", "legacy"),  # no new mount API: EROFS on a temporary mount point, detached afterwards
    ("loop", "legacy"),
]


@needs_mount
@pytest.mark.parametrize("source,api", STRATEGIES)
def test_every_mount_strategy_presents_the_tree_and_cleans_up(small, mnt, tmp_path, source, api):
    before = temp_dirs()
    r = cfsctl("mount", small.image, mnt, "--basedir", small.store, "--json",
               "--erofs-source", source, "--mount-api", api, check=True)
    info = json.loads(r.stdout)
    assert info["erofs_source"] == source and info["mount_api"] == api
    if source == "loop":
        assert info["loop_device"] and loops_backed_by(small.image) == [os.path.basename(info["loop_device"])]
    compare(small.snap, mnt)
    assert [e.fstype for e in cm.read_mountinfo() if e.mountpoint == mnt] == ["overlay"]
    cfsctl("umount", mnt, check=True)
    assert_clean(str(tmp_path), [small.image], before)


@needs_mount
def test_odd_paths_are_escaped(small, tmp_path):
    """Mount point and basedir names with spaces, commas, colons and backslashes, on both APIs."""
    store = tmp_path / "obj, store:\\x"
    shutil.copytree(small.store, store)
    m = tmp_path / "mount point, with:odd\\chars"
    m.mkdir()
    try:
        for api in ("new", "attached", "mixed", "legacy"):
            cfsctl("mount", small.image, m, "--basedir", store, "--mount-api", api, check=True)
            with open(m / "small.txt", "rb") as f:
                assert f.read() == b"hello composefs\n"
            assert mounts_under(str(m)) == [str(m)]
            cfsctl("umount", m, check=True)
            assert mounts_under(str(m)) == []
    finally:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


@needs_mount
def test_two_images_sharing_objects_mounted_at_once(tmp_path):
    base = str(tmp_path)
    a = Built(base, many=300, large=200_000, seed=1, name="a")
    b = Built(base, many=300, large=200_000, seed=2, name="b")  # same store; differs in the random files
    objs = sum(len(fs) for _, _, fs in os.walk(a.store))
    assert objs < 2 * sum(1 for e in a.snap["entries"].values() if e.get("size"))  # objects are shared
    ma, mb = tmp_path / "ma", tmp_path / "mb"
    ma.mkdir()
    mb.mkdir()
    before = temp_dirs()
    try:
        cfsctl("mount", a.image, ma, "--basedir", a.store, check=True)
        cfsctl("mount", b.image, mb, "--basedir", b.store, check=True)
        assert sorted(mounts_under(base)) == sorted([str(ma), str(mb)])
        compare(a.snap, str(ma))
        compare(b.snap, str(mb))
        assert (ma / "large.bin").read_bytes() != (mb / "large.bin").read_bytes()
        assert (ma / "dir/same-content-1").read_bytes() == (mb / "dir/same-content-1").read_bytes()
        cfsctl("umount", ma, check=True)
        compare(b.snap, str(mb))  # the other mount is untouched
        cfsctl("umount", mb, check=True)
    finally:
        for m in (ma, mb):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
    assert_clean(base, [a.image, b.image], before)


@needs_mount
def test_missing_object_fails_open_other_files_read_fine(small, mnt, tmp_path):
    store = tmp_path / "partial-store"
    shutil.copytree(small.store, store)
    with open(os.path.join(small.src, "large.bin"), "rb") as f:
        h = cfs_images.fsverity_digest(f.read()).hex()
    os.unlink(store / h[:2] / h[2:])
    cfsctl("mount", small.image, mnt, "--basedir", store, check=True)
    try:
        st = os.stat(os.path.join(mnt, "large.bin"))  # metadata comes from the image
        assert st.st_size == os.stat(os.path.join(small.src, "large.bin")).st_size
        with pytest.raises(OSError) as ei:
            with open(os.path.join(mnt, "large.bin"), "rb") as f:
                f.read(1)
        # overlayfs fails the lazy data-layer lookup with ENOENT ("lazy lowerdata lookup failed
        # (/large.bin, err=-2)" in the kernel log); the composefs module answers EIO.
        assert ei.value.errno == errno.ENOENT
        with pytest.raises(OSError):
            os.open(os.path.join(mnt, "large.bin"), os.O_RDONLY)
        with open(os.path.join(mnt, "small.txt"), "rb") as f:
            assert f.read() == b"hello composefs\n"
        with open(os.path.join(mnt, "block"), "rb") as f, open(os.path.join(small.src, "block"), "rb") as g:
            assert f.read() == g.read()
    finally:
        cfsctl("umount", mnt, check=True)


@needs_mount
def test_second_basedir_is_searched_in_order(small, mnt, tmp_path):
    """Objects split over two basedirs (a local cache plus a second store) are all found."""
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(small.store, second)
    first.mkdir()
    moved = 0
    for sub in sorted(os.listdir(second))[::2]:  # move every other fan-out dir to the first store
        shutil.move(str(second / sub), str(first / sub))
        moved += 1
    assert moved
    cfsctl("mount", small.image, mnt, "--basedir", first, "--basedir", second, check=True)
    try:
        compare(small.snap, mnt)
    finally:
        cfsctl("umount", mnt, check=True)


@needs_mount
def test_writable_overlay_with_upper_and_work_dirs(small, mnt, tmp_path):
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    objs_before = {p: hashlib.sha256(open(p, "rb").read()).hexdigest()
                   for p in (os.path.join(d, f) for d, _, fs in os.walk(small.store) for f in fs)}
    r = cfsctl("mount", small.image, mnt, "--basedir", small.store, "--upperdir", upper, "--workdir", work,
               "--json", check=True)
    assert json.loads(r.stdout)["writable"] is True
    try:
        m = lambda p: os.path.join(mnt, p)  # noqa: E731
        with open(m("new.txt"), "w") as f:
            f.write("new\n")
        with open(m("small.txt"), "a") as f:  # copy-up of a metacopy file pulls data from its object
            f.write("more\n")
        os.unlink(m("dir/fifo"))
        os.mkdir(m("newdir"))
        assert open(m("small.txt")).read() == "hello composefs\nmore\n"
        assert open(m("large.bin"), "rb").read() == open(os.path.join(small.src, "large.bin"), "rb").read()
    finally:
        cfsctl("umount", mnt, check=True)
    assert (upper / "new.txt").read_text() == "new\n"
    assert (upper / "small.txt").read_text() == "hello composefs\nmore\n"
    assert stat.S_ISCHR(os.lstat(upper / "dir" / "fifo").st_mode)  # whiteout
    objs_after = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in objs_before}
    assert objs_after == objs_before  # the shared objects are never written
    # The image itself is unchanged: a read-only mount shows the original tree.
    cfsctl("mount", small.image, mnt, "--basedir", small.store, check=True)
    try:
        compare(small.snap, mnt)
    finally:
        cfsctl("umount", mnt, check=True)


@needs_mount
def test_mount_attributes(small, mnt):
    cfsctl("mount", small.image, mnt, "--basedir", small.store, "-o", "nosuid,nodev,noexec", check=True)
    try:
        f = os.statvfs(mnt).f_flag
        assert f & os.ST_NOSUID and f & os.ST_NODEV and f & os.ST_NOEXEC and f & os.ST_RDONLY
    finally:
        cfsctl("umount", mnt, check=True)


# --- errors ------------------------------------------------------------------------------------

HEX64 = "ab" * 32


def _error_cases(small, tmp):
    not_image = os.path.join(small.src, "block")
    return [
        # (arguments after "mount", text the error must contain)
        (["MISSING.cfs", "MNT", "--basedir", small.store], "image does not exist"),
        ([small.image, "MNT", "--basedir", small.image], "basedir is not a directory"),
        ([small.image, "MNT", "--basedir", tmp + "/no-such-store"], "basedir does not exist"),
        ([small.image, "MNT", "--basedir", small.store, "--digest", "xyz"], "expected 64 hex digits"),
        ([small.image, "MNT", "--basedir", small.store, "--digest", "g" * 64], "expected 64 hex digits"),
        ([small.image, "MNT", "--basedir", small.store, "--verity-check", "3"], "--verity-check"),
        ([small.image, "MNT", "--basedir", small.store, "--backend", "nfs"], "--backend"),
        ([small.image, "MNT", "--basedir", small.store, "--upperdir", tmp], "upperdir and workdir go together"),
        ([small.image, tmp + "/no-such-mnt", "--basedir", small.store], "mount point does not exist"),
        ([small.image, "MNT"], "needs --basedir"),
        ([not_image, "MNT", "--basedir", small.store], "not a composefs image"),
        ([small.image, "MNT", "--basedir", small.store, "--digest", HEX64, "--verity-check", "1"],
         "implies verity_check=2"),
        ([small.image, "MNT", "--basedir", small.store, "-o", "bogus"], 'unknown option "bogus"'),
        ([small.image, "MNT", "-o", "basedir=" + small.store + ",verity_check=7"], "bad verity_check=7"),
    ]


@needs_mount
def test_bad_options_give_clear_errors_and_mount_nothing(small, mnt, tmp_path):
    for args, message in _error_cases(small, str(tmp_path)):
        args = [mnt if a == "MNT" else a for a in args]
        r = cfsctl("mount", *args)
        assert r.returncode != 0, args
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert mounts_under(mnt) == []


def _fs_has_verity(path: str) -> bool:
    """FS_IOC_MEASURE_VERITY on a directory: ENODATA where the filesystem has fs-verity."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        mountapi.measure_verity(fd)
    except OSError as e:
        return e.errno == errno.ENODATA
    finally:
        os.close(fd)
    return True


@needs_mount
def test_verification_without_fsverity_is_refused_not_passed(small, mnt):
    if _fs_has_verity(small.store):
        pytest.skip("this filesystem has fs-verity; the guest tests cover verification")
    r = cfsctl("mount", small.image, mnt, "--basedir", small.store, "--verity-check", "2")
    assert r.returncode != 0 and "does not support fs-verity" in r.stderr
    r = cfsctl("mount", small.image, mnt, "--basedir", small.store, "--verity-check", "1")
    assert r.returncode != 0 and "does not support fs-verity" in r.stderr
    r = cfsctl("mount", small.image, mnt, "--basedir", small.store, "--digest", HEX64)
    assert r.returncode != 0 and "digest was given but the filesystem holding the image does not support fs-verity" in r.stderr
    assert mounts_under(mnt) == []


@needs_mount
def test_kernel_backend_without_module_is_a_clear_error(small, mnt):
    if _have_fs("composefs"):
        pytest.skip("the composefs module is loaded here")
    r = cfsctl("mount", small.image, mnt, "--basedir", small.store, "--backend", "kernel")
    assert r.returncode != 0 and "composefs kernel module is not loaded" in r.stderr
    # auto falls back to the stock path
    r = cfsctl("mount", small.image, mnt, "--basedir", small.store, "--backend", "auto", "--json", check=True)
    assert json.loads(r.stdout)["backend"] == "overlay"
    cfsctl("umount", mnt, check=True)


@needs_root
def test_unprivileged_user_gets_must_be_root(small, mnt):
    """The kernel paths need root (a user's default is FUSE, tested in test_fuse.py); umount
    looks at the mount first, since a user may unmount a FUSE mount of theirs."""
    for backend in ("overlay", "kernel"):
        r = cfsctl("mount", small.image, mnt, "--basedir", small.store, "--backend", backend, user=65534)
        assert r.returncode != 0
        assert "must be root" in r.stderr or "module is not loaded" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = cfsctl("umount", mnt, user=65534)
    assert r.returncode != 0 and "mount point" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert mounts_under(mnt) == []


@needs_mount
def test_umount_refuses_what_is_not_composefs(mnt, tmp_path):
    r = cfsctl("umount", mnt)
    assert r.returncode != 0 and "not a mount point" in r.stderr
    r = cfsctl("umount", tmp_path / "nowhere")
    assert r.returncode != 0 and "no such mount point" in r.stderr
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "cfs-test-tmpfs", mnt], check=True)
    try:
        r = cfsctl("umount", mnt)
        assert r.returncode != 0 and "not a composefs mount (it is tmpfs" in r.stderr
        assert mounts_under(mnt) == [mnt]  # still mounted
    finally:
        subprocess.run(["umount", mnt], check=True)


@needs_mount
def test_umount_busy_then_lazy(small, mnt):
    cfsctl("mount", small.image, mnt, "--basedir", small.store, check=True)
    f = open(os.path.join(mnt, "large.bin"), "rb")
    try:
        r = cfsctl("umount", mnt)
        assert r.returncode != 0 and "busy" in r.stderr
        cfsctl("umount", "--lazy", mnt, check=True)
        assert mounts_under(mnt) == []
        assert f.read(4)  # the open file keeps working until closed
    finally:
        f.close()


# --- mount(8) and the mount.composefs helper ---------------------------------------------------


def test_install_helper(tmp_path):
    from composefs.cmd_install_helper import HELPER

    r = cfsctl("install-helper", "--prefix", tmp_path, "--json", check=True)
    info = json.loads(r.stdout)
    link = tmp_path / HELPER
    assert info["changed"] and os.path.islink(link) and os.access(link, os.X_OK)
    assert os.path.realpath(link) == os.path.realpath(info["target"])
    assert json.loads(cfsctl("install-helper", "--prefix", tmp_path, "--json", check=True).stdout)["changed"] is False
    link.unlink()
    link.write_text("someone else's helper")
    r = cfsctl("install-helper", "--prefix", tmp_path)
    assert r.returncode != 0 and "already exists" in r.stderr
    cfsctl("install-helper", "--prefix", tmp_path, "--force", check=True)
    assert os.path.islink(link)


HELPER = os.path.join(os.path.dirname(sys.executable), "mount.composefs")


def helper(*args, ref: str | None = None):
    return subprocess.run([ref or HELPER, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_helper_is_a_native_binary():
    with open(HELPER, "rb") as f:
        assert f.read(4) == b"\x7fELF"  # no interpreter starts at mount time


# The option parser the helper and `cfsctl mount -o` share (native/mount/src/options.rs).
HELPER_PARSE = [
    (["basedir=/a:/b,verity_check=1"], {"basedirs": [b"/a", b"/b"], "verity_check": 1}),
    (["ro,basedir=/a", "digest=" + HEX64.upper()], {"basedirs": [b"/a"], "digest": HEX64, "readonly": True}),
    (["rw,nosuid,nodev,basedir=/a,upperdir=/u,workdir=/w,x-systemd.automount,_netdev"],
     {"attrs": ["nosuid", "nodev"], "upperdir": b"/u", "workdir": b"/w", "readonly": False}),
    (["basedir=/a,backend=overlay,verity"], {"backend": "overlay", "require_verity": True}),
    (["basedir=/a,tryverity,idmap=/proc/1/ns/user"], {"try_verity": True, "idmap": b"/proc/1/ns/user"}),
    ([r"basedir=/o\,1:/o\:2:/o\\3,upperdir=/u\,x"], {"basedirs": [b"/o,1", b"/o:2", b"/o\\3"], "upperdir": b"/u,x"}),
]


@pytest.mark.parametrize("opts,expect", HELPER_PARSE)
def test_helper_option_parser(opts, expect):
    got = _native.parse_mount_options(opts)
    assert isinstance(got, _native.MountOptions)
    for k, v in expect.items():
        g = getattr(got, k)
        if k in ("basedirs", "upperdir", "workdir", "idmap"):
            g = [os.fsencode(x) for x in g] if isinstance(g, list) else os.fsencode(g)
        assert g == v, k


# (arguments, exit status, text on stderr): mount(8)'s statuses, 1 for usage, 32 for failures.
HELPER_ERRORS = [
    (["img"], 1, "no mount point given"),
    ([], 1, "no image given"),
    (["img", "/m"], 1, "missing basedir"),
    (["img", "/m", "-o", "basedir=/a,unknown=1"], 1, "unknown option"),
    (["img", "/m", "-s", "-o", "basedir=/a,noverity"], 1, "refused even with -s"),
    (["img", "/m", "-o", "basedir=/a,verity_check=5"], 1, "verity_check"),
    (["img", "/m", "-o", "basedir=/a,digest=12"], 1, "64 hex digits"),
    (["img", "/m", "-o", "basedir=/a,verity,verity_check=1"], 1, "implies verity_check=2"),
    (["img", "/m", "-t", "ext4", "-o", "basedir=/a"], 1, "not ext4"),
    (["img", "/m", "-o", "basedir=/a,upperdir=/u"], 1, "go together"),
    (["img", "/m", "-o", "basedir=/a::/b"], 1, "empty directory name"),
    (["img", "/m", "-q", "-o", "basedir=/a"], 1, "unknown flag -q"),
    (["img", "/m", "--bogus"], 1, "unknown option --bogus"),
]


@pytest.mark.parametrize("argv,status,message", HELPER_ERRORS)
def test_helper_rejects_bad_arguments(argv, status, message):
    r = helper(*argv)
    assert (r.returncode, r.stdout) == (status, ""), r.stderr
    assert r.stderr.startswith("mount.composefs: ") and message in r.stderr, r.stderr


def test_helper_help_and_version():
    for flag in ("-h", "--help"):
        r = helper(flag)
        assert r.returncode == 0 and r.stdout.startswith("usage: mount.composefs") and "tryverity" in r.stdout
    r = helper("--version")
    assert r.returncode == 0 and r.stdout.startswith("mount.composefs ")
    # -f (fake) checks the options and mounts nothing; sloppy skips what it does not know
    r = helper("-f", "-s", "-v", "img", "/m", "-o", "basedir=/a,whatever=1")
    assert r.returncode == 0 and "would mount img on /m" in r.stdout


@needs_root
def test_helper_failures_exit_32(small, mnt, tmp_path):
    cases = [
        ([tmp_path / "missing.cfs", mnt, "-o", f"basedir={small.store}"], "image does not exist"),
        ([small.image, tmp_path / "nowhere", "-o", f"basedir={small.store}"], "mount point does not exist"),
        ([small.image, mnt, "-o", f"basedir={tmp_path}/none"], "basedir does not exist"),
        ([small.image, mnt, "-o", f"basedir={small.store},idmap={tmp_path}/no-userns"], "idmap"),
    ]
    for argv, message in cases:
        r = helper(*argv)
        assert r.returncode == 32 and message in r.stderr, (argv, r.stderr)
    assert mounts_under(mnt) == []
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", HELPER, small.image, mnt,
                        "-o", f"basedir={small.store}"], capture_output=True, text=True)
    assert r.returncode == 1 and "must be root" in r.stderr


@needs_mount
def test_helper_escaped_commas_and_colons_reach_the_kernel(small, tmp_path):
    store = tmp_path / "obj,store:x"
    shutil.copytree(small.store, store)
    m = tmp_path / "mnt"
    m.mkdir()
    esc = str(store).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")
    r = helper(small.image, m, "-o", f"ro,basedir={esc}")
    try:
        assert r.returncode == 0, r.stderr
        with open(m / "small.txt", "rb") as f:
            assert f.read() == b"hello composefs\n"
        compare(small.snap, str(m))
    finally:
        subprocess.run(["umount", str(m)], capture_output=True)
    assert mounts_under(str(m)) == []


@needs_mount
def test_helper_verification_options_are_never_dropped(small, mnt):
    """Without fs-verity here, `verity` and `digest=` refuse (exit 32), with -s too; `tryverity`
    mounts with overlay verity=require (the kernel can verify), as the reference helper does."""
    if _fs_has_verity(small.store):
        pytest.skip("this filesystem has fs-verity; the guest tests cover verification")
    for opts in ("verity", f"digest={HEX64}", "verity_check=1"):
        for flags in ([], ["-s"]):
            r = helper(*flags, small.image, mnt, "-o", f"basedir={small.store},{opts}")
            assert r.returncode == 32 and "fs-verity" in r.stderr, (opts, r.stderr)
    assert mounts_under(mnt) == []
    r = helper(small.image, mnt, "-o", f"basedir={small.store},tryverity")
    assert r.returncode == 0, r.stderr
    try:
        (e,) = [e for e in cm.read_mountinfo() if e.mountpoint == mnt]
        assert "verity=require" in e.super_options.split(",")
    finally:
        cfsctl("umount", mnt, check=True)


@pytest.fixture
def userns():
    """A user namespace mapping its uids/gids 0..65535 to 100000..165535 outside (/proc/PID/ns/user)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is missing")
    with cfs_images.user_namespace() as ns:
        yield ns


def _owners(snap: dict) -> dict:
    return {k: (e["uid"], e["gid"]) for k, e in snap["entries"].items()}


@needs_mount
@pytest.mark.parametrize("api", ["new", "attached"])
def test_idmap_shifts_owners_on_the_stock_path(small, mnt, userns, api):
    """idmap=PATH: the image's tree seen through the namespace's ID mapping (uid u shows as
    100000+u), through the helper and through `cfsctl mount -o` (the same Rust code)."""
    want = {k: (cfs_images.idmapped(u), cfs_images.idmapped(g)) for k, (u, g) in _owners(small.snap).items()}
    assert len({u for u, _ in want.values()}) > 2  # several owners, one of them outside the mapping
    r = helper(small.image, mnt, "-o", f"basedir={small.store},idmap={userns}")
    assert r.returncode == 0, r.stderr
    try:
        assert _owners(cfs_images.snapshot(mnt, content=False)) == want
        with open(os.path.join(mnt, "small.txt"), "rb") as f:
            assert f.read() == b"hello composefs\n"
    finally:
        cfsctl("umount", mnt, check=True)
    r = cfsctl("mount", small.image, mnt, "-o", f"basedir={small.store},idmap={userns}", "--mount-api", api,
               "--json", check=True)
    try:
        assert json.loads(r.stdout)["idmap"] == userns
        assert _owners(cfs_images.snapshot(mnt, content=False)) == want
    finally:
        cfsctl("umount", mnt, check=True)
    # Not a user namespace: refused, nothing mounted.
    r = helper(small.image, mnt, "-o", f"basedir={small.store},idmap=/proc/self/ns/mnt")
    assert r.returncode == 32 and "idmap" in r.stderr
    assert mounts_under(mnt) == []


@needs_mount
def test_cfsctl_mount_takes_helper_options_and_the_name_rule(small, mnt, tmp_path):
    r = cfsctl("mount", small.image, mnt, "-o", f"basedir={small.store},nosuid", "--json", check=True)
    try:
        assert json.loads(r.stdout)["basedirs"] == [small.store]
        assert os.statvfs(mnt).f_flag & os.ST_NOSUID
    finally:
        cfsctl("umount", mnt, check=True)
    # A bare name is a repository name even when a file of that name is in the current directory;
    # the error says how to mean the file.
    here = tmp_path / "cwd"
    here.mkdir()
    shutil.copy(small.image, here / "app.cfs")
    r = subprocess.run([sys.executable, "-m", "composefs.cli", "mount", "app.cfs", mnt, "--repo",
                        str(tmp_path / "no-repo")], capture_output=True, text=True, cwd=here)
    assert r.returncode != 0 and "write ./app.cfs" in r.stderr, r.stderr
    assert mounts_under(mnt) == []


HELPER_SCRIPT = textwrap.dedent("""
    set -e
    # A private mount namespace: mount(8) finds mount.composefs in /sbin (= /usr/sbin) only here.
    mount -t overlay cfs-test-sbin -o lowerdir="$HELPERS":/usr/sbin /usr/sbin
    mount -t composefs "$IMAGE" "$MNT" -o "basedir=$STORE"
    findmnt -n -o FSTYPE,SOURCE "$MNT" > "$OUT/findmnt"
    "$PY" -c 'import sys, json; sys.path.insert(0, sys.argv[1]); import cfs_images; \
json.dump(cfs_images.snapshot(sys.argv[2]), open(sys.argv[3], "w"))' "$TESTS" "$MNT" "$OUT/snap.json"
    umount "$MNT"
    ! findmnt -n "$MNT"
    # fake mode and verbose flags
    mount -f -v -t composefs "$IMAGE" "$MNT" -o "basedir=$STORE"
    ! findmnt -n "$MNT"
    echo ok > "$OUT/done"
""")


@needs_mount
def test_mount8_with_installed_helper(small, mnt, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is missing")
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    cfsctl("install-helper", "--prefix", helpers, check=True)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, HELPERS=str(helpers), IMAGE=small.image, MNT=mnt, STORE=small.store, OUT=str(out),
               PY=sys.executable, TESTS=HERE)
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", HELPER_SCRIPT],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "done").read_text() == "ok\n"
    assert (out / "findmnt").read_text().split() == ["overlay", "composefs"]
    got = json.loads((out / "snap.json").read_text())
    assert got["entries"] == json.loads(json.dumps(small.snap["entries"]))
    assert mounts_under(mnt) == []


REFERENCE_HELPER = os.environ.get("MOUNT_COMPOSEFS")

# Option strings both helpers take alike: (options after basedir=STORE, whether the mount succeeds).
SAME_AS_REFERENCE = [
    ("", True),
    (",ro", True),
    (",rw", True),
    (",tryverity", True),
    (",bogus", False),
    (",upperdir=/nonexistent", False),
    (",digest=xyz", False),
]


@needs_mount
@pytest.mark.skipif(not REFERENCE_HELPER, reason="set MOUNT_COMPOSEFS to the reference (composefs 1.0.x) helper")
@pytest.mark.parametrize("extra,ok", SAME_AS_REFERENCE)
def test_helper_agrees_with_the_reference(small, mnt, extra, ok):
    """Same options, same outcome and the same overlay options in mountinfo (but the lower
    layer's path, a temporary directory for the reference, a detached mount for us)."""
    seen = []
    for tool in (HELPER, REFERENCE_HELPER):
        r = helper(small.image, mnt, "-o", f"basedir={small.store}{extra}", ref=tool)
        assert (r.returncode == 0) == ok, (tool, r.stderr)
        if ok:
            (e,) = [e for e in cm.read_mountinfo() if e.mountpoint == mnt]
            seen.append((e.fstype, e.source, sorted(o for o in e.super_options.split(",")
                                                    if not o.startswith("lowerdir"))))
            subprocess.run(["umount", mnt], check=True)
    assert mounts_under(mnt) == []
    if ok:
        assert seen[0] == seen[1]
