# SPDX-License-Identifier: MIT OR Apache-2.0
"""fs-verity digests: conformance rows, agreement with fsverity-utils, the parallel paths, errors
of the Python API and of `cfsctl digest`."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfsrun import CONFORMANCE
from composefs import _native, fsverity

FSVERITY = shutil.which("fsverity")
needs_fsverity = pytest.mark.skipif(FSVERITY is None, reason="fsverity-utils (Debian package fsverity) not installed")
BLOCK_SIZES = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
SEQUENTIAL = 2**63  # a parallel threshold no input reaches


def conformance_rows():
    lines = (CONFORMANCE / "fsverity.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header == ["size", "fsverity_sha256_4096", "fsverity_sha512_4096"]
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


ROWS = conformance_rows()


@pytest.fixture(scope="module")
def stream():
    """The conformance content stream: sha256(b"cfs" + le64(i)) concatenated, long enough for every row."""
    n = max(int(r["size"]) for r in ROWS)
    count = (n + 31) // 32
    data = b"".join(hashlib.sha256(b"cfs" + i.to_bytes(8, "little")).digest() for i in range(count))
    return data[:n]


def fsverity_utils_digest(path, algorithm="sha256", block_size=4096, salt=b""):
    args = [FSVERITY, "digest", "--compact", f"--hash-alg={algorithm}", f"--block-size={block_size}"]
    if salt:
        args.append(f"--salt={salt.hex()}")
    out = subprocess.run([*args, "--", os.fspath(path)], check=True, capture_output=True, text=True).stdout
    return bytes.fromhex(out.strip())


# What the environment of a child process (the CLI) needs to pick each implementation.
BACKEND_ENV = {
    "avx512": {},
    "sha-ni": {"CFS_NO_AVX512": "1"},
    "portable": {"CFS_NO_SHA_NI": "1"},
}


@pytest.fixture(params=list(BACKEND_ENV))
def sha256_backend(request, monkeypatch):
    """Run the test once with each SHA-256 implementation: in this process through the native
    switch, in child processes (the CLI) through CFS_NO_AVX512 / CFS_NO_SHA_NI."""
    before = _native.fsverity_sha256_backend()
    if _native.fsverity_sha256_backend(request.param) != request.param:
        _native.fsverity_sha256_backend(before)
        pytest.skip(f"this CPU cannot run the {request.param} SHA-256 code")
    for name in ("CFS_NO_AVX512", "CFS_NO_SHA_NI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in BACKEND_ENV[request.param].items():
        monkeypatch.setenv(name, value)
    yield request.param
    _native.fsverity_sha256_backend(before)


def test_sha256_backend_switch():
    code = "from composefs import _native; print(_native.fsverity_sha256_backend())"
    env = {k: v for k, v in os.environ.items() if k not in ("CFS_NO_SHA_NI", "CFS_NO_AVX512")}

    def backend_with(value, name="CFS_NO_SHA_NI"):
        e = env if value is None else {**env, name: value}
        return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True).stdout.strip()

    auto = backend_with(None)
    cpu_flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    sha_ni = "sha-ni" if "sha_ni" in cpu_flags else "portable"
    assert auto == ("avx512" if {"avx512f", "avx512bw"} <= set(cpu_flags) else sha_ni)
    assert [backend_with(v) for v in ["1", "yes", "0", ""]] == ["portable", "portable", auto, auto]
    assert [backend_with(v, "CFS_NO_AVX512") for v in ["1", "0"]] == [sha_ni, auto]
    before = _native.fsverity_sha256_backend()
    try:
        assert _native.fsverity_sha256_backend("portable") == "portable"
        assert _native.fsverity_sha256_backend() == "portable"
        assert _native.fsverity_sha256_backend("sha-ni") in ("sha-ni", "portable")
        assert _native.fsverity_sha256_backend("avx512") in ("avx512", "portable")
        with pytest.raises(ValueError, match='unknown SHA-256 backend "avx"'):
            _native.fsverity_sha256_backend("avx")
    finally:
        _native.fsverity_sha256_backend(before)


# --- conformance ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("sha256_backend")
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["size"])
@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_conformance_bytes(stream, row, algorithm):
    want = bytes.fromhex(row[f"fsverity_{algorithm}_4096"])
    data = stream[: int(row["size"])]
    assert fsverity.digest_bytes(data, algorithm=algorithm) == want
    seq = _native.fsverity_digest_bytes(data, algorithm, 4096, b"", parallel_threshold=SEQUENTIAL)
    assert seq == want


@pytest.mark.usefixtures("sha256_backend")
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["size"])
@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_conformance_file(stream, tmp_path, row, algorithm):
    want = bytes.fromhex(row[f"fsverity_{algorithm}_4096"])
    path = tmp_path / "f"
    path.write_bytes(stream[: int(row["size"])])
    assert fsverity.digest_file(path, algorithm=algorithm) == want
    assert fsverity.digest_file(os.fsencode(path), algorithm=algorithm) == want
    assert _native.fsverity_digest_file(str(path), algorithm, 4096, b"", parallel_threshold=SEQUENTIAL) == want
    assert _native.fsverity_digest_file(str(path), algorithm, 4096, b"", parallel_threshold=1, chunk_size=65536) == want
    assert fsverity.digest_files([path], algorithm=algorithm) == [want]


# --- agreement with fsverity-utils ---------------------------------------------------------------

params = st.fixed_dictionaries(
    {
        "algorithm": st.sampled_from(["sha256", "sha512"]),
        "block_size": st.sampled_from(BLOCK_SIZES),
        "salt": st.one_of(st.just(b""), st.binary(min_size=1, max_size=32)),
    }
)


@st.composite
def contents(draw):
    """Random bytes whose sizes favour block and hash-block edges."""
    size = draw(
        st.one_of(
            st.integers(0, 300_000),
            st.builds(lambda k, d: max(0, k * 1024 + d), st.integers(0, 300), st.integers(-2, 2)),
        )
    )
    kind = draw(st.sampled_from(["random", "zeros", "pattern"]))
    if kind == "zeros":
        return bytes(size)
    if kind == "pattern":
        return (bytes(range(256)) * (size // 256 + 1))[:size]
    return random.Random(draw(st.integers(0, 2**32))).randbytes(size)


@pytest.mark.usefixtures("sha256_backend")
@needs_fsverity
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=contents(), p=params)
def test_matches_fsverity_utils(tmp_path, data, p):
    path = tmp_path / "f"
    path.write_bytes(data)
    want = fsverity_utils_digest(path, **p)
    assert fsverity.digest_file(path, **p) == want
    assert fsverity.digest_bytes(data, **p) == want
    # The parallel code path on the same input, with ranges of a few blocks.
    chunk = p["block_size"] * 3
    assert _native.fsverity_digest_file(str(path), p["algorithm"], p["block_size"], p["salt"], 1, chunk) == want
    assert _native.fsverity_digest_bytes(data, p["algorithm"], p["block_size"], p["salt"], 1, chunk) == want


# --- parallel paths ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_file(tmp_path_factory):
    """A file larger than the default parallel threshold, not a multiple of any block size."""
    threshold, chunk = _native.FSVERITY_PARALLEL_THRESHOLD, _native.FSVERITY_CHUNK_SIZE
    size = threshold + 2 * chunk + 12345
    data = random.Random(7).randbytes(size)
    path = tmp_path_factory.mktemp("large") / "large"
    path.write_bytes(data)
    return path, data


def test_defaults_split_large_files():
    threshold, chunk = _native.FSVERITY_PARALLEL_THRESHOLD, _native.FSVERITY_CHUNK_SIZE
    assert 0 < chunk <= threshold <= 64 << 20


@pytest.mark.usefixtures("sha256_backend")
@pytest.mark.parametrize(
    "algorithm,block_size,salt",
    [("sha256", 4096, b""), ("sha512", 4096, b""), ("sha256", 1024, b"\x01" * 32), ("sha512", 65536, b"abc")],
)
def test_parallel_large_file_equals_sequential(large_file, algorithm, block_size, salt):
    path, data = large_file
    threshold = _native.FSVERITY_PARALLEL_THRESHOLD
    assert len(data) > threshold
    seq = _native.fsverity_digest_file(str(path), algorithm, block_size, salt, parallel_threshold=SEQUENTIAL)
    p = dict(algorithm=algorithm, block_size=block_size, salt=salt)
    assert fsverity.digest_file(path, **p) == seq  # default chunking: parallel
    assert fsverity.digest_bytes(data, **p) == seq
    assert fsverity.digest_files([path, path], threads=2, **p) == [seq, seq]
    for chunk in [block_size, 100_000, 1 << 20, len(data) - 1, len(data) * 2]:
        assert _native.fsverity_digest_file(str(path), algorithm, block_size, salt, 1, chunk) == seq, chunk
    if FSVERITY:
        assert fsverity_utils_digest(path, **p) == seq


@needs_fsverity
@pytest.mark.usefixtures("sha256_backend")
@pytest.mark.parametrize(
    "p",
    [{}, {"block_size": 1024, "salt": b"\x01" * 32}, {"algorithm": "sha512", "block_size": 65536, "salt": b"s"}],
    ids=["default", "salted-1k", "sha512-64k"],
)
def test_digest_files_many(tmp_path, p):
    """digest_files batches small files and pairs their blocks across files: sizes around block,
    SHA-256 padding and batch-buffer (512 KiB) edges, then a log-uniform mix like the benchmark's."""
    rng = random.Random(1)
    sizes = [0, 1, 55, 56, 63, 64, 4095, 4096, 4097, 5000, 70_000, 524_287, 524_288, 524_289, 1_100_000, 0, 3]
    sizes += [int(2 ** rng.uniform(0, 20)) for _ in range(150)]
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i:03d}"
        path.write_bytes(rng.randbytes(size))
        paths.append(path)
    args = [FSVERITY, "digest", "--compact", f"--hash-alg={p.get('algorithm', 'sha256')}"]
    args += [f"--block-size={p.get('block_size', 4096)}", f"--salt={p.get('salt', b'').hex()}"]
    out = subprocess.run([*args, *map(str, paths)], check=True, capture_output=True, text=True).stdout
    want = [bytes.fromhex(line) for line in out.split()]
    assert len(want) == len(paths)
    for threads in [None, 1, 2, 5]:
        assert fsverity.digest_files(paths, threads=threads, **p) == want
    alg, bs, salt = p.get("algorithm", "sha256"), p.get("block_size", 4096), p.get("salt", b"")
    strs = [str(x) for x in paths]
    assert _native.fsverity_digest_files(strs, alg, bs, salt, 2, 100_000, 65536) == want  # large ones split
    assert fsverity.digest_files([]) == []


