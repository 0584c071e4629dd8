# SPDX-License-Identifier: MIT OR Apache-2.0
"""`cfsctl oci pull` from a real registry (Debian's docker-registry, distribution v2) that skopeo
pushed images into: by tag and by digest, image indexes and --platform, basic auth with the usual
auth.json locations, layers skipped when already imported, bytes the registry serves wrongly,
the mounted result against `umoci unpack` of the same image, and network faults between two
network namespaces (delay, loss, reorder, a cut link, a killed registry, a killed client).

Every failure must be one line `cfsctl: error: ...`, exit 1, and leave the repository as it was.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import re
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import ocireg
from cfsrun import cfsctl
from webrepo import Nginx, needs_nginx
from ocireg import (
    E,
    Layout,
    NetPair,
    Registry,
    RepoState,
    assert_refused,
    build_image,
    cfsctl_bounded,
    d,
    hard,
    htpasswd_line,
    needs,
    needs_root,
    sym,
    tag,
)

pytestmark = needs("docker-registry", "skopeo", "zstd")

USER, PASSWORD = "cfs-test", "pull-me-if-you-can"


def host_arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(m, m)


# ---- images -----------------------------------------------------------------------------------

BIG = {k: os.urandom(4096 * 3 + i) for i, k in enumerate(["a", "b", "c", "d"])}


def sample_layers(flavour: str = "") -> list:
    """Three layers (plain tar, gzip, zstd) with what an image holds: owners, odd modes,
    symlinks, hardlinks within and across layers, devices, a fifo, xattrs, whiteouts, an opaque
    directory, sparse-sized and empty files, and varied mtimes."""
    return [
        ([d("etc"), d("usr"), d("usr/bin"), d("usr/lib"), sym("lib", "usr/lib"), d("tmp", 0o1777),
          d("home"), d("home/u", 0o700, uid=1000, gid=1000), d("old"), d("opq"),
          E("etc/hostname", f"pulled{flavour}\n".encode(), mtime=1600000000),
          E("usr/bin/prog", BIG["a"], mode=0o4755), hard("usr/bin/prog-hl", "usr/bin/prog"),
          E("home/u/.profile", b"# profile\n", uid=1000, gid=1000, mode=0o600),
          E("old/gone", BIG["b"]), E("opq/lower", b"lower"), E("doomed", b"x" * 200),
          E("xattr-file", b"has xattrs", xattrs={"user.one": "1", "user.two": "second value"})], "none"),
        ([E("usr/lib/libx.so.1", BIG["c"], mtime=1500000000), sym("usr/lib/libx.so", "libx.so.1"),
          hard("usr/bin/prog-hl2", "usr/bin/prog"), E(".wh.doomed", b""), E("old/.wh..wh..opq", b""),
          E("opq/.wh..wh..opq", b""), E("opq/upper", b"upper" * 20), E("empty", b""),
          E("dev-null", type=tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
          E("fifo", type=tarfile.FIFOTYPE, mode=0o600)], "gzip"),
        ([E("lib/via-symlink", BIG["d"]), E("etc/hostname", f"changed{flavour}\n".encode(), mtime=1700000123),
          d("dir-late", 0o751, uid=33, gid=44)], "zstd"),
    ]


def make_layout(root: Path, *, multi: bool = False, name: str = "t", zstd: bool = True) -> tuple[Layout, list]:
    """zstd=False: gzip instead, for umoci 0.4 (Debian 12's), which cannot read zstd layers."""
    lay = Layout(root)
    if not multi:
        layers = sample_layers()
        if not zstd:
            layers = [(entries, "gzip" if how == "zstd" else how) for entries, how in layers]
        imgs = [build_image(lay, layers)]
    else:
        imgs = [build_image(lay, sample_layers(f"-{arch}") + [([E("arch", arch.encode())], "gzip")],
                            arch=arch.split("/")[0], variant=(arch.split("/") + [None])[1])
                for arch in ("amd64", "arm64", "arm/v7")]
    tag(lay, imgs, name, multi=multi)
    return lay, imgs


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    if not ocireg.have("htpasswd"):
        pytest.skip("htpasswd (apache2-utils) is not installed")
    reg = Registry(tmp_path_factory.mktemp("auth-registry"), htpasswd=htpasswd_line(USER, PASSWORD)).start()
    yield reg
    reg.stop()


@pytest.fixture
def repo(tmp_path):
    r = cfsctl("init", "--repo", tmp_path / "repo")
    assert r.returncode == 0, r.stderr
    return tmp_path / "repo"


def pull(repo, ref, name="img", *extra, timeout=300, prefix=None, env=None):
    return cfsctl_bounded("oci", "pull", ref, "--name", name, "--repo", repo, "--tls-verify=false", "--json",
                          *extra, timeout=timeout, prefix=prefix, env=env)


def pull_ok(repo, ref, name="img", *extra, **kw) -> dict:
    r = pull(repo, ref, name, *extra, **kw)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    return json.loads(r.stdout)


def import_ok(repo, archive, name="imp") -> dict:
    r = cfsctl_bounded("oci", "import", archive, "--name", name, "--repo", repo, "--json", timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    return json.loads(r.stdout)


def refs(repo) -> dict[str, str]:
    r = cfsctl("images", "--repo", repo, "--json")
    assert r.returncode == 0, r.stderr
    return {i["name"]: i["digest"] for i in json.loads(r.stdout)}


def dump_of(repo, dgst) -> dict[str, list[bytes]]:
    r = cfsctl("info", "dump", repo / "images" / dgst)
    assert r.returncode == 0, r.stderr
    return {ln.split(b" ")[0].decode(): ln.split(b" ") for ln in r.stdout.splitlines()}


def file_in(repo, dgst, path) -> bytes:
    t = dump_of(repo, dgst)
    f = t[path]
    if f[2].startswith(b"@"):
        f = t[f[8].decode()]
    if f[8] != b"-":
        return (repo / "objects" / f[8].decode()).read_bytes()
    return b"" if f[9] == b"-" else ocireg.unescape_dump(f[9])


# ---- pulling ----------------------------------------------------------------------------------


def test_pull_by_tag_and_by_digest(registry, repo, tmp_path):
    lay, _ = make_layout(tmp_path / "lay")
    ref = registry.push(lay.root, "t", "cfs/sample")
    ref_digest = registry.manifest_digest("cfs/sample", "t")
    a = pull_ok(repo, ref, "by-tag")
    b = pull_ok(repo, f"docker://{registry.addr}/cfs/sample@{ref_digest}", "by-digest")
    c = import_ok(repo, lay.root, "imported")
    # one image whatever the way in: the same tree, the same composefs image
    assert a["digest"] == b["digest"] == c["digest"]
    assert refs(repo) == {"by-tag": a["digest"], "by-digest": a["digest"], "imported": a["digest"]}
    assert file_in(repo, a["digest"], "/etc/hostname") == b"changed\n"
    assert file_in(repo, a["digest"], "/usr/lib/via-symlink") == BIG["d"]
    assert cfsctl("fsck", "--repo", repo).returncode == 0


def test_pull_refuses_what_does_not_exist(registry, repo):
    before = RepoState.of(repo)
    for ref in (f"docker://{registry.addr}/cfs/nothing:here",
                f"docker://{registry.addr}/cfs/sample@sha256:{'0' * 64}",
                f"docker://{registry.addr}/cfs/sample@sha256:{'0' * 63}",
                f"docker://{registry.addr}/cfs/sample@md5:{'0' * 32}",
                "docker://127.0.0.1:1/cfs/sample:t",  # nothing listens on port 1
                "not-a-reference"):
        assert_refused(pull(repo, ref, timeout=120), repo, before, what=ref)


def test_pull_multi_arch(registry, repo, tmp_path):
    lay, _ = make_layout(tmp_path / "lay", multi=True, name="multi")
    ref = registry.push(lay.root, "multi", "cfs/multi")
    for plat, want in (("linux/arm64", "arm64"), ("linux/amd64", "amd64"), ("linux/arm/v7", "arm/v7")):
        r = pull_ok(repo, ref, "p-" + want.replace("/", "-"), "--platform", plat)
        assert file_in(repo, r["digest"], "/arch") == want.encode(), plat
        assert file_in(repo, r["digest"], "/etc/hostname") == f"changed-{want}\n".encode()
    if host_arch() in ("amd64", "arm64"):
        r = pull_ok(repo, ref, "default")
        assert file_in(repo, r["digest"], "/arch") == host_arch().encode()
    before = RepoState.of(repo)
    assert_refused(pull(repo, ref, "s390x", "--platform", "linux/s390x"), repo, before, what="absent platform")
    assert_refused(pull(repo, ref, "bad", "--platform", "linux"), repo, before, what="malformed platform")


def _auth_json(reg: Registry, password: str = PASSWORD) -> dict:
    tok = base64.b64encode(f"{USER}:{password}".encode()).decode()
    return {"auths": {reg.addr: {"auth": tok}}}


def test_pull_basic_auth(auth_registry, repo, tmp_path):
    lay, _ = make_layout(tmp_path / "lay")
    ref = auth_registry.push(lay.root, "t", "cfs/private", creds=f"{USER}:{PASSWORD}")
    clean = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    home.mkdir()
    xdg.mkdir()
    env = {**clean, "HOME": str(home), "XDG_RUNTIME_DIR": str(xdg)}
    before = RepoState.of(repo)
    assert_refused(pull(repo, ref, "anon", env=env), repo, before, what="no credentials")

    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_auth_json(auth_registry, "not-the-password")))
    assert_refused(pull(repo, ref, "wrong", "--authfile", wrong, env=env), repo, before, what="wrong password")

    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps(_auth_json(auth_registry)))
    want = pull_ok(repo, ref, "authfile", "--authfile", authfile, env=env)["digest"]

    (xdg / "containers").mkdir()
    (xdg / "containers" / "auth.json").write_text(json.dumps(_auth_json(auth_registry)))
    assert pull_ok(repo, ref, "xdg", env=env)["digest"] == want
    (xdg / "containers" / "auth.json").unlink()

    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text(json.dumps(_auth_json(auth_registry)))
    assert pull_ok(repo, ref, "docker-config", env=env)["digest"] == want
    assert set(refs(repo)) == {"authfile", "xdg", "docker-config"}


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory):
    """A registry with bearer-token authentication, and its token service."""
    root = tmp_path_factory.mktemp("token-registry")
    tokens = ocireg.TokenServer(root / "tokens", USER, PASSWORD)
    reg = Registry(root / "registry", token=tokens).start()
    yield reg, tokens
    reg.stop()
    tokens.stop()


