# SPDX-License-Identifier: MIT OR Apache-2.0
"""An OCI distribution (registry HTTP API v2) client for ``cfsctl oci pull``.

It fetches what :mod:`composefs.oci` asks for and checks nothing itself: every manifest and
blob it returns is verified by the caller against its digest. What it does own:
- references: ``docker://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`` (Docker Hub names as docker does);
- transport: HTTPS with certificate checks, or with ``tls_verify=False`` HTTPS without them and
  then plain HTTP (as skopeo does for an insecure registry); one keep-alive connection per
  thread and host; redirects (to blob storage) followed, credentials never sent to another host;
  a socket timeout on every read;
- authentication: anonymous, basic, and bearer tokens (``WWW-Authenticate`` challenge), with
  credentials from the usual ``auth.json`` files;
- retries: transient failures (connection errors, timeouts, 429 and 5xx) are retried with
  exponential back-off by :func:`retrying`.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

from . import _native
from .errors import CfsError
from .oci import MANIFEST_TYPES, INDEX_TYPES, Descriptor, ImageError, Source, Transient

TIMEOUT = 30.0
RETRIES = 4
MAX_REDIRECTS = 5
MAX_SMALL = 4 << 20  # manifests, token replies, error bodies
DOCKER_HUB = "registry-1.docker.io"


@dataclass(frozen=True)
class Reference:
    host: str  # host[:port] as connected to
    repo: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> "Reference":
        raw = text.removeprefix("docker://")
        if raw.startswith("//") or not raw:
            raise CfsError(f"invalid image reference {text!r}")
        digest = None
        if "@" in raw:
            raw, digest = raw.split("@", 1)
            try:
                digest = _native.oci_check_digest(digest)
            except ValueError as e:
                raise CfsError(f"invalid image reference {text!r}: {e}") from None
        tag = None
        slash = raw.rfind("/")
        colon = raw.rfind(":")
        if colon > slash:
            raw, tag = raw[:colon], raw[colon + 1:]
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
                raise CfsError(f"invalid image reference {text!r}: bad tag {tag!r}")
        first, _, rest = raw.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            host, repo = first, rest
        else:
            host, repo = "docker.io", raw
        if host in ("docker.io", "index.docker.io"):
            host = DOCKER_HUB
            if "/" not in repo:
                repo = "library/" + repo
        if not re.fullmatch(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*", repo):
            raise CfsError(f"invalid image reference {text!r}: bad repository name {repo!r}")
        # The characters here; the port's range is web_url's rule, as for every URL.
        if not re.fullmatch(r"(?:[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?", host) \
                or web_url(f"https://{host}/") is None:
            raise CfsError(f"invalid image reference {text!r}: bad registry host {host!r}")
        if tag is None and digest is None:
            tag = "latest"
        return cls(host, repo, tag, digest)

    def __str__(self) -> str:
        s = f"docker://{self.host}/{self.repo}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def auth_files(authfile: str | None) -> list[str]:
    """Where credentials are looked for, in containers-auth.json(5) order."""
    if authfile:
        return [authfile]
    out = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        out.append(os.environ["REGISTRY_AUTH_FILE"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    home = os.path.expanduser("~")
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    out.append(os.path.join(config, "containers", "auth.json"))
    out.append(os.path.join(home, ".docker", "config.json"))
    return out


def credentials(ref: Reference, authfile: str | None) -> tuple[str, str] | None:
    keys = [f"{ref.host}/{ref.repo}", ref.host]
    if ref.host == DOCKER_HUB:
        keys += ["docker.io", "https://index.docker.io/v1/"]
    for path in auth_files(authfile):
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read(MAX_SMALL))
        except FileNotFoundError:
            if authfile:
                raise CfsError("No such file or directory", authfile) from None
            continue
        except (OSError, ValueError) as e:
            raise CfsError(f"cannot read credentials: {e}", path) from None
        auths = doc.get("auths") if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            continue
        for k in keys:
            entry = auths.get(k)
            if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
                try:
                    user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    raise CfsError(f"bad 'auth' entry for {k}", path) from None
                return user, pw
    return None


class Connections:
    """One keep-alive connection per thread and (scheme, host); HTTPS checks certificates
    unless ``tls_verify`` is false."""

    def __init__(self, timeout: float = TIMEOUT, tls_verify: bool = True):
        self.timeout, self.tls_verify = timeout, tls_verify
        self.local = threading.local()
        self.ctx: ssl.SSLContext | None = None
        self.ctx_lock = threading.Lock()

    def context(self) -> ssl.SSLContext:
        """One TLS context for every connection: loading the system's CA certificates takes
        tens of milliseconds, and without verification they are not loaded at all."""
        with self.ctx_lock:
            if self.ctx is None:
                if self.tls_verify:
                    self.ctx = ssl.create_default_context()
                else:
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    self.ctx = ctx
            return self.ctx

    def get(self, scheme: str, host: str) -> http.client.HTTPConnection:
        conns = getattr(self.local, "conns", None)
        if conns is None:
            conns = self.local.conns = {}
        c = conns.get((scheme, host))
        if c is None:
            if scheme == "https":
                c = http.client.HTTPSConnection(host, timeout=self.timeout, context=self.context())
            else:
                c = http.client.HTTPConnection(host, timeout=self.timeout)
            conns[(scheme, host)] = c
        return c

    def drop(self, scheme: str, host: str) -> None:
        c = getattr(self.local, "conns", {}).pop((scheme, host), None)
        if c is not None:
            c.close()


class Registry(Source):
    top_name = "manifest"

    def __init__(self, ref: Reference, tls_verify: bool = True, authfile: str | None = None,
                 timeout: float = TIMEOUT):
        self.ref = ref
        self.label = str(ref)
        self.timeout = timeout
        self.tls_verify = tls_verify
        self.creds = credentials(ref, authfile)
        self.scheme = "https"
        self.auth_header: str | None = None
        self.auth_lock = threading.Lock()
        self.conns = Connections(timeout, tls_verify)
        self._ping()

    # --- transport -------------------------------------------------------------------------------

    def _conn(self, scheme: str, host: str) -> http.client.HTTPConnection:
        return self.conns.get(scheme, host)

    def _drop(self, scheme: str, host: str) -> None:
        self.conns.drop(scheme, host)

    def request(self, path: str, accept: tuple[str, ...] = (), what: str = "request") -> http.client.HTTPResponse:
        """GET ``path`` on the registry (redirects followed, auth challenges answered); a 2xx
        response is returned unread, anything else raises."""
        url = f"{self.scheme}://{self.ref.host}{path}"
        authed_once = False
        for _ in range(MAX_REDIRECTS + 1):
            u = urllib.parse.urlsplit(url)
            same_host = u.netloc == self.ref.host
            headers = {"User-Agent": "cfsctl", "Accept": ", ".join(accept) if accept else "*/*"}
            if same_host and self.auth_header:
                headers["Authorization"] = self.auth_header
            target = u.path + (f"?{u.query}" if u.query else "")
            c = self._conn(u.scheme, u.netloc)
            try:
                c.request("GET", target, headers=headers)
                resp = c.getresponse()
            except (OSError, http.client.HTTPException) as e:
                self._drop(u.scheme, u.netloc)
                raise Transient(f"{what}: {_oserr(e)}") from None
            if resp.status in (301, 302, 303, 307, 308):
                loc = resp.getheader("Location")
                resp.read(MAX_SMALL)
                url = redirected(url, loc, what)
                continue
            if resp.status == 401 and same_host and not authed_once:
                challenge = resp.getheader("WWW-Authenticate") or ""
                resp.read(MAX_SMALL)
                self._authenticate(challenge, what)
                authed_once = True
                continue
            if 200 <= resp.status < 300:
                return resp
            body = resp.read(MAX_SMALL)
            if resp.status == 429 or resp.status >= 500:
                raise Transient(f"{what}: HTTP {resp.status}")
            raise CfsError(f"{what}: {_describe(resp.status, body)}")
        raise CfsError(f"{what}: more than {MAX_REDIRECTS} redirects")

    def _ping(self) -> None:
        """Find the scheme (and answer an auth challenge early) with ``GET /v2/``."""
        schemes = ["https"] if self.tls_verify else ["https", "http"]
        last: Exception | None = None
        for scheme in schemes:
            self.scheme = scheme
            try:
                resp = retrying(lambda: self._raw_ping(), "registry", attempts=2)
            except (Transient, CfsError) as e:
                last = e
                continue
            return resp
        assert last is not None
        raise CfsError(f"{self.ref.host}: {last}")

    def _raw_ping(self):
        c = self._conn(self.scheme, self.ref.host)
        try:
            c.request("GET", "/v2/", headers={"User-Agent": "cfsctl"})
            resp = c.getresponse()
            resp.read(MAX_SMALL)
        except ssl.SSLError as e:
            self._drop(self.scheme, self.ref.host)
            raise CfsError(f"TLS handshake failed ({e.reason or e}); a plain-HTTP registry needs --tls-verify=false") from None
        except (OSError, http.client.HTTPException) as e:
            self._drop(self.scheme, self.ref.host)
            raise Transient(_oserr(e)) from None
        if resp.status == 401:
            self._authenticate(resp.getheader("WWW-Authenticate") or "", "registry")
        elif resp.status >= 500:
            raise Transient(f"HTTP {resp.status}")
        return resp

    def _authenticate(self, challenge: str, what: str) -> None:
        scheme, _, params = challenge.partition(" ")
        p = dict(re.findall(r'(\w+)="([^"]*)"', params))
        with self.auth_lock:
            if scheme.lower() == "basic":
                if not self.creds:
                    raise CfsError(f"{what}: the registry asks for credentials (none found in auth.json)")
                token = base64.b64encode(f"{self.creds[0]}:{self.creds[1]}".encode()).decode()
                self.auth_header = f"Basic {token}"
                return
            if scheme.lower() != "bearer" or "realm" not in p:
                raise CfsError(f"{what}: unsupported authentication challenge {challenge[:80]!r}")
            q = {"service": p.get("service", "")}
            q["scope"] = p.get("scope") or f"repository:{self.ref.repo}:pull"
            url = p["realm"] + ("&" if "?" in p["realm"] else "?") + urllib.parse.urlencode(q)
            u = web_url(url)
            if u is None:
                raise CfsError(f"{what}: bad token realm {p['realm'][:100]!r}")
            headers = {"User-Agent": "cfsctl"}
            if self.creds:
                token = base64.b64encode(f"{self.creds[0]}:{self.creds[1]}".encode()).decode()
                headers["Authorization"] = f"Basic {token}"
            c = self._conn(u.scheme, u.netloc)
            try:
                c.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=headers)
                resp = c.getresponse()
                body = resp.read(MAX_SMALL)
            except (OSError, http.client.HTTPException) as e:
                self._drop(u.scheme, u.netloc)
                raise Transient(f"{what}: token: {_oserr(e)}") from None
            if resp.status != 200:
                raise CfsError(f"{what}: token: {_describe(resp.status, body)}")
            try:
                doc = json.loads(body)
                tok = doc.get("token") or doc.get("access_token")
            except (ValueError, AttributeError):
                tok = None
            if not isinstance(tok, str) or not tok:
                raise CfsError(f"{what}: token: the reply holds no token")
            self.auth_header = f"Bearer {tok}"

    # --- Source ----------------------------------------------------------------------------------

    def top(self) -> tuple[bytes, Descriptor | None]:
        ref = self.ref.digest or self.ref.tag

        def get():
            resp = self.request(f"/v2/{self.ref.repo}/manifests/{ref}", INDEX_TYPES + MANIFEST_TYPES, "manifest")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > MAX_SMALL:
                resp.close()
                raise ImageError(f"manifest: {length} bytes is over the limit of {MAX_SMALL}")
            data = _read_all(resp, MAX_SMALL, "manifest")
            return (data, (resp.getheader("Content-Type") or "").split(";")[0].strip(),
                    resp.getheader("Docker-Content-Digest"))

        data, media_type, said = retrying(get, "manifest")
        if self.ref.digest:
            return data, Descriptor(media_type, self.ref.digest, len(data))
        if said and said.startswith("sha256:"):
            # By tag, the registry's word for the digest is all there is to check against.
            try:
                return data, Descriptor(media_type, _native.oci_check_digest(said.strip()), len(data))
            except ValueError:
                raise ImageError(f"manifest: the registry sent an invalid digest header {said[:80]!r}") from None
        return data, None

    def read_blob(self, desc: Descriptor, limit: int, what: str) -> bytes:
        from .oci import check_bytes

        if desc.size > limit:
            raise ImageError(f"{what} {desc.digest}: {desc.size} bytes is over the limit of {limit}")

        # A manifest named by an index is fetched from manifests/, everything else from blobs/.
        kind, accept = ("manifests", INDEX_TYPES + MANIFEST_TYPES) if what == "manifest" else ("blobs", ())

        def get():
            resp = self.request(f"/v2/{self.ref.repo}/{kind}/{desc.digest}", accept, f"{what} {desc.digest}")
            return _read_all(resp, desc.size, f"{what} {desc.digest}")

        data = retrying(get, what)
        check_bytes(data, desc, what)
        return data

    def open_blob(self, desc: Descriptor):
        resp = self.request(f"/v2/{self.ref.repo}/blobs/{desc.digest}", (), f"blob {desc.digest}")
        return Body(resp, f"blob {desc.digest}")


class Body:
    """A response body as a stream whose network errors, and an end before the length the
    server announced, are :class:`Transient`. A body left unread (or an error) closes the
    response, and ``drop`` (when given) forgets the connection it came on: it cannot be reused."""

    def __init__(self, resp: http.client.HTTPResponse, what: str, drop: Callable[[], None] | None = None):
        self.resp, self.what, self.drop = resp, what, drop

    def read(self, n: int) -> bytes:
        try:
            return read_body(self.resp, n, self.what)
        except Transient:
            if self.drop is not None:
                self.drop()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None or not self.resp.isclosed():
            self.resp.close()
            if self.drop is not None:
                self.drop()
        return False


def read_body(resp: http.client.HTTPResponse, n: int, what: str) -> bytes:
    """``resp.read(n)``; a connection that ends early is Transient, not a short body."""
    try:
        data = resp.read(n)
    except (OSError, http.client.HTTPException) as e:
        resp.close()
        raise Transient(f"{what}: {_oserr(e)}") from None
    if not data and n and resp.length:
        resp.close()
        raise Transient(f"{what}: connection closed {resp.length} bytes before the end of the data")
    return data


def _read_all(resp: http.client.HTTPResponse, limit: int, what: str) -> bytes:
    try:
        data = resp.read(limit + 1)
        if resp.length:
            resp.close()
            raise Transient(f"{what}: connection closed {resp.length} bytes before the end of the data")
        if len(data) > limit:
            resp.close()
            raise ImageError(f"{what}: more than {limit} bytes")
        return data
    except (OSError, http.client.HTTPException) as e:
        resp.close()
        raise Transient(f"{what}: {_oserr(e)}") from None


def _oserr(e: Exception) -> str:
    if isinstance(e, socket.timeout) or isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, http.client.IncompleteRead):
        return "connection closed before the end of the data"
    return str(e) or type(e).__name__


def _describe(status: int, body: bytes) -> str:
    try:
        errs = json.loads(body).get("errors")
        msg = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs if isinstance(e, dict))
    except (ValueError, AttributeError, TypeError):
        msg = ""
    text = {401: "unauthorized", 403: "forbidden", 404: "not found"}.get(status, f"HTTP {status}")
    return f"{text} ({msg[:200]})" if msg else text


def web_url(url: str) -> urllib.parse.SplitResult | None:
    """``url`` split, if it is one this client may connect to: http or https, a host, no user
    part, a port (if any) of 1-65535 — the checks on every URL a server hands over (a redirect's
    target, a token realm). A bad port would otherwise reach getaddrinfo, which wraps it."""
    u = urllib.parse.urlsplit(url)
    try:
        port = u.port
    except ValueError:  # not a number, or out of range
        return None
    if u.scheme not in ("http", "https") or not u.hostname or "@" in u.netloc or port == 0:
        return None
    return u


def redirected(url: str, location: str | None, what: str) -> str:
    """Where a redirect from ``url`` to ``location`` leads (a CfsError if nowhere this client
    goes)."""
    if not location:
        raise CfsError(f"{what}: redirect without a location")
    target = urllib.parse.urljoin(url, location)
    if web_url(target) is None:
        raise CfsError(f"{what}: redirect to {location[:100]!r}, not an http(s) URL with a valid host")
    return target


def retrying(fn: Callable[[], object], what: str, attempts: int = RETRIES, delay: float = 0.5):
    """Call ``fn``; on :class:`Transient`, wait (0.5 s, 1 s, 2 s, ...) and call it again."""
    for i in range(attempts):
        try:
            return fn()
        except Transient as e:
            if i == attempts - 1:
                raise CfsError(f"{e} (after {attempts} attempts)") from None
            time.sleep(delay * (2 ** i))
    raise AssertionError("unreachable")


def pull(repo, ref_text: str, name: str, platform: str | None = None, tls_verify: bool = True,
         authfile: str | None = None, progress: bool = False) -> dict:
    from .oci import Platform, import_resolved, resolve

    ref = Reference.parse(ref_text)
    plat = Platform.parse(platform) if platform else Platform.running()
    try:
        reg = Registry(ref, tls_verify=tls_verify, authfile=authfile)
        res = resolve(reg, plat)
        return import_resolved(repo, reg, res, name, str(ref), retry=retrying, progress=progress)
    except ImageError as e:
        raise CfsError(str(e), ref_text) from None
    except CfsError as e:
        if e.path is None:
            raise CfsError(e.message, ref_text) from None
        raise