# --- API errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"algorithm": "md5"}, "unknown hash algorithm 'md5'"),
        ({"algorithm": "SHA256"}, "unknown hash algorithm"),
        ({"block_size": 512}, "block size 512 is not a power of two between 1024 and 65536"),
        ({"block_size": 3000}, "block size 3000 is not a power of two"),
        ({"block_size": 131072}, "block size 131072 is not a power of two"),
        ({"block_size": 0}, "block size 0 is not"),
        ({"block_size": 4096.0}, "block size 4096.0 is not"),
        ({"salt": b"x" * 33}, "salt is 33 bytes; at most 32 are allowed"),
        ({"salt": "00"}, "salt must be bytes"),
    ],
)
def test_bad_parameters(tmp_path, kwargs, message):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    for call in (
        lambda: fsverity.digest_file(path, **kwargs),
        lambda: fsverity.digest_bytes(b"x", **kwargs),
        lambda: fsverity.digest_files([path], **kwargs),
    ):
        with pytest.raises(ValueError, match=message):
            call()


def test_native_rejects_bad_parameters_too():
    with pytest.raises(ValueError, match="block size 3000"):
        _native.fsverity_digest_bytes(b"", "sha256", 3000, b"")
    with pytest.raises(ValueError, match="salt is 40 bytes"):
        _native.fsverity_digest_bytes(b"", "sha256", 4096, b"s" * 40)
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        _native.fsverity_digest_bytes(b"", "crc32", 4096, b"")