def test_pull_token_auth(token_registry, repo, tmp_path):
    """Bearer-token authentication (the registry answers 401 with a realm; the token service
    takes the user's credentials and grants a pull scope): the token is asked for with the
    credentials from auth.json and the repository's pull scope. Without credentials, and from a
    token service that answers wrongly, a one-line error and the repository as it was."""
    reg, tokens = token_registry
    lay, _ = make_layout(tmp_path / "lay")
    ref = reg.push(lay.root, "t", "cfs/tokened", creds=f"{USER}:{PASSWORD}")
    clean = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
    env = {**clean, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps(_auth_json(reg)))
    before = RepoState.of(repo)
    seen = len(tokens.seen)
    assert_refused(pull(repo, ref, "anon", env=env), repo, before, "token", what="no credentials")
    assert [s[1] for s in tokens.seen[seen:]] == [None], tokens.seen[seen:]

    for reply, phrase in [((200, b'{"token": ""}'), "holds no token"), ((200, b"[1, 2]"), "holds no token"),
                          ((200, b"not json"), "holds no token"), ((500, b"down"), "token")]:
        tokens.reply = reply
        try:
            assert_refused(pull(repo, ref, "bad", "--authfile", authfile, env=env), repo, before, phrase,
                           what=f"token service answering {reply}")
        finally:
            tokens.reply = None

    seen = len(tokens.seen)
    got = pull_ok(repo, ref, "tokened", "--authfile", authfile, env=env)
    ours = tokens.seen[seen:]
    assert ours and all(s == ("repository:cfs/tokened:pull", USER, "cfsctl") for s in ours), ours
    assert refs(repo) == {"tokened": got["digest"]}


