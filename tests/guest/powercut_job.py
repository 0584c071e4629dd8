# SPDX-License-Identifier: MIT OR Apache-2.0
"""Guest side of the power-cut test (driven by qemu/powercut.py through qemu/run.py --job).

One boot = check, then work until the power is cut:
1. Check what the previous boot (cut at a random moment) left on the ext4 disk with -O verity:
   `cfsctl fsck` passes; every ref resolves to an image whose fs-verity digest (measured by the
   kernel) is its name and whose objects are all present with fs-verity digests equal to their
   names; no object in the repository or in the `build --digest-store` store has a wrong name or
   lacks fs-verity; a built image that exists names only objects present in its store; the next
   `cfsctl import` succeeds. One line `CFS-PC-CHECK ...` reports it, one `CFS-PC-PROBLEM ...` per
   problem.
2. Print `CFS-PC-ARMED` (qemu/run.py cuts the power a random time after it) and run the boot's
   workload until killed, announcing each step (`CFS-PC-STEP <what>`) just before it starts:
   - `repo`: imports of changing trees (new, shared and repeated files) under a few names, so
     each import replaces an image; every third step a ref removal and `cfsctl gc`;
   - `build`: `cfsctl build --digest-store` of changing trees into one image path; every fifth
     step the image and then the store are removed (what an image names must never be missing).
With --final the job checks and exits (the last boot of a run, not cut).

Commands run in-process through the cfsctl CLI (`cli.main`): under TCG a Python start costs
seconds, and in-process the same code runs. The kernel's console is the only channel: lines go to
stdout, which is the serial console.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import os
import random
import shutil
import struct
import sys
import time
from contextlib import redirect_stderr, redirect_stdout

from composefs import _native
from composefs.cli import cli
from composefs.fsverity import digest_file

FS_IOC_MEASURE_VERITY = 0xC0046686
# Files every tree shares (deduplicated objects that gc must keep while any image uses them).
SHARED = [(f"shared/{i}", random.Random(i).randbytes(size)) for i, size in enumerate((1, 70, 4096, 65537, 300000))]


def say(*words: object) -> None:
    print(" ".join(str(w) for w in words), flush=True)


def cfsctl(*args: str) -> tuple[int, str]:
    """Run one cfsctl command in-process: (exit status, stdout + stderr)."""
    out = io.StringIO()
    code: int | str | None = 0
    with redirect_stdout(out), redirect_stderr(out):
        try:
            cli.main(args=list(args), prog_name="cfsctl", standalone_mode=False)
        except SystemExit as e:
            code = e.code
    if isinstance(code, str):
        out.write(code)
        code = 1
    return code or 0, out.getvalue()


def measure(path: str) -> str | None:
    """The kernel's fs-verity digest of ``path``, or None when the file has no fs-verity."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        buf = bytearray(struct.pack("=HH", 0, 64)) + bytearray(64)
        try:
            fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buf)
        except OSError:
            return None
        _alg, size = struct.unpack_from("=HH", buf)
        return bytes(buf[4:4 + size]).hex()
    finally:
        os.close(fd)