@pytest.mark.parametrize("threads", [0, -1, True, 1.5])
def test_bad_thread_count(threads):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        fsverity.digest_files([], threads=threads)


@pytest.fixture
def odd_paths(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    (tmp_path / "good").write_bytes(b"good")
    return {
        "missing": (tmp_path / "missing", FileNotFoundError, errno.ENOENT),
        "dir": (tmp_path / "dir", IsADirectoryError, errno.EISDIR),
        "fifo": (fifo, OSError, errno.EINVAL),
        "devnull": (Path("/dev/null"), OSError, errno.EINVAL),
        "under_file": (tmp_path / "good" / "x", NotADirectoryError, errno.ENOTDIR),
    }


@pytest.mark.parametrize("which", ["missing", "dir", "fifo", "devnull", "under_file"])
def test_unreadable_paths_raise_oserror(odd_paths, which):
    path, exc, code = odd_paths[which]
    with pytest.raises(exc) as info:
        fsverity.digest_file(path)
    assert info.value.errno == code
    assert info.value.filename == str(path)


def test_digest_files_reports_errors_in_place(odd_paths, tmp_path):
    good = tmp_path / "good"
    names = ["missing", "dir", "fifo", "under_file"]
    results = fsverity.digest_files([good, *(odd_paths[n][0] for n in names), good])
    assert results[0] == results[-1] == fsverity.digest_bytes(b"good")
    for name, result in zip(names, results[1:-1]):
        path, exc, code = odd_paths[name]
        assert isinstance(result, exc) and result.errno == code and result.filename == str(path)


@pytest.fixture
def unreadable(tmp_path_factory):
    """(path, command prefix): a file the prefixed command cannot read. As root, the command runs
    as `nobody` through setpriv, in a directory nobody may enter."""
    if os.geteuid() != 0:
        path = tmp_path_factory.mktemp("perm") / "secret"
        path.write_bytes(b"secret")
        path.chmod(0)
        return path, []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root privileges")
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="cfs-perm-", dir="/tmp"))
    top.chmod(0o755)
    path = top / "secret"
    path.write_bytes(b"secret")
    path.chmod(0o600)
    yield path, [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    shutil.rmtree(top)


def test_unreadable_file(unreadable):
    path, prefix = unreadable
    code = (
        "import sys\nfrom composefs import fsverity\n"
        "try:\n    fsverity.digest_file(sys.argv[1])\n"
        "except PermissionError as e:\n    print(e.errno, e.filename)\n"
    )
    r = subprocess.run([*prefix, sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{errno.EACCES} {path}\n", "")


# --- CLI -----------------------------------------------------------------------------------------


def cfsctl(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "composefs.cli", *map(os.fspath, args)], capture_output=True, text=True, cwd=cwd
    )


@pytest.fixture
def sample(tmp_path):
    rng = random.Random(3)
    files = {"empty": b"", "one": b"1", "page": rng.randbytes(4096), "odd": rng.randbytes(70_001)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path, list(files)


@pytest.mark.usefixtures("sha256_backend")
@needs_fsverity
@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--hash-alg", "sha512"],
        ["--block-size", "1024", "--salt", "00ff"],
        ["--hash-alg", "sha512", "--block-size", "65536", "--salt", "ab" * 32],
        ["--compact"],
        ["--compact", "--hash-alg", "sha512", "--salt", "01"],
    ],
)
def test_cli_output_equals_fsverity_utils(sample, options):
    cwd, names = sample
    r = cfsctl("digest", *options, *names, cwd=cwd)
    assert (r.returncode, r.stderr) == (0, "")
    want = subprocess.run([FSVERITY, "digest", *options, *names], cwd=cwd, capture_output=True, text=True, check=True)
    assert r.stdout == want.stdout
    assert len(r.stdout.splitlines()) == len(names)


def test_cli_errors_keep_going(sample, odd_paths):
    cwd, names = sample
    fifo, missing, directory = odd_paths["fifo"][0], odd_paths["missing"][0], odd_paths["dir"][0]
    r = cfsctl("digest", missing, names[1], directory, fifo, names[2], cwd=cwd)
    assert r.returncode == 1
    assert r.stderr == (
        f"cfsctl: error: {missing}: No such file or directory\n"
        f"cfsctl: error: {directory}: Is a directory\n"
        f"cfsctl: error: {fifo}: Not a regular file\n"
    )
    want = [f"sha256:{fsverity.digest_file(cwd / n).hex()} {n}" for n in names[1:3]]
    assert r.stdout.splitlines() == want


def test_cli_unreadable_file(unreadable):
    path, prefix = unreadable
    ok = path.parent / "ok"
    ok.write_bytes(b"ok")
    ok.chmod(0o644)
    r = subprocess.run(
        [*prefix, sys.executable, "-m", "composefs.cli", "digest", str(path), str(ok)],
        capture_output=True, text=True, cwd="/",
    )
    assert r.returncode == 1
    assert r.stderr == f"cfsctl: error: {path}: Permission denied\n"
    assert r.stdout == f"sha256:{fsverity.digest_bytes(b'ok').hex()} {ok}\n"


def test_cli_json(sample, odd_paths):
    cwd, names = sample
    missing = str(odd_paths["missing"][0])
    r = cfsctl("digest", "--json", "--hash-alg", "sha512", "--salt", "0a0b", names[3], missing, cwd=cwd)
    assert r.returncode == 1
    # Under --json the error line is JSON too (docs/json.md), with the same text.
    assert r.stderr == json.dumps({"error": f"{missing}: No such file or directory"}) + "\n"
    out = json.loads(r.stdout)
    assert out == [
        {
            "path": names[3],
            "algorithm": "sha512",
            "block_size": 4096,
            "salt": "0a0b",
            "digest": fsverity.digest_file(cwd / names[3], algorithm="sha512", salt=b"\x0a\x0b").hex(),
        },
        {
            "path": missing,
            "algorithm": "sha512",
            "block_size": 4096,
            "salt": "0a0b",
            "digest": None,
            "error": "No such file or directory",
        },
    ]
    ok = cfsctl("digest", "--json", *names, "--threads", "1", cwd=cwd)
    assert ok.returncode == 0 and [o["path"] for o in json.loads(ok.stdout)] == names


@pytest.mark.parametrize(
    "options,message",
    [
        (["--block-size", "3000"], "Invalid value for '--block-size': block size 3000 is not a power of two between 1024 and 65536"),
        (["--block-size", "512"], "Invalid value for '--block-size': block size 512 is not a power of two"),
        (["--block-size", "131072"], "Invalid value for '--block-size': block size 131072"),
        (["--block-size", "4k"], "Invalid value for '--block-size': '4k' is not a valid integer"),
        (["--salt", "xyz"], "Invalid value for '--salt': 'xyz' is not a hex string"),
        (["--salt", "abc"], "Invalid value for '--salt': 'abc' is not a hex string"),
        (["--salt", "00" * 33], "Invalid value for '--salt': salt is 33 bytes; at most 32 are allowed"),
        (["--hash-alg", "md5"], "Invalid value for '--hash-alg': 'md5' is not one of 'sha256', 'sha512'"),
        (["--threads", "0"], "Invalid value for '-j' / '--threads'"),
        (["--compact", "--json"], "--compact and --json cannot be used together"),
    ],
)
def test_cli_bad_options(sample, options, message):
    cwd, names = sample
    r = cfsctl("digest", *options, names[0], cwd=cwd)
    assert r.returncode == 2
    assert r.stdout == ""
    if "--json" in options:  # a usage error under --json is one JSON line
        assert message in json.loads(r.stderr)["error"]
        return
    assert "Usage: cfsctl digest [OPTIONS] FILE..." in r.stderr
    assert message in r.stderr


def test_cli_needs_a_file():
    r = cfsctl("digest")
    assert r.returncode == 2
    assert "Missing argument 'FILE...'" in r.stderr


def test_cli_help_explains():
    r = cfsctl("digest", "--help")
    assert r.returncode == 0
    for word in ["--hash-alg", "--block-size", "--salt", "--compact", "--json", "fsverity digest"]:
        assert word in r.stdout