@needs_nginx
def test_pull_follows_blob_redirects_and_refuses_bad_ones(registry, repo, tmp_path):
    """Registries send blobs from elsewhere (a storage service) by redirecting their GETs: nginx in
    front of the registry answers blob requests with a 307, to the registry itself (followed: the
    pull completes and the blobs are fetched from the target), or to somewhere this client does
    not go — another scheme, a port out of range (which getaddrinfo would wrap) — a one-line
    error and the repository as it was."""
    lay, _ = make_layout(tmp_path / "lay")
    for name in ("redir", "redir-ftp", "redir-port"):
        registry.push(lay.root, "t", f"cfs/{name}")
    up = registry.addr
    locations = f"""
        location ~ ^/v2/cfs/redir/blobs/(.*)$ {{ return 307 http://{up}/v2/cfs/redir/blobs/$1; }}
        location ~ ^/v2/cfs/redir-ftp/blobs/(.*)$ {{ return 307 ftp://{up}/$1; }}
        location ~ ^/v2/cfs/redir-port/blobs/(.*)$ {{ return 307 http://127.0.0.1:99999/$1; }}
        location /v2/ {{ proxy_pass http://{up}; proxy_set_header Host $http_host; }}
    """
    front = Nginx(tmp_path, tmp_path, locations=locations)
    try:
        host = f"{front.host}:{front.port}"
        start = len(registry.requests())
        got = pull_ok(repo, f"docker://{host}/cfs/redir:t", "redir")
        assert front.requests("/v2/cfs/redir/blobs/") >= 2  # the config and the layers, redirected
        assert len(registry.blob_gets(start)) >= 2  # ... and fetched from the registry itself
        assert refs(repo) == {"redir": got["digest"]}
        before = RepoState.of(repo)
        for name in ("redir-ftp", "redir-port"):
            assert_refused(pull(repo, f"docker://{host}/cfs/{name}:t", name), repo, before, "redirect to",
                           what=name)
    finally:
        front.stop()


