# SPDX-License-Identifier: MIT OR Apache-2.0
"""Test infrastructure for container images: OCI layouts written by hand, a real registry, network
namespaces, and a Debian root made by debootstrap.

What this module owns and the protocols it follows:
- ``Layout`` writes OCI image layouts blob by blob (any bytes under any digest string, so the
  hostile tests can lie), ``build_image`` a well-formed image on top of it (tar/gzip/zstd layers,
  a config whose diff_ids match), ``tar_layout`` and ``docker_save`` the two archive forms.
- ``Registry`` runs Debian's ``docker-registry`` (distribution v2) with a temporary YAML config:
  filesystem storage in a temporary directory, listening on 127.0.0.1 (or inside a network
  namespace this module made), JSON logs in a file, one "response completed" line per request;
  ``requests()`` parses them, so a test can count what a client fetched. Images go in with
  ``skopeo copy`` (also Debian's), over plain HTTP.
- ``NetPair`` makes two network namespaces joined by a veth pair, addressed from the documentation
  range 192.0.2.0/24: the registry lives in one, the client runs in the other, so no packet of a
  test ever enters the host's own network stack. Traffic shaping goes through pyroute2's tc on the
  registry's veth: netem (delay, loss, reorder) where the kernel has it, tbf (rate) everywhere;
  ``drop()`` loses packets at random with iptables' statistic match (no netem needed);
  ``cut()``/``restore()`` set the link down and up.
- ``debian_rootfs()`` runs ``debootstrap --variant=minbase bookworm`` once per machine into
  ``/var/cache/cfs-test`` (``CFS_TEST_CACHE``), from the mirror in the machine's apt sources, and
  ``debian_layout()`` turns it into a two-layer image with umoci, cached beside it.
Servers started here listen on no other address, and every process started here is stopped by
the object that started it.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("CFS_TEST_CACHE", "/var/cache/cfs-test"))

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_MT = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, mounts, chown)")


def have(*programs: str) -> bool:
    return all(shutil.which(p) for p in programs)


def needs(*programs: str):
    """Skip unless the programs are installed (the Makefile's APT_PACKAGES brings them)."""
    missing = [p for p in programs if not shutil.which(p)]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)} (make setup installs it)")


# ---- bytes of images ---------------------------------------------------------------------------


def digest(data: bytes, algo: str = "sha256") -> str:
    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    assert how == "none", how
    return data


@dataclass
class E:
    """One tar entry of a hand-made layer."""

    name: str
    data: bytes | None = None
    type: bytes = tarfile.REGTYPE
    mode: int = 0o644
    linkname: str = ""
    uid: int = 0
    gid: int = 0
    mtime: int = 1700000000
    xattrs: dict[str, str] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)


def d(name: str, mode: int = 0o755, **kw) -> E:
    return E(name, type=tarfile.DIRTYPE, mode=mode, **kw)


def sym(name: str, target: str, **kw) -> E:
    return E(name, type=tarfile.SYMTYPE, mode=0o777, linkname=target, **kw)


def hard(name: str, target: str, **kw) -> E:
    return E(name, type=tarfile.LNKTYPE, linkname=target, **kw)