def kernel_lines() -> list[str]:
    """The ext4 messages about the test disk so far (journal recovery, errors), from /dev/kmsg: the
    console may run at a quiet loglevel to boot faster, and these are informational."""
    out = []
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        return [f"(cannot read /dev/kmsg: {e})"]
    try:
        while True:
            try:
                rec = os.read(fd, 8192).decode("utf-8", "replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten; the next read goes on
                continue
            msg = rec.split(";", 1)[-1].split("\n", 1)[0]
            if "EXT4-fs (vda)" in msg or "EXT4-fs error" in msg:
                out.append(msg)
    finally:
        os.close(fd)
    return out


def make_tree(root: str, step: int, rng: random.Random) -> None:
    """A tree of shared files, files repeated from two steps before, and new ones."""
    shutil.rmtree(root, ignore_errors=True)
    files = list(SHARED)
    files += [(f"again/{i}", random.Random(f"{step - step % 2}/{i}").randbytes(8192 * (i + 1))) for i in range(4)]
    files += [(f"new/{i}", rng.randbytes(rng.choice((0, 33, 4096, 50000, 200000)))) for i in range(rng.randint(4, 12))]
    for rel, data in files:
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    os.symlink("shared/0", os.path.join(root, "link"))


class Checker:
    def __init__(self, state: str):
        self.repo = os.path.join(state, "repo")
        self.store = os.path.join(state, "store")
        self.image = os.path.join(state, "built.cfs")
        self.problems: list[str] = []
        self.counts = {"refs": 0, "images": 0, "objects": 0, "store_objects": 0, "built_image": 0}

    def problem(self, what: str) -> None:
        self.problems.append(what)
        say("CFS-PC-PROBLEM", what.replace("\n", " | ")[:600])

    def check_objects(self, store: str, key: str) -> set[str]:
        """Every object: named by its content's digest, with fs-verity giving the same digest."""
        names = set()
        if not os.path.isdir(store):
            return names
        for sub in sorted(os.listdir(store)):
            d = os.path.join(store, sub)
            if len(sub) != 2 or not os.path.isdir(d):
                continue
            for n in sorted(os.listdir(d)):
                if n.startswith("."):
                    continue
                p = os.path.join(d, n)
                want = sub + n
                names.add(f"{sub}/{n}")
                got = digest_file(p).hex()
                if got != want:
                    self.problem(f"wrong name: {p} holds content with digest {got} (size {os.path.getsize(p)})")
                m = measure(p)
                if m is None:
                    self.problem(f"no fs-verity: {p}")
                elif m != want:
                    self.problem(f"fs-verity digest of {p} is {m}")
        self.counts[key] = len(names)
        return names

    def check_repo(self) -> None:
        if not os.path.exists(os.path.join(self.repo, "meta.json")):
            return
        code, out = cfsctl("fsck", "--repo", self.repo)
        if code != 0:
            self.problem(f"cfsctl fsck exited {code}: {out.strip()}")
        have = self.check_objects(os.path.join(self.repo, "objects"), "objects")
        refs_dir = os.path.join(self.repo, "refs")
        refs = [n for n in sorted(os.listdir(refs_dir)) if ".tmp" not in n]
        self.counts["refs"] = len(refs)
        self.counts["images"] = sum(1 for n in os.listdir(os.path.join(self.repo, "images")) if len(n) == 64)
        for name in refs:
            digest = open(os.path.join(refs_dir, name)).read().strip()
            img = os.path.join(self.repo, "images", digest)
            if not os.path.isfile(img):
                self.problem(f"ref {name} names {digest}, which is missing")
                continue
            m = measure(img)
            if m != digest:
                self.problem(f"ref {name}: image {digest} has fs-verity digest {m}")
            try:
                objs = [o.decode() for o in _native.image_objects(img)]
            except Exception as e:  # noqa: BLE001 - any failure to read is the finding
                self.problem(f"ref {name}: image {digest} unreadable: {e}")
                continue
            missing = [o for o in objs if o not in have]
            if missing:
                self.problem(f"ref {name}: image {digest} misses {len(missing)} of {len(objs)} objects, "
                             f"e.g. {missing[0]}")

    def check_build(self) -> None:
        have = self.check_objects(self.store, "store_objects")
        if not os.path.exists(self.image):
            return
        self.counts["built_image"] = 1
        try:
            objs = [o.decode() for o in _native.image_objects(self.image)]
        except Exception as e:  # noqa: BLE001
            self.problem(f"built image {self.image} unreadable: {e}")
            return
        missing = [o for o in objs if o not in have]
        if missing:
            self.problem(f"built image misses {len(missing)} of {len(objs)} objects in its digest store")

    def next_import(self, rng: random.Random) -> None:
        if not os.path.exists(os.path.join(self.repo, "meta.json")):
            return
        make_tree("/tmp/pc-check", rng.randrange(1 << 30), rng)
        code, out = cfsctl("import", "/tmp/pc-check", "--name", "after-boot", "--repo", self.repo)
        if code != 0:
            self.problem(f"the import after the reboot failed ({code}): {out.strip()}")
        code, out = cfsctl("fsck", "--repo", self.repo)
        if code != 0:
            self.problem(f"cfsctl fsck after the first import exited {code}: {out.strip()}")


def workload(mode: str, state: str, rng: random.Random) -> None:
    repo = os.path.join(state, "repo")
    store = os.path.join(state, "store")
    image = os.path.join(state, "built.cfs")
    step = 0
    while True:
        step += 1
        src = f"/tmp/pc-src-{step % 2}"
        say("CFS-PC-STEP prepare", step)
        make_tree(src, step, rng)
        if mode == "repo":
            name = f"img-{rng.randrange(4)}"
            say("CFS-PC-STEP import", step)
            code, out = cfsctl("import", src, "--name", name, "--repo", repo)
            if code:
                say("CFS-PC-PROBLEM import failed:", out.strip().replace("\n", " | "))
            if step % 3 == 0:
                say("CFS-PC-STEP rm", step)
                cfsctl("rm", f"img-{rng.randrange(4)}", "--repo", repo)  # may name no image: fine
                say("CFS-PC-STEP gc", step)
                code, out = cfsctl("gc", "--repo", repo)
                if code:
                    say("CFS-PC-PROBLEM gc failed:", out.strip().replace("\n", " | "))
        else:
            say("CFS-PC-STEP build", step)
            code, out = cfsctl("build", "--digest-store", store, src, image)
            if code:
                say("CFS-PC-PROBLEM build failed:", out.strip().replace("\n", " | "))
            if step % 5 == 0:
                say("CFS-PC-STEP wipe", step)
                if os.path.exists(image):
                    os.unlink(image)
                shutil.rmtree(store, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--state", required=True, help="directory on the verity disk")
    ap.add_argument("--mode", choices=("repo", "build"), default="repo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--final", action="store_true", help="check, then exit (no workload)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(a.state, exist_ok=True)
    t0 = time.monotonic()
    for line in kernel_lines():
        say("CFS-PC-KMSG", line)
        if "error" in line.lower():
            say("CFS-PC-PROBLEM kernel:", line)
    c = Checker(a.state)
    c.check_repo()
    c.check_build()
    c.next_import(rng)
    counts = " ".join(f"{k}={v}" for k, v in c.counts.items())
    say(f"CFS-PC-CHECK problems={len(c.problems)} {counts} seconds={time.monotonic() - t0:.1f}")
    if a.final:
        return 1 if c.problems else 0
    repo = os.path.join(a.state, "repo")
    if not os.path.exists(os.path.join(repo, "meta.json")):  # set-up, before the cuts may land
        code, out = cfsctl("init", "--repo", repo)
        if code:
            raise SystemExit(f"cfsctl init failed: {out}")
    say("CFS-PC-ARMED mode=" + a.mode)
    workload(a.mode, a.state, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