def test_pull_skips_layers_already_imported(registry, repo, tmp_path):
    """A second image sharing the first two layers fetches only its third: layers are known by
    diff_id, however they were compressed."""
    lay = Layout(tmp_path / "lay")
    layers = sample_layers()
    tag(lay, [build_image(lay, layers[:2])], "two")
    three = build_image(lay, layers)
    tag(lay, [three], "three")
    registry.push(lay.root, "two", "cfs/share")
    registry.push(tmp_path / "lay", "three", "cfs/share")
    start = len(registry.requests())
    pull_ok(repo, f"docker://{registry.addr}/cfs/share:two", "two")
    first = registry.blob_gets(start)
    start = len(registry.requests())
    pull_ok(repo, f"docker://{registry.addr}/cfs/share:three", "three")
    second = registry.blob_gets(start)
    layer_digests = [x["digest"] for x in three.layers]
    assert set(layer_digests[:2]) <= set(first)
    assert not set(layer_digests[:2]) & set(second), second
    assert layer_digests[2] in second


def _registry_blob_file(reg: Registry, dgst: str) -> Path:
    hexd = dgst.split(":")[1]
    return reg.root / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"


@pytest.mark.parametrize("which", ["layer", "config", "manifest"])
def test_pull_refuses_wrong_bytes_from_the_registry(which, tmp_path, repo):
    """The registry serves a blob whose bytes do not match its digest (same size, changed in its
    storage where only the digest can tell: a byte of a file's content in the plain-tar layer, a
    space turned into a tab in the JSON): the pull stops with `digest mismatch`, keeps nothing.
    The manifest is pulled by digest, the reference a client can hold it to."""
    with ocireg.running_registry(tmp_path / "reg") as reg:
        lay, (img,) = make_layout(tmp_path / "lay")
        ref = reg.push(lay.root, "t", "cfs/tampered")
        mdigest = reg.manifest_digest("cfs/tampered", "t")
        dg = {"layer": img.layers[0]["digest"], "config": img.config["digest"], "manifest": mdigest}[which]
        blob = _registry_blob_file(reg, dg)
        b = bytearray(blob.read_bytes())
        if which == "layer":
            with tarfile.open(blob) as tf:
                b[tf.getmember("usr/bin/prog").offset_data + 100] ^= 1
        else:
            b[b.index(b", ")+1] = ord("\t")
        blob.write_bytes(bytes(b))
        if which == "manifest":
            ref = f"docker://{reg.addr}/cfs/tampered@{mdigest}"
        before = RepoState.of(repo)
        line = assert_refused(pull(repo, ref), repo, before, "digest mismatch", what=which)
        if which != "manifest":
            assert dg in line