def layer_tar(entries: list[E]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type, ti.mode, ti.mtime, ti.uid, ti.gid, ti.linkname = e.type, e.mode, e.mtime, e.uid, e.gid, e.linkname
            ti.devmajor, ti.devminor = e.dev
            if e.xattrs:
                ti.pax_headers = {"SCHILY.xattr." + k: v for k, v in e.xattrs.items()}
            if e.data is not None:
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


class Layout:
    """An OCI image layout directory written blob by blob. ``put`` stores any bytes under their
    digest (or under a digest string given by the caller, which is how hostile layouts lie)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob_path(self, dgst: str) -> Path:
        algo, hexd = dgst.split(":", 1)
        return self.root / "blobs" / algo / hexd

    def put(self, data: bytes, media_type: str, algo: str = "sha256", as_digest: str | None = None) -> dict:
        dg = as_digest or digest(data, algo)
        p = self.blob_path(dg) if as_digest is None else self.root / "blobs" / dg.replace(":", "/", 1)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return {"mediaType": media_type, "digest": dg, "size": len(data)}

    def put_json(self, obj, media_type: str, algo: str = "sha256") -> dict:
        return self.put(json.dumps(obj).encode(), media_type, algo)

    def index(self, manifests: list[dict]) -> None:
        self.write_index({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})

    def write_index(self, obj) -> None:
        (self.root / "index.json").write_bytes(obj if isinstance(obj, bytes) else json.dumps(obj).encode())


@dataclass
class Image:
    """A well-formed single-platform image: its descriptors, as written into a Layout."""

    manifest: dict  # the manifest's descriptor
    config: dict
    layers: list[dict]
    diff_ids: list[str]
    manifest_obj: dict
    config_obj: dict


def build_image(
    lay: Layout,
    layers: list[tuple[list[E] | bytes, str]],
    *,
    arch: str = "amd64",
    os_: str = "linux",
    variant: str | None = None,
    algo: str = "sha256",
    config_extra: dict | None = None,
) -> Image:
    """Write layers (entries or raw tar bytes, each with its compression), a config with the right
    diff_ids and a manifest into ``lay``; the index is left to the caller (``tag``)."""
    raws = [raw if isinstance(raw, bytes) else layer_tar(raw) for raw, _ in layers]
    descs = [lay.put(compress(raw, how), LAYER_MT[how], algo) for raw, (_, how) in zip(raws, layers)]
    diff_ids = [digest(raw, algo) for raw in raws]
    config_obj = {
        "architecture": arch,
        "os": os_,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {"Cmd": ["/bin/sh"]},
        **(config_extra or {}),
    }
    if variant:
        config_obj["variant"] = variant
    config = lay.put_json(config_obj, OCI_CONFIG, algo)
    manifest_obj = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": descs}
    manifest = lay.put_json(manifest_obj, OCI_MANIFEST, algo)
    return Image(manifest, config, descs, diff_ids, manifest_obj, config_obj)


def platform_of(img: Image) -> dict:
    p = {"architecture": img.config_obj["architecture"], "os": img.config_obj["os"]}
    if "variant" in img.config_obj:
        p["variant"] = img.config_obj["variant"]
    return p


def tag(lay: Layout, images: list[Image], name: str = "latest", multi: bool = False) -> None:
    """Name the image (or, with ``multi``, an image index of all of them) ``name`` in index.json,
    beside the names already there."""
    ann = {"org.opencontainers.image.ref.name": name}
    if not multi:
        (img,) = images
        entry = {**img.manifest, "annotations": ann}
    else:
        idx = lay.put_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                            "manifests": [{**i.manifest, "platform": platform_of(i)} for i in images]}, OCI_INDEX)
        entry = {**idx, "annotations": ann}
    try:
        old = json.loads((lay.root / "index.json").read_bytes())["manifests"]
    except (OSError, ValueError, KeyError):
        old = []
    lay.index([m for m in old if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != name] + [entry])


def tar_layout(src: Path, dest: Path) -> Path:
    """The layout directory as a tar (what `oci import` takes as an OCI archive)."""
    with tarfile.open(dest, "w") as tf:
        for p in sorted(Path(src).rglob("*")):
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)
    return dest


def tar_members(dest: Path, members: list[tuple[str, bytes | None, dict]]) -> Path:
    """A tar from (name, data, TarInfo attributes) triples; data None for non-regular entries."""
    with tarfile.open(dest, "w") as tf:
        for name, data, attrs in members:
            ti = tarfile.TarInfo(name)
            for k, v in attrs.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return dest


def docker_save(dest: Path, layers: list[tuple[list[E] | bytes, str]], config: dict | None = None,
                manifest: list | None = None, extra: list | None = None) -> Path:
    """A `docker save` archive: manifest.json, a config named by its digest, layer tars."""
    raws = [raw if isinstance(raw, bytes) else layer_tar(raw) for raw, _ in layers]
    names, members = [], []
    for raw, (_, how) in zip(raws, layers):
        n = digest(raw).split(":")[1] + "/layer.tar"
        members.append((n, compress(raw, how), {}))
        names.append(n)
    cfg = json.dumps(config if config is not None else {
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest(r) for r in raws]}}).encode()
    cfg_name = digest(cfg).split(":")[1] + ".json"
    members.append((cfg_name, cfg, {}))
    man = manifest if manifest is not None else [{"Config": cfg_name, "RepoTags": ["x:latest"], "Layers": names}]
    members.append(("manifest.json", json.dumps(man).encode(), {}))
    return tar_members(dest, members + (extra or []))


# ---- the registry ------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float, prefix: list[str] | None = None, proc=None) -> None:
    """Until something accepts on host:port (from inside a namespace when ``prefix`` enters one).
    In a namespace one shell loop probes (bash's /dev/tcp): a process per probe costs seconds
    under QEMU's TCG."""
    deadline = time.monotonic() + timeout

    def check_server():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port}")

    if prefix:
        loop = f"until (exec 3<>/dev/tcp/{host}/{port}) 2>/dev/null; do sleep 0.05; done"
        probe = subprocess.Popen([*prefix, "bash", "-c", loop], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while probe.poll() is None:
                check_server()
                time.sleep(0.05)
        finally:
            if probe.poll() is None:
                probe.kill()
            probe.wait()
        return
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            check_server()
        time.sleep(0.05)


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd line (docker-registry accepts only bcrypt), from apache2-utils."""
    r = subprocess.run(["htpasswd", "-nbB", user, password], capture_output=True, text=True, check=True)
    return r.stdout.strip() + "\n"


def _rfc3339(t: str) -> float:
    """Seconds since the epoch from the registry's timestamps (nanosecond fractions, 'Z')."""
    import datetime

    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", t)
    if not m:
        return 0.0
    base = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + float("0." + (m.group(2) or "0"))


def _go_duration(s: str) -> float:
    """Seconds from a Go duration string such as 1m2.5s, 3.2ms or 850µs."""
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return sum(float(v) * unit[u] for v, u in re.findall(r"([\d.]+)(h|ms|us|µs|ns|m|s)", s))


class Registry:
    """Debian's docker-registry on ``host:port`` with its storage and log under ``root``.

    ``prefix`` runs it through a command that enters a network namespace (NetPair.server_cmd)."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int | None = None,
                 htpasswd: str | None = None, prefix: list[str] | None = None, token: "TokenServer | None" = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.host, self.prefix = host, prefix or []
        self.port = port or (free_port() if host == "127.0.0.1" else 5000)
        self.log = self.root / "registry.log"
        self.proc: subprocess.Popen | None = None
        auth = ""
        if htpasswd is not None:
            (self.root / "htpasswd").write_text(htpasswd)
            auth = f"auth:\n  htpasswd:\n    realm: cfs-test\n    path: {self.root / 'htpasswd'}\n"
        if token is not None:
            auth = (f"auth:\n  token:\n    realm: {token.realm}\n    service: {TokenServer.SERVICE}\n"
                    f"    issuer: {TokenServer.ISSUER}\n    rootcertbundle: {token.cert}\n")
        (self.root / "config.yml").write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'storage'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}:{self.port}\n  secret: cfs-test-secret\n" + auth)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 120) -> "Registry":
        assert self.proc is None
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([*self.prefix, "docker-registry", "serve", str(self.root / "config.yml")],
                                     stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        # generous: a registry that exits is seen at once, while under QEMU's TCG on a busy machine
        # a healthy one can take long to start listening
        wait_port(self.host, self.port, timeout, self.prefix, self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would: open connections are reset."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.kill()

    def requests(self) -> list[dict]:
        """Completed requests in order: method, uri, status, bytes written, remote address."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("msg") == "response completed" or "http.request.uri" in j and "http.response.status" in j:
                out.append({"method": j.get("http.request.method"), "uri": j.get("http.request.uri"),
                            "status": j.get("http.response.status"), "written": j.get("http.response.written", 0),
                            "agent": j.get("http.request.useragent", ""), "end": _rfc3339(j.get("time", "")),
                            "duration": _go_duration(j.get("http.response.duration", "0s"))})
        return out

    def blob_gets(self, since: int = 0, agent_not: str = "skopeo") -> list[str]:
        """Digests of blobs fetched (GET, any status) since request number ``since``, by clients
        other than skopeo (which pushes and inspects)."""
        out = []
        for r in self.requests()[since:]:
            m = re.match(r"/v2/.+/blobs/([a-z0-9]+:[0-9a-f]+)$", r["uri"] or "")
            if m and r["method"] == "GET" and not r["agent"].startswith(agent_not):
                out.append(m.group(1))
        return out

    def push(self, layout: Path, src_tag: str, repo: str, dest_tag: str | None = None, *,
             creds: str | None = None, all_platforms: bool = True, prefix: list[str] | None = None) -> str:
        """skopeo copy oci:LAYOUT:TAG docker://ADDR/REPO:TAG over plain HTTP; returns the
        reference as `cfsctl oci pull` takes it."""
        ref = f"docker://{self.addr}/{repo}:{dest_tag or src_tag}"
        cmd = [*(prefix or []), "skopeo", "copy", "-q", "--dest-tls-verify=false", "--preserve-digests"]
        if all_platforms:
            cmd.append("--all")
        if creds:
            cmd += ["--dest-creds", creds]
        r = subprocess.run([*cmd, f"oci:{layout}:{src_tag}", ref], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return ref

    def manifest_digest(self, repo: str, tag_: str, creds: str | None = None, prefix: list[str] | None = None) -> str:
        """The digest the registry serves for repo:tag (what `@sha256:` references name)."""
        cmd = [*(prefix or []), "skopeo", "inspect", "--raw", "--tls-verify=false"]
        if creds:
            cmd += ["--creds", creds]
        raw = subprocess.run([*cmd, f"docker://{self.addr}/{repo}:{tag_}"], capture_output=True, check=True,
                             timeout=60).stdout
        return digest(raw)


class TokenServer:
    """The token service of the registry's bearer-token authentication (distribution's
    `auth: token`), on 127.0.0.1: ``GET /token?service=..&scope=..`` with the user's Basic
    credentials gets a JWT (RS256, signed with ``openssl`` by a key whose self-signed
    certificate is the registry's ``rootcertbundle``) granting the scope's actions. Without
    credentials, or wrong ones, the answer is 401. ``reply`` replaces the answer (a hostile
    token service); ``seen`` records (scope, user, agent) of every request."""

    SERVICE = "cfs-test-registry"
    ISSUER = "cfs-test-issuer"

    def __init__(self, root: Path, user: str, password: str):
        import http.server
        import threading

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.key, self.cert = self.root / "token.key", self.root / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=cfs-test-token", "-keyout", self.key, "-out", self.cert],
                       check=True, capture_output=True, timeout=60)
        der = subprocess.run(["openssl", "x509", "-in", self.cert, "-outform", "DER"], check=True,
                             capture_output=True, timeout=60).stdout
        spki_der = subprocess.run(["openssl", "pkey", "-in", self.key, "-pubout", "-outform", "DER"], check=True,
                                  capture_output=True, timeout=60).stdout
        self.x5c = base64.b64encode(der).decode()
        # libtrust's key id: the SHA-256 of the public key, 240 bits in base32, in groups of 4
        kid = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode().rstrip("=")
        self.kid = ":".join(kid[i:i + 4] for i in range(0, len(kid), 4))
        self.creds = f"{user}:{password}"
        self.reply: tuple[int, bytes] | None = None
        self.seen: list[tuple[str, str | None, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                from urllib.parse import parse_qs, urlsplit

                q = parse_qs(urlsplit(self.path).query)
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    with contextlib.suppress(ValueError):
                        user = base64.b64decode(auth[6:]).decode()
                scope = (q.get("scope") or [""])[0]
                server.seen.append((scope, user and user.split(":")[0], self.headers.get("User-Agent", "")))
                if server.reply is not None:
                    status, body = server.reply
                elif user != server.creds or q.get("service") != [TokenServer.SERVICE]:
                    status, body = 401, b'{"errors": [{"code": "UNAUTHORIZED"}]}'
                else:
                    status, body = 200, json.dumps({"token": server.token(user.split(":")[0], scope)}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def token(self, user: str, scope: str) -> str:
        """A JWT for ``scope`` (``repository:NAME:ACTIONS``, or none)."""
        def b64(b: bytes) -> str:
            return base64.urlsafe_b64encode(b).decode().rstrip("=")

        access = []
        parts = scope.split(":")
        if len(parts) == 3 and parts[0] == "repository":
            access.append({"type": "repository", "name": parts[1], "actions": parts[2].split(",")})
        now = int(time.time())
        claims = {"iss": TokenServer.ISSUER, "sub": user, "aud": TokenServer.SERVICE, "exp": now + 600,
                  "nbf": now - 60, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid, "x5c": [self.x5c]}
        signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key], input=signing.encode(),
                             check=True, capture_output=True, timeout=60).stdout
        return f"{signing}.{b64(sig)}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def running_registry(root: Path, **kw):
    reg = Registry(root, **kw).start()
    try:
        yield reg
    finally:
        reg.stop()


# ---- network namespaces ------------------------------------------------------------------------


class NetPair:
    """Two network namespaces joined by a veth pair: the server side 192.0.2.1, the client side
    192.0.2.2 (a documentation range; neither address exists outside these namespaces)."""

    SERVER, CLIENT = "192.0.2.1", "192.0.2.2"

    def __init__(self):
        from pyroute2 import IPRoute, NetNS, netns

        tag_ = f"{os.getpid() % 100000}-{time.monotonic_ns() % 10000}"
        self.srv, self.cli = f"cfst-s-{tag_}", f"cfst-c-{tag_}"
        self.sif, self.cif = f"cfss{tag_}"[:15], f"cfsc{tag_}"[:15]
        self._netns, self._NetNS = netns, NetNS
        netns.create(self.srv)
        netns.create(self.cli)
        try:
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.sif, kind="veth", peer=self.cif)
                for ifn, ns in ((self.sif, self.srv), (self.cif, self.cli)):
                    ipr.link("set", index=ipr.link_lookup(ifname=ifn)[0], net_ns_fd=ns)
            for ns, ifn, a in ((self.srv, self.sif, self.SERVER), (self.cli, self.cif, self.CLIENT)):
                with NetNS(ns) as n:
                    i = n.link_lookup(ifname=ifn)[0]
                    n.addr("add", index=i, address=a, prefixlen=24)
                    n.link("set", index=i, state="up")
                    n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")
        except BaseException:
            self.close()
            raise

    def prefix(self, ns: str) -> list[str]:
        # nsenter joins only the network namespace (no mount-namespace games): the repository,
        # mounts and files stay as the test sees them, and the command is exec'd (its pid is ours).
        return ["nsenter", f"--net=/var/run/netns/{ns}", "--"]

    @property
    def server_cmd(self) -> list[str]:
        return self.prefix(self.srv)

    @property
    def client_cmd(self) -> list[str]:
        return self.prefix(self.cli)

    def _srv_link(self, fn):
        with self._NetNS(self.srv) as n:
            return fn(n, n.link_lookup(ifname=self.sif)[0])

    def shape(self, **netem) -> None:
        """netem on the server's veth (what the registry sends): delay/jitter in microseconds,
        loss/prob_reorder in percent, gap. Skips the calling test on a kernel without sch_netem."""
        from pyroute2.netlink.exceptions import NetlinkError

        def f(n, i):
            with contextlib.suppress(NetlinkError):
                n.tc("del", index=i, root=True)
            try:
                n.tc("add", "netem", index=i, handle="1:", **netem)
            except NetlinkError as e:
                if e.code in (errno.ENOENT, errno.EOPNOTSUPP):
                    pytest.skip("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM)")
                raise
        self._srv_link(f)

    def rate(self, bits_per_second: int) -> None:
        """A token bucket on the server's veth: the registry sends at most this fast."""
        from pyroute2.netlink.exceptions import NetlinkError

        def f(n, i):
            with contextlib.suppress(NetlinkError):
                n.tc("del", index=i, root=True)
            n.tc("add", "tbf", index=i, handle="1:", rate=f"{bits_per_second}bit", burst=16 * 1024, latency=2_000_000)
        self._srv_link(f)

    def link(self, delay: str | None, mbit: float | None) -> None:
        """A link for benchmarks: netem DELAY on both ends (``"25ms"``: 50 ms RTT) and, on the
        server's end, a token bucket of MBIT under that netem; (None, None) removes both. With
        tc(8), which the benchmarks' hosts and guests have, because the bucket sits under netem's
        class and that nesting is what tc's syntax states plainly."""
        for side, ns, ifn in (("server", self.srv, self.sif), ("client", self.cli, self.cif)):
            tc = [*self.prefix(ns), "tc", "qdisc"]
            subprocess.run([*tc, "del", "dev", ifn, "root"], capture_output=True)
            parent = ["root"]
            if delay is not None:
                # the queue must hold a whole RTT of packets at the rate, with room to spare
                subprocess.run([*tc, "add", "dev", ifn, "root", "handle", "1:", "netem", "delay", delay,
                                "limit", "100000"], check=True, capture_output=True)
                parent = ["parent", "1:1"]
            if side == "server" and mbit is not None:
                # burst at least rate / HZ (HZ=250 in Debian's kernels) so the bucket never starves the link
                burst = max(64 * 1024, int(mbit * 1e6 / 8 / 100))
                subprocess.run([*tc, "add", "dev", ifn, *parent, "handle", "10:", "tbf", "rate", f"{mbit}mbit",
                                "burst", str(burst), "latency", "200ms"], check=True, capture_output=True)

    def drop(self, percent: float) -> None:
        """Random loss of what the server sends, from netfilter's statistic match: it needs no
        netem, so lossy-network tests run on kernels built without it."""
        subprocess.run([*self.server_cmd, "iptables", "-w", "-A", "OUTPUT", "-o", self.sif, "-m", "statistic",
                        "--mode", "random", "--probability", str(percent / 100), "-j", "DROP"], check=True,
                       capture_output=True)

    def unshape(self) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        def f(n, i):
            with contextlib.suppress(NetlinkError):
                n.tc("del", index=i, root=True)
        self._srv_link(f)

    def qdisc(self) -> dict:
        """The root qdisc on the server's veth: its kind and what it counted (packets, drops), so
        a test can tell the shaping really happened."""
        def f(n, i):
            for q in n.get_qdiscs(index=i):
                if q.get("parent") == 0xFFFFFFFF:
                    st = q.get_attr("TCA_STATS") or {}
                    return {"kind": q.get_attr("TCA_KIND"), "packets": st.get("packets", 0), "drops": st.get("drop", 0)}
            return {"kind": None, "packets": 0, "drops": 0}
        return self._srv_link(f)

    def sent_bytes(self) -> int:
        """Bytes the server side has sent over the veth."""
        return self._srv_link(lambda n, i: n.link("get", index=i)[0].get_attr("IFLA_STATS64")["tx_bytes"])

    def cut(self) -> None:
        self._srv_link(lambda n, i: n.link("set", index=i, state="down"))

    def restore(self) -> None:
        self._srv_link(lambda n, i: n.link("set", index=i, state="up"))

    def close(self) -> None:
        for ns in (self.srv, self.cli):
            with contextlib.suppress(Exception):
                self._netns.remove(ns)  # the veth pair goes with its namespaces


def netns_usable() -> str | None:
    """Why network-namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        return "pyroute2 is not installed (make setup installs it)"
    if not have("nsenter"):
        return "nsenter (util-linux) is not installed"
    return None



def netpair_or(give_up):
    """A NetPair for the life of the fixture that yields from this; ``give_up(why)`` (pytest.skip
    on the host, pytest.fail in the guest) when namespaces cannot be made here."""
    why = netns_usable()
    if why:
        give_up(why)
    pair = NetPair()
    try:
        yield pair
    finally:
        pair.close()

# ---- a Debian root from debootstrap -----------------------------------------------------------


def debian_mirror() -> str | None:
    """The Debian archive this machine's apt uses for bookworm main (deb822 or one-line sources)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                if "bookworm" in fields.get("Suites", "").split() and "main" in fields.get("Components", "").split():
                    return fields.get("URIs", "").split()[0]
        else:
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s+.*\bmain\b", line)
                if m:
                    return m.group(1)
    return None


@contextlib.contextmanager
def _cache_lock(name: str):
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def debian_rootfs() -> Path:
    """A debootstrap'd minimal bookworm, made once per machine (a few minutes) and kept in the
    cache; it appears by rename only when complete, so a killed run leaves nothing half-made."""
    dest = CACHE / "debootstrap-bookworm-minbase"
    if dest.is_dir():
        return dest
    mirror = debian_mirror()
    if mirror is None:
        pytest.skip("no Debian bookworm mirror in /etc/apt/sources*")
    with _cache_lock("debootstrap"):
        if dest.is_dir():
            return dest
        tmp = CACHE / f".tmp-debootstrap-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        r = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(tmp), mirror],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError("debootstrap failed: " + r.stdout[-2000:] + r.stderr[-2000:])
        # nothing in the root that a rerun of the tests would change (apt caches are already clean)
        os.rename(tmp, dest)
    return dest


def debian_layout() -> Path:
    """An OCI layout (tag ``bookworm``) of the debootstrap'd root in two layers made by umoci:
    everything but /usr/share, then /usr/share. Each layer comes from `umoci repack` of an
    unpacked bundle (umoci 0.4.7's `insert` was seen writing a truncated tar for a directory)."""
    dest = CACHE / "oci-debian-bookworm-2"
    if dest.is_dir():
        return dest
    root = debian_rootfs()
    with _cache_lock("oci-debian"):
        if dest.is_dir():
            return dest
        tmp = CACHE / f".tmp-oci-debian-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        lay = tmp / "layout"

        def umoci(*a):
            r = subprocess.run(["umoci", *map(str, a)], capture_output=True, text=True, timeout=1200)
            if r.returncode != 0:
                raise RuntimeError(f"umoci {a}: {r.stderr}")

        def copy_into(src: Path, dst: Path):
            subprocess.run(["cp", "-a", f"{src}/.", str(dst)], check=True)

        umoci("init", "--layout", lay)
        umoci("new", "--image", f"{lay}:bookworm")
        umoci("unpack", "--image", f"{lay}:bookworm", tmp / "b1")
        copy_into(root, tmp / "b1" / "rootfs")
        shutil.rmtree(tmp / "b1" / "rootfs" / "usr" / "share")
        umoci("repack", "--image", f"{lay}:bookworm", tmp / "b1")
        umoci("unpack", "--image", f"{lay}:bookworm", tmp / "b2")  # repack diffs against this unpack
        (tmp / "b2" / "rootfs" / "usr" / "share").mkdir()
        copy_into(root / "usr" / "share", tmp / "b2" / "rootfs" / "usr" / "share")
        umoci("repack", "--image", f"{lay}:bookworm", tmp / "b2")
        umoci("gc", "--layout", lay)
        os.rename(lay, dest)
        shutil.rmtree(tmp)
    return dest


def unescape_dump(b: bytes) -> bytes:
    """A field of a composefs dump (`cfsctl info dump`) with its escapes (\\xHH, \\n, ...) undone."""
    return re.sub(rb"\\x([0-9a-fA-F]{2})|\\(.)", lambda m: bytes([int(m.group(1), 16)]) if m.group(1) else
                  {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"\\": b"\\"}[m.group(2)], b)


# ---- the CLI, bounded -------------------------------------------------------------------------

MEM_LIMIT = 1 << 30


def cfsctl_bounded(*args, timeout: float = 60, mem: int = MEM_LIMIT, prefix: list[str] | None = None,
                   env: dict | None = None) -> subprocess.CompletedProcess:
    """cfsctl with an address-space limit and a timeout; a timeout is reported as returncode
    None (the process group is killed), so callers can assert on it."""
    import resource
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    p = subprocess.Popen([*(prefix or []), sys.executable, "-m", "composefs.cli", *map(os.fspath, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         preexec_fn=limit, start_new_session=True, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return subprocess.CompletedProcess(p.args, None, out, err)


@dataclass
class RepoState:
    """What an import may not leave behind when it fails: refs, image files, temporaries."""

    refs: list[str]
    images: list[str]
    tmp: list[str]

    @classmethod
    def of(cls, repo: Path) -> "RepoState":
        def ls(p):
            return sorted(os.listdir(p)) if p.is_dir() else []
        return cls(ls(repo / "refs"), ls(repo / "images"), ls(repo / "tmp"))


def assert_refused(r: subprocess.CompletedProcess, repo: Path, before: RepoState, phrase: str | None = None,
                   what: str = "") -> str:
    """exit 1, exactly one line on stderr starting `cfsctl: error: ` (under --json the same text as
    `{"error": TEXT}`), no traceback, and the repository as it was (objects may remain)."""
    err = r.stderr.decode(errors="replace")
    if err.startswith("{") and err.count("\n") == 1:
        err = "cfsctl: error: " + json.loads(err)["error"] + "\n"
    assert r.returncode is not None, f"{what}: still running at the timeout; stderr: {err[-500:]}"
    assert r.returncode == 1, f"{what}: exit {r.returncode}; stderr: {err[-1500:]}"
    assert "Traceback" not in err, f"{what}: {err[-1500:]}"
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("cfsctl: error: "), f"{what}: {err[-1500:]}"
    if phrase:
        assert phrase in lines[0], f"{what}: {lines[0]!r} lacks {phrase!r}"
    after = RepoState.of(repo)
    assert after == before, f"{what}: repository changed: {before} -> {after}"
    return lines[0]


# ---- a pull started in a namespace, watched and ended --------------------------------------------


def wait_sent(netpair: "NetPair", nbytes: int, proc, timeout=120) -> None:
    """Wait until ``nbytes`` crossed the link (the pull ``proc`` is under way), failing if it ends."""
    deadline = time.monotonic() + timeout
    while netpair.sent_bytes() < nbytes:
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")[-2000:]
        assert time.monotonic() < deadline, "the pull did not get going"
        time.sleep(0.05)


def finish_pull(proc, timeout) -> subprocess.CompletedProcess:
    """The pull's outcome within ``timeout`` s; killed (its whole session) and returncode None after."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, None, out, err)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
