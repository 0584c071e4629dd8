# SPDX-License-Identifier: MIT OR Apache-2.0
"""Property tests: random trees (written as dumps) survive dump -> image -> dump, the images
pass fsck.erofs, and the bytes do not depend on the thread count."""

import shutil
import subprocess

from cfsdump import canonical, escape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composefs import _native

ODD_NAMES = [b"00", b"0a", b"ff", b"a b", b"x=y", b"\\", "é".encode(), b"\x01\x7f", b"-", b"+", b"N" * 255, b"\xff\xfe"]
name_st = st.one_of(
    st.binary(min_size=1, max_size=12).filter(lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")),
    st.sampled_from(ODD_NAMES),
)
suffix_st = st.binary(min_size=1, max_size=10).filter(lambda s: b"\0" not in s)
SHARED = [(b"user.common", b"shared value"), (b"security.selinux", b"system_u:object_r:usr_t:s0"), (b"trusted.overlay.custom", b"v")]


@st.composite
def xattr_st(draw):
    kind = draw(st.sampled_from(["user", "trusted", "security", "overlay", "acl", "shared"]))
    if kind == "shared":
        return draw(st.sampled_from(SHARED))
    value = draw(st.binary(max_size=40))
    if kind == "acl":
        return draw(st.sampled_from([b"system.posix_acl_access", b"system.posix_acl_default"])), value
    suffix = draw(suffix_st)
    if kind == "overlay":
        # Names the reader cannot tell from the writer's own markings are left out.
        if suffix in (b"whiteout", b"whiteouts", b"opaque"):
            suffix = b"x" + suffix
        return b"trusted.overlay." + suffix, value
    if kind == "user" and suffix.startswith(b"overlay."):
        suffix = b"_" + suffix
    return {"user": b"user.", "trusted": b"trusted.", "security": b"security."}[kind] + suffix, value


BASE_MTIME = b"1700000000.5"


@st.composite
def dumps(draw):
    records = {}  # path -> dict of fields
    order = []
    nondirs = []

    def meta():
        mtime = draw(st.one_of(st.just(BASE_MTIME), st.builds(lambda s, n: b"%d.%d" % (s, n),
                                                               st.integers(-2**31, 2**34), st.integers(0, 999_999_999))))
        return dict(
            uid=draw(st.one_of(st.integers(0, 1000), st.integers(0, 2**32 - 1))),
            gid=draw(st.one_of(st.integers(0, 1000), st.integers(0, 2**32 - 1))),
            mtime=mtime,
            perm=draw(st.integers(0, 0o7777)),
            xattrs=dict(draw(st.lists(xattr_st(), max_size=4))),
        )

    def add(path, **f):
        records[path] = f
        order.append(path)

    def gen_dir(path, depth):
        names = draw(st.lists(name_st, max_size=7 if depth < 3 else 2, unique=True))
        if depth < 2 and draw(st.integers(0, 9)) == 0:
            # A wide directory: its entries spill over several 4 KiB blocks.
            n, length = draw(st.integers(20, 400)), draw(st.integers(1, 240))
            names += [b"w%04d" % i + b"x" * length for i in range(n)]
        for nm in names:
            p = path + b"/" + nm
            kind = draw(st.sampled_from(["dir", "inline", "object", "empty", "symlink", "chr", "blk", "fifo",
                                         "sock", "whiteout", "hardlink"]))
            if kind == "dir" and depth >= 3:
                kind = "empty"
            if kind == "hardlink":
                if not nondirs:
                    kind = "empty"
                else:
                    target = draw(st.sampled_from(nondirs))
                    records[target]["nlink"] += 1
                    add(p, link=target)
                    continue
            m = meta()
            nlink = draw(st.integers(1, 70000))
            if kind == "dir":
                add(p, mode=0o040000 | m["perm"], size=0, nlink=2, **m)
                gen_dir(p, depth + 1)
                continue
            if kind == "inline":
                content = draw(st.one_of(st.binary(min_size=1, max_size=100), st.binary(min_size=1000, max_size=4096)))
                add(p, mode=0o100000 | m["perm"], size=len(content), nlink=nlink, content=content, **m)
            elif kind == "object":
                digest = draw(st.binary(min_size=32, max_size=32)).hex()
                size = draw(st.one_of(st.integers(1, 10_000), st.integers(1, 2**44)))
                add(p, mode=0o100000 | m["perm"], size=size, nlink=nlink, payload=(digest[:2] + "/" + digest[2:]).encode(),
                    digest=digest.encode(), **m)
            elif kind == "empty":
                add(p, mode=0o100000 | m["perm"], size=0, nlink=nlink, **m)
            elif kind == "symlink":
                target = draw(st.one_of(st.binary(min_size=1, max_size=300), st.just(b"t" * 4095))
                              .filter(lambda t: b"\0" not in t))
                add(p, mode=0o120777, size=len(target), nlink=nlink, payload=target, **m)
            elif kind in ("chr", "blk"):
                rdev = draw(st.integers(1, 2**32 - 1))
                add(p, mode=(0o020000 if kind == "chr" else 0o060000) | m["perm"], size=0, nlink=nlink, rdev=rdev, **m)
            elif kind == "whiteout":
                add(p, mode=0o020000 | m["perm"], size=0, nlink=nlink, rdev=0, **m)
            else:
                add(p, mode=(0o010000 if kind == "fifo" else 0o140000) | m["perm"], size=0, nlink=nlink, **m)
            nondirs.append(p)

    root = meta()
    add(b"/", mode=0o040000 | root["perm"], size=4096, nlink=2, **root)
    gen_dir(b"", 0)

    out = []
    for p in order:
        r = records[p]
        if "link" in r:
            t = records[r["link"]]
            out.append(b"%s 0 @%o 1 0 0 0 0.0 %s - -" % (escape(p), t["mode"], escape(r["link"], lone_dash=True)))
            continue
        fields = [
            escape(p), b"%d" % r["size"], b"%o" % r["mode"], b"%d" % r["nlink"], b"%d" % r["uid"], b"%d" % r["gid"],
            b"%d" % r.get("rdev", 0), r["mtime"],
            escape(r["payload"], lone_dash=True) if "payload" in r else b"-",
            escape(r["content"], lone_dash=True) if "content" in r else b"-",
            r.get("digest", b"-"),
        ]
        fields += [escape(k, equal=True) + b"=" + escape(v, equal=True) for k, v in r["xattrs"].items()]
        out.append(b" ".join(fields))
    return b"\n".join(out) + b"\n"


def fsck_ok(path):
    r = subprocess.run(["fsck.erofs", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(dump=dumps())
def test_dump_image_dump_roundtrip(dump, tmp_path_factory):
    d = tmp_path_factory.mktemp("rt")
    img = d / "a.img"
    res = _native.build_from_dump(dump, str(img))
    data = img.read_bytes()
    assert len(data) == res.image_size
    if shutil.which("fsck.erofs"):
        fsck_ok(img)
    dump1 = _native.image_to_dump(str(img))
    assert canonical(dump1) == canonical(dump)
    # And back again: the same image bytes, the same dump text.
    res2 = _native.build_from_dump(dump1, None, return_image=True)
    assert res2.image == data
    assert res2.digest == res.digest
    img2 = d / "b.img"
    img2.write_bytes(res2.image)
    assert _native.image_to_dump(str(img2)) == dump1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(dump=dumps())
def test_bytes_do_not_depend_on_threads(dump):
    images = {_native.build_from_dump(dump, None, threads=t, return_image=True).image for t in (1, 2, 3)}
    assert len(images) == 1