def test_pull_json_summary_and_refs(registry, repo, tmp_path):
    lay, (img,) = make_layout(tmp_path / "lay")
    ref = registry.push(lay.root, "t", "cfs/json")
    r = pull_ok(repo, ref, "j")
    assert r["name"] == "j" and r["layers"] == 3 and r["missing_objects"] == 0
    assert (repo / "images" / r["digest"]).is_file()
    side = repo / "images" / (r["digest"] + ".oci")
    assert json.loads((side / "config.json").read_bytes())["rootfs"]["diff_ids"]
    # pulling again changes nothing and fetches no layer
    start = len(registry.requests())
    assert pull_ok(repo, ref, "j")["digest"] == r["digest"]
    assert not set(registry.blob_gets(start)) & {x["digest"] for x in img.layers}


def test_pull_progress_line_on_a_terminal(registry, repo, tmp_path):
    """With stderr on a terminal the pull shows its progress with a byte rate; the result is the
    same image."""
    import pty

    lay = Layout(tmp_path / "lay")
    tag(lay, [build_image(lay, [([E(f"f{i}", os.urandom(1 << 20)) for i in range(6)], "gzip")])], "t")
    ref = registry.push(lay.root, "t", "cfs/progress")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "composefs.cli", "oci", "pull", ref, "--name", "p", "--repo",
                             str(repo), "--tls-verify=false"], stdout=subprocess.DEVNULL, stderr=slave,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=300) == 0, out[-2000:]
    text = out.decode(errors="replace")
    assert "Traceback" not in text
    assert re.search(r"[0-9.]+ ?[kMG]?i?B/s", text), text[-2000:]
    assert refs(repo)["p"] == reference_digest(tmp_path, lay)


# ---- the mounted image against umoci unpack ----------------------------------------------------


def tree_entries(root: Path) -> tuple[dict, set]:
    """path -> metadata and content digest, and the hardlink groups (sets of paths of one inode)."""
    out, inodes = {}, {}
    root = Path(root)
    for dirpath, dirs, files in os.walk(root):
        for n in [".", *dirs, *files] if Path(dirpath) == root else [*dirs, *files]:
            p = Path(dirpath) / n if n != "." else Path(dirpath)
            rel = "/" + str(p.relative_to(root)) if p != root else "/"
            st = p.lstat()
            kind = stat.S_IFMT(st.st_mode)
            xattrs = {}
            for k in os.listxattr(p, follow_symlinks=False):
                if not k.startswith("trusted.overlay."):
                    xattrs[k] = os.getxattr(p, k, follow_symlinks=False)
            e = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "xattrs": xattrs}
            if rel != "/":
                e["mtime"] = st.st_mtime_ns
            if stat.S_ISLNK(st.st_mode):
                e["target"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                e["size"] = st.st_size
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                e["sha256"] = h.hexdigest()
                e["nlink"] = st.st_nlink
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                e["rdev"] = st.st_rdev
            out[rel] = e
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    return out, {frozenset(g) for g in inodes.values() if len(g) > 1}


def umoci_rootfs(layout: Path, tag_: str, dest: Path) -> Path:
    r = subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag_}", str(dest)], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return dest / "rootfs"


def compare_trees(mounted: Path, reference: Path) -> None:
    a, ha = tree_entries(mounted)
    b, hb = tree_entries(reference)
    assert sorted(a) == sorted(b), (sorted(set(a) - set(b))[:20], sorted(set(b) - set(a))[:20])
    diffs = [(p, a[p], b[p]) for p in sorted(a) if a[p] != b[p]]
    assert not diffs, f"{len(diffs)} entries differ, e.g. {diffs[:5]}"
    assert ha == hb


def _mount(repo, name, mnt):
    mnt.mkdir()
    r = cfsctl("mount", name, mnt, "--repo", repo)
    assert r.returncode == 0, r.stderr


def _fetch_layout(ref: str, dest: Path, tag_: str = "t") -> Path:
    r = subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "--preserve-digests", ref,
                        f"oci:{dest}:{tag_}"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return dest


def _compare_with_umoci(repo, name, layout, tag_, tmp_path):
    ref_root = umoci_rootfs(layout, tag_, tmp_path / "bundle")
    mnt = tmp_path / "mnt"
    _mount(repo, name, mnt)
    try:
        compare_trees(mnt, ref_root)
    finally:
        cfsctl("umount", mnt)


@needs_root
@needs("umoci")
def test_imported_layout_equals_umoci_unpack(registry, repo, tmp_path):
    """`oci import` of the layout skopeo fetched from the registry, mounted, against umoci's
    unpack of the same layout (this holds the comparison itself to account)."""
    lay, _ = make_layout(tmp_path / "lay", zstd=False)
    ref = registry.push(lay.root, "t", "cfs/compare-import")
    fetched = _fetch_layout(ref, tmp_path / "fetched")
    import_ok(repo, fetched, "imp")
    _compare_with_umoci(repo, "imp", fetched, "t", tmp_path)


@needs_root
@needs("umoci")
def test_pulled_image_equals_umoci_unpack(registry, repo, tmp_path):
    lay, _ = make_layout(tmp_path / "lay", zstd=False)
    ref = registry.push(lay.root, "t", "cfs/compare")
    pull_ok(repo, ref, "pulled")
    _compare_with_umoci(repo, "pulled", _fetch_layout(ref, tmp_path / "fetched"), "t", tmp_path)


@pytest.fixture(scope="session")
def debian_ref(registry):
    """The debootstrap'd bookworm image (two layers, made once per machine) in the registry."""
    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root")
    if not ocireg.have("debootstrap", "umoci"):
        pytest.skip("debootstrap and umoci are needed (make setup installs them)")
    layout = ocireg.debian_layout()
    return registry.push(layout, "bookworm", "debian/minbase"), layout


@needs_root
def test_imported_debian_equals_umoci_unpack(debian_ref, repo, tmp_path):
    ref, layout = debian_ref
    assert import_ok(repo, layout, "debian")["layers"] == 2
    _compare_with_umoci(repo, "debian", layout, "bookworm", tmp_path)


@needs_root
def test_pulled_debian_equals_umoci_unpack(debian_ref, repo, tmp_path):
    ref, layout = debian_ref
    r = pull_ok(repo, ref, "debian", timeout=900)
    assert r["layers"] == 2
    _compare_with_umoci(repo, "debian", layout, "bookworm", tmp_path)


# ---- network faults between two namespaces -----------------------------------------------------


def layers_for_faults(n_big: int = 2, big: int = 3 << 20) -> list:
    """A small first layer, then big incompressible ones: slow enough to interrupt mid-layer."""
    return [([d("etc"), E("etc/small", os.urandom(50_000))], "gzip"),
            *[([E(f"big{i}", os.urandom(big))], "gzip") for i in range(n_big)]]


@pytest.fixture
def netpair():
    yield from ocireg.netpair_or(pytest.skip)


@pytest.fixture
def ns_registry(netpair, tmp_path):
    """A registry inside the server namespace, on 192.0.2.1:5000, and a pushed image of a small
    layer and two 3 MiB layers; images are pushed from the client namespace."""
    reg = Registry(tmp_path / "nsreg", host=NetPair.SERVER, port=5000, prefix=netpair.server_cmd).start()
    lay = Layout(tmp_path / "lay")
    img = build_image(lay, layers_for_faults())
    tag(lay, [img], "t")
    ref = reg.push(lay.root, "t", "cfs/faults", prefix=netpair.client_cmd)
    yield reg, ref, img, lay
    reg.stop()


def reference_digest(tmp_path, lay) -> str:
    ref_repo = tmp_path / "ref-repo"
    assert cfsctl("init", "--repo", ref_repo).returncode == 0
    return import_ok(ref_repo, lay.root)["digest"]


# netem settings of the bad networks (delay/jitter in microseconds, loss/reorder in percent); the
# QEMU guest, whose kernel has netem, runs them too (tests/guest/test_net_faults.py)
NETEM = {
    "delay-jitter": {"delay": 40_000, "jitter": 20_000},
    "loss-3pc": {"loss": 3},
    "reorder": {"delay": 10_000, "prob_reorder": 25, "gap": 5},
    "all-three": {"delay": 5_000, "loss": 1, "prob_reorder": 10, "gap": 3},
}


@needs_root
@pytest.mark.parametrize("shape", [NETEM["delay-jitter"], {"drop": 3}, NETEM["loss-3pc"], NETEM["reorder"],
                                   NETEM["all-three"]],
                         ids=["delay-jitter", "drop-3pc-iptables", "loss-3pc", "reorder", "all-three"])
def test_pull_through_a_bad_network(ns_registry, netpair, repo, tmp_path, shape):
    """Delay, loss and reordering (netem: skipped where the kernel lacks it, the QEMU guest runs
    them; the iptables drop runs everywhere): slower, and the same image."""
    reg, ref, img, lay = ns_registry
    if "drop" in shape:
        if not ocireg.have("iptables"):
            pytest.skip("iptables is not installed (make setup installs it)")
        netpair.drop(shape["drop"])
    else:
        netpair.shape(**shape)
    r = pull_ok(repo, ref, "shaped", prefix=netpair.client_cmd, timeout=300)
    assert r["digest"] == reference_digest(tmp_path, lay)


def _start_pull(repo, ref, netpair, name="cut"):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ocireg.MEM_LIMIT, ocireg.MEM_LIMIT))

    return subprocess.Popen([*netpair.client_cmd, sys.executable, "-m", "composefs.cli", "oci", "pull", ref,
                             "--name", name, "--repo", str(repo), "--tls-verify=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=limit, start_new_session=True)


_wait_sent = ocireg.wait_sent
_finish = ocireg.finish_pull


CUT_BOUND = 180  # seconds: retries with back-off, then a one-line error


@needs_root
def test_link_cut_mid_layer_fails_in_bounded_time(ns_registry, netpair, repo):
    reg, ref, img, lay = ns_registry
    netpair.rate(8_000_000)
    before = RepoState.of(repo)
    base = netpair.sent_bytes()
    proc = _start_pull(repo, ref, netpair)
    _wait_sent(netpair, base + (2 << 20), proc)
    netpair.cut()
    t0 = time.monotonic()
    r = _finish(proc, CUT_BOUND)
    assert_refused(r, repo, before, what="link cut")
    assert time.monotonic() - t0 < CUT_BOUND


@needs_root
def test_link_cut_then_back_succeeds(ns_registry, netpair, repo, tmp_path):
    reg, ref, img, lay = ns_registry
    netpair.rate(8_000_000)
    base = netpair.sent_bytes()
    proc = _start_pull(repo, ref, netpair)
    _wait_sent(netpair, base + (2 << 20), proc)
    netpair.cut()
    time.sleep(4)
    netpair.restore()
    r = _finish(proc, CUT_BOUND)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert refs(repo)["cut"] == reference_digest(tmp_path, lay)


def _wait_completed(reg: Registry, dgst: str, proc, timeout=120) -> None:
    """Until the registry logged the whole blob as served to the client."""
    deadline = time.monotonic() + timeout
    while True:
        done = [r for r in reg.requests() if r["method"] == "GET" and (r["uri"] or "").endswith(dgst)
                and r["status"] == 200 and not r["agent"].startswith("skopeo")]
        if done:
            return
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")[-2000:]
        assert time.monotonic() < deadline, "the first layer was never served"
        time.sleep(0.05)


@needs_root
def test_registry_killed_mid_pull_then_rerun(ns_registry, netpair, repo, tmp_path):
    """The registry dies after the first layer was served and while the big ones stream: exit 1,
    nothing named; after a restart the rerun completes without fetching the first layer again."""
    reg, ref, img, lay = ns_registry
    netpair.rate(8_000_000)
    before = RepoState.of(repo)
    proc = _start_pull(repo, ref, netpair, "killed")
    _wait_completed(reg, img.layers[0]["digest"], proc)
    time.sleep(1.0)  # the small layer is applied long before the big ones arrive
    assert proc.poll() is None, "finished before the registry could be killed: the layers are too small"
    reg.kill()
    assert_refused(_finish(proc, CUT_BOUND), repo, before, what="registry killed")
    reg.start()
    netpair.unshape()
    start = len(reg.requests())
    pull_ok(repo, ref, "killed", prefix=netpair.client_cmd)
    refetched = reg.blob_gets(start)
    assert img.layers[0]["digest"] not in refetched, refetched
    assert refs(repo)["killed"] == reference_digest(tmp_path, lay)


@needs_root
def test_kill9_then_rerun_resumes(ns_registry, netpair, repo, tmp_path):
    """SIGKILL of the client mid-pull: no ref, and the rerun completes without fetching the layer
    already applied, and leaves no temporaries."""
    reg, ref, img, lay = ns_registry
    netpair.rate(8_000_000)
    proc = _start_pull(repo, ref, netpair, "k9")
    _wait_completed(reg, img.layers[0]["digest"], proc)
    time.sleep(1.0)
    assert proc.poll() is None, "finished before it could be killed: the layers are too small"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert "k9" not in refs(repo)
    netpair.unshape()
    start = len(reg.requests())
    pull_ok(repo, ref, "k9", prefix=netpair.client_cmd)
    refetched = reg.blob_gets(start)
    assert img.layers[0]["digest"] not in refetched, refetched
    assert refs(repo)["k9"] == reference_digest(tmp_path, lay)
    assert RepoState.of(repo).tmp == []


@needs_root
def test_registry_restarted_mid_pull_is_retried(ns_registry, netpair, repo, tmp_path):
    """A registry that is back within seconds is a transient error: retries with back-off
    finish the pull."""
    reg, ref, img, lay = ns_registry
    netpair.rate(8_000_000)
    base = netpair.sent_bytes()
    proc = _start_pull(repo, ref, netpair, "retried")
    _wait_sent(netpair, base + (2 << 20), proc)
    reg.kill()
    time.sleep(2)
    reg.start()
    r = _finish(proc, CUT_BOUND)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert refs(repo)["retried"] == reference_digest(tmp_path, lay)


@needs_root
def test_layers_fetched_concurrently(ns_registry, netpair, repo):
    """The two big layers stream at the same time (their requests overlap in the registry's
    log), not one after the other."""
    reg, ref, img, lay = ns_registry
    netpair.rate(16_000_000)
    start = len(reg.requests())
    pull_ok(repo, ref, "conc", prefix=netpair.client_cmd)
    big = {x["digest"] for x in img.layers[1:]}
    spans = [(r["end"] - r["duration"], r["end"]) for r in reg.requests()[start:]
             if r["method"] == "GET" and (r["uri"] or "").rsplit("/", 1)[-1] in big]
    assert len(spans) == 2, spans
    (a0, a1), (b0, b1) = sorted(spans)
    assert b0 < a1, f"fetched one after the other: {spans}"


# ---- kill -9 of an archive import --------------------------------------------------------------


def test_import_killed_then_rerun(repo, tmp_path):
    """`oci import` killed with SIGKILL once it has stored objects: no ref, and a rerun completes
    with the same image and leaves no temporaries."""
    lay = Layout(tmp_path / "lay")
    tag(lay, [build_image(lay, [([E(f"f{i}-{j}", os.urandom(1 << 20)) for j in range(16)], "gzip")
                                for i in range(4)])], "t")
    ref_digest = reference_digest(tmp_path, lay)
    proc = subprocess.Popen([sys.executable, "-m", "composefs.cli", "oci", "import", str(lay.root), "--name", "k",
                             "--repo", str(repo)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not any((repo / "objects").glob("??/*")):
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the import finished before it could be killed"
    assert "k" not in refs(repo)
    assert import_ok(repo, lay.root, "k")["digest"] == ref_digest
    assert RepoState.of(repo).tmp == []
    assert cfsctl("fsck", "--repo", repo).returncode == 0
