#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Boot Debian's 6.12 kernel under QEMU (TCG) once and run the guest test suite in that boot.

Usage (from the repository root, as root, after `make setup`; `make qemu-test` does all of it):

    qemu/run.py                                  # build kernel/ if present, run all of tests/guest
    qemu/run.py -- tests/guest/test_verity.py -k enforced -x     # any pytest selection/options
    qemu/run.py --module /abs/or/rel/other.ko    # insmod an extra module in the guest (repeatable)
    qemu/run.py --no-build-module                # do not build or load kernel/*.ko
    qemu/run.py --keep                           # keep the verity disk image in qemu/work/run/
    qemu/run.py --shell                          # interactive busybox console instead of pytest
    qemu/run.py --timeout 1800                   # global timeout in seconds (default 3600)
    qemu/run.py --job bench/guest/walk_read.py -- ARGS   # run this Python script instead of pytest
    qemu/run.py --disk W/disk.img --drive-cache none \
        --kill-after 'MARKER' --kill-delay 3.5 --job ...  # power cut 3.5 s after MARKER (qemu/powercut.py)

    make qemu-test QEMU_ARGS="--keep -- tests/guest/test_verity.py -x"   # same options via make

What happens:
  1. kernel/Makefile exists -> `make -C /lib/modules/KVER/build M=$PWD/kernel modules`; every
     kernel/*.ko is loaded in the guest (in name order) after the Debian modules. Extra --module
     files are loaded after those. A failing build or insmod fails the run.
  2. qemu/build-initramfs.sh makes qemu/work/initramfs-KVER.cpio (busybox + Debian modules).
  3. qemu/work/run/verity.img: a sparse ext4 image made with `mkfs.ext4 -b 4096 -O verity`.
  4. QEMU boots (-accel tcg, never KVM) with the host root shared read-only over 9p; the guest's
     /init (qemu/guest-init.sh) chroots into it and runs qemu/work/run/job.sh, i.e.
     `.venv/bin/python -m pytest -p no:cacheprovider [PYTEST_ARGS or: tests/guest -v -rA]` from the
     repository root with CFS_GUEST=1, CFS_VERITY_DIR=/run/cfs/verity (ext4 with fs-verity),
     CFS_VERITY_DEV=/dev/vda, CFS_OUT_DIR=/run/cfs/out (= qemu/work/run/ on the host, writable),
     CFS_MODULES=<loaded .ko paths, colon-separated>, CFS_REPO=<repo root>.
     With --job SCRIPT the job is `.venv/bin/python SCRIPT [ARGS after --]` in the same
     environment instead of pytest (benchmarks); its exit status takes pytest's place below.
  5. PASS only if: QEMU exits 0 (a panic exits non-zero through pvpanic), no timeout, the console
     shows the marker line with this run's nonce and pytest=0, modules=ok, setup=ok, and the
     guest's dmesg holds no BUG/WARNING/Oops/general protection/... line. On failure the tail of
     the guest dmesg and of the console log are printed.

Power cuts (qemu/powercut.py drives these): --disk IMG boots on that image, kept across runs
(made like verity.img when missing, never removed); --kill-after REGEX with --kill-delay SECONDS
SIGKILLs QEMU that long after a console line matches REGEX. Such a run passes when the kill
happened and the kernel log so far is clean (no result marker is expected); it fails when the
guest finished before the kill. --drive-cache sets the virtio disk's cache= mode (default unsafe).

Artefacts in qemu/work/run/: console.log (serial console), dmesg.txt, junit.xml, qemu.cmd, job.sh
(pytest; extra arguments are appended) and shell.sh (bash in the test environment; for --shell).
Exit status: 0 pass, 1 fail, 2 usage/host set-up error.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_PYTEST_ARGS = ["tests/guest", "-v", "-rA"]
MARKER_RE = re.compile(
    r"^CFS-QEMU-RESULT nonce=(?P<nonce>\S+) pytest=(?P<pytest>-?\d+) modules=(?P<modules>\w+) "
    r"setup=(?P<setup>\w+)\s*$",
    re.M,
)
# Kernel log lines that fail a run whatever the tests said.
DMESG_BAD_RE = re.compile(
    r"BUG:|kernel BUG|WARNING:|Oops|general protection|Call Trace:|UBSAN:|KASAN:"
    r"|blocked for more than|soft lockup|hard LOCKUP|Kernel panic|list_(add|del) corruption"
    r"|refcount_t: |stack-protector|RIP: "
)


def log(msg: str) -> None:
    print(f">> qemu: {msg}", flush=True)


def pick_kver(requested: str | None) -> str:
    if requested:
        return requested
    cands = [p.name for p in Path("/lib/modules").glob("6.12.*-amd64") if (p / "modules.dep").exists()]
    cands = [k for k in cands if Path(f"/boot/vmlinuz-{k}").exists()]
    if not cands:
        sys.exit("qemu: no Debian 6.12 kernel installed (/boot/vmlinuz-6.12.*-amd64); run `make qemu-test`")

    def key(k: str):
        return [int(x) if x.isdigit() else x for x in re.split(r"[.+-]", k)]

    return max(cands, key=key)


def run_checked(cmd: list[str], what: str, **kw) -> None:
    r = subprocess.run(cmd, **kw)
    if r.returncode != 0:
        log(f"FAIL: {what} (exit {r.returncode}): {shlex.join(cmd)}")
        sys.exit(1)


def build_modules(kver: str) -> list[Path]:
    kdir = REPO / "kernel"
    if not (kdir / "Makefile").exists():
        return []
    build = Path(f"/lib/modules/{kver}/build")
    if not build.exists():
        sys.exit(f"qemu: {build} missing; install linux-headers-{kver} (make qemu-test does)")
    log(f"building kernel/ against {kver}")
    run_checked(
        ["make", "-C", str(build), f"M={kdir}", "modules", f"-j{os.cpu_count() or 1}"],
        "kernel module build",
        stdout=subprocess.DEVNULL if os.environ.get("CFS_QEMU_QUIET_BUILD") else None,
    )
    mods = sorted(kdir.glob("*.ko"))
    if not mods:
        log("FAIL: kernel/ built but produced no .ko")
        sys.exit(1)
    return mods


def sh_env(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def write_job(rundir: Path, nonce: str, modules: list[Path], pytest_args: list[str], shell: bool,
              script: Path | None = None) -> None:
    mods = ":".join(str(m) for m in modules)
    if any(":" in str(m) or " " in str(m) for m in modules):
        sys.exit("qemu: module paths must not contain ':' or spaces")
    (rundir / "job.env").write_text(
        f"CFS_NONCE={nonce}\nCFS_MODULES={shlex.quote(mods)}\nCFS_SHELL={int(shell)}\n"
        f"CFS_REPO={shlex.quote(str(REPO))}\n"
    )
    venv_bin = REPO / ".venv" / "bin"
    env = {
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PY_COLORS": "0",
        "HYPOTHESIS_STORAGE_DIRECTORY": "/tmp/hypothesis",
        "CFS_GUEST": "1",
        "CFS_REPO": str(REPO),
        "CFS_VERITY_DIR": "/run/cfs/verity",
        "CFS_VERITY_DEV": "/dev/vda",
        "CFS_OUT_DIR": "/run/cfs/out",
        "CFS_MODULES": mods,
    }
    head = "#!/bin/sh\n# written by qemu/run.py; runs inside the guest's chroot\n" + sh_env(env)
    head += f"cd {shlex.quote(str(REPO))} || exit 125\n"
    if script is not None:
        job = [str(venv_bin / "python"), str(script), *pytest_args]
    else:
        job = [str(venv_bin / "python"), "-m", "pytest", "-p", "no:cacheprovider",
               "--junitxml=/run/cfs/out/junit.xml", *pytest_args]
    (rundir / "job.sh").write_text(head + "exec " + shlex.join(job) + ' "$@"\n')
    (rundir / "shell.sh").write_text(head + "export TERM=${TERM:-linux}\nexec bash -i\n")


def make_disk(img: Path, size: str, preload: Path | None) -> None:
    img.unlink(missing_ok=True)
    run_checked(["truncate", "-s", size, str(img)], "create disk image")
    cmd = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "verity", "-L", "cfsverity"]
    if preload:
        cmd += ["-d", str(preload)]
    run_checked(cmd + [str(img)], "mkfs.ext4 -O verity")


def qemu_cmd(args, kver: str, initrd: Path, rundir: Path, img: Path) -> list[str]:
    console = rundir / "console.log"
    if args.shell:
        chardev = f"stdio,id=ser0,signal=off,logfile={console}"
    else:
        chardev = f"file,id=ser0,path={console}"
    # Emulated CPUs on a busy host can stall for seconds: raise the RCU-stall and soft-lockup
    # thresholds so only real hangs are reported (the global timeout catches those anyway).
    append = ("console=ttyS0 panic=-1 mitigations=off loglevel=7 "
              "rcupdate.rcu_cpu_stall_timeout=120 watchdog_thresh=60 " + args.append)
    return [
        "qemu-system-x86_64",
        "-accel", "tcg,thread=multi",
        "-cpu", args.cpu,
        "-smp", str(args.smp),
        "-m", args.mem,
        "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot",
        "-device", "pvpanic",
        "-action", "panic=exit-failure",
        "-chardev", chardev,
        "-serial", "chardev:ser0",
        "-kernel", f"/boot/vmlinuz-{kver}",
        "-initrd", str(initrd),
        "-append", append.strip(),
        "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={rundir},mount_tag=out,security_model=none,multidevs=remap",
        "-drive", f"file={img},format=raw,if=virtio,cache={args.drive_cache},aio=threads",
    ]


class Tail:
    """Streams new console output to our stdout."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled, self.pos = path, enabled, 0

    def pump(self) -> None:
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        if data:
            self.pos += len(data)
            sys.stdout.write(data.decode("utf-8", "replace").replace("\r\n", "\n"))
            sys.stdout.flush()


def tail_lines(path: Path, n: int) -> str:
    if not path.exists():
        return f"({path.name} missing)\n"
    lines = path.read_text("utf-8", "replace").replace("\r\n", "\n").splitlines()
    return "\n".join(lines[-n:]) + "\n"


class KillWatch:
    """--kill-after/--kill-delay: SIGKILL QEMU (a power cut) a set time after a console line."""

    def __init__(self, path: Path, pattern: str | None, delay: float):
        self.path, self.delay, self.pos, self.buf = path, delay, 0, b""
        self.pattern = re.compile(pattern.encode(), re.M) if pattern else None
        self.seen_at: float | None = None
        self.killed_at: float | None = None

    def poll(self, proc: subprocess.Popen) -> None:
        if self.pattern is None or self.killed_at is not None:
            return
        if self.seen_at is None and self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
            self.pos += len(data)
            self.buf = (self.buf + data)[-65536:]
            if self.pattern.search(self.buf):
                self.seen_at = time.monotonic()
        if self.seen_at is not None and time.monotonic() >= self.seen_at + self.delay:
            proc.kill()
            self.killed_at = time.monotonic()


def run_vm(cmd: list[str], args, rundir: Path, t_boot: float,
           watch: KillWatch | None = None) -> tuple[int, bool]:
    """Runs QEMU to its end or the timeout; QEMU never outlives us. Returns (exit status, timed out)."""
    if args.shell:
        proc = subprocess.Popen(cmd)
    else:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        if args.shell:
            return proc.wait(), False
        tail = Tail(rundir / "console.log", not args.quiet)
        deadline = t_boot + args.timeout
        step = 0.05 if watch is not None and watch.pattern is not None else 0.5
        while True:
            if watch is not None:
                watch.poll(proc)
            try:
                rc = proc.wait(timeout=step)
                tail.pump()
                return rc, False
            except subprocess.TimeoutExpired:
                tail.pump()
                if time.monotonic() > deadline:
                    return -1, True
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Boot Debian 6.12 under QEMU/TCG and run tests/guest (see the top of this file).",
        usage="%(prog)s [options] [-- PYTEST_ARGS... | -- JOB_ARGS...]",
    )
    ap.add_argument("--kver", default=os.environ.get("CFS_QEMU_KVER"), help="kernel version (default: newest 6.12.*-amd64)")
    ap.add_argument("--module", action="append", default=[], type=Path, help="extra .ko to insmod in the guest")
    ap.add_argument("--no-build-module", action="store_true", help="do not build/load kernel/*.ko")
    ap.add_argument("--keep", action="store_true", help="keep the verity disk image after a passing run")
    ap.add_argument("--shell", action="store_true", help="interactive guest console instead of pytest")
    ap.add_argument("--job", type=Path, metavar="SCRIPT",
                    help="run this Python script (arguments after --) instead of pytest")
    ap.add_argument("--timeout", type=float, default=float(os.environ.get("CFS_QEMU_TIMEOUT", 3600)))
    ap.add_argument("--mem", default="2G")
    ap.add_argument("--cpu", default="max", help="QEMU CPU model (default: max)")
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--disk-size", default="4G")
    ap.add_argument("--disk-dir", type=Path, help="preload the verity disk with this directory (mkfs.ext4 -d)")
    ap.add_argument("--disk", type=Path, help="boot on this disk image, kept across runs (made when missing)")
    ap.add_argument("--drive-cache", default="unsafe", help="cache= mode of the virtio disk (default: unsafe)")
    ap.add_argument("--kill-after", metavar="REGEX", help="SIGKILL QEMU --kill-delay seconds after a console "
                    "line matches REGEX (a power cut; see the top of this file)")
    ap.add_argument("--kill-delay", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--append", default="", help="extra kernel command line")
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("-q", "--quiet", action="store_true", help="do not stream the console (it is still logged)")
    argv = sys.argv[1:]
    pytest_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    args = ap.parse_args(argv)
    if args.job is None:
        pytest_args = pytest_args or DEFAULT_PYTEST_ARGS
    elif not args.job.is_file():
        print(f"qemu: --job {args.job}: no such file", file=sys.stderr)
        return 2
    else:
        args.job = args.job.resolve()

    if shutil.which("qemu-system-x86_64") is None:
        print("qemu: qemu-system-x86_64 not installed; run `make qemu-test`", file=sys.stderr)
        return 2
    # The guest puts its own filesystems on these; /tmp and /run are fine (the guest binds the
    # checkout back over its tmpfs there, see guest-init.sh), the rest hold no checkout.
    hidden = [d for d in ("/proc", "/sys", "/dev") if str(REPO) == d or str(REPO).startswith(d + "/")]
    if hidden or str(REPO) in ("/tmp", "/run"):
        print(f"qemu: the repository ({REPO}) cannot be shared with the guest from there;"
              " use a checkout in a directory of its own", file=sys.stderr)
        return 2
    if not (REPO / ".venv" / "bin" / "python").exists():
        print("qemu: no .venv; run `make setup` first (make qemu-test does)", file=sys.stderr)
        return 2

    t0 = time.monotonic()
    kver = pick_kver(args.kver)
    modules = [] if args.no_build_module else build_modules(kver)
    for m in args.module:
        if not m.is_file():
            print(f"qemu: --module {m}: no such file", file=sys.stderr)
            return 2
        modules.append(m.resolve())

    work = args.work.resolve()
    rundir = work / "run"
    if rundir.exists():
        shutil.rmtree(rundir)
    rundir.mkdir(parents=True)
    initrd = work / f"initramfs-{kver}.cpio"
    run_checked([str(HERE / "build-initramfs.sh"), kver, str(initrd), *map(str, modules)], "build initramfs")
    img = rundir / "verity.img"
    if args.disk is not None:
        img = args.disk.resolve()
        if not img.exists():
            make_disk(img, args.disk_size, args.disk_dir)
    else:
        make_disk(img, args.disk_size, args.disk_dir)
    nonce = secrets.token_hex(8)
    write_job(rundir, nonce, modules, pytest_args, args.shell, args.job)

    cmd = qemu_cmd(args, kver, initrd, rundir, img)
    log(f"kernel {kver}, modules: {' '.join(map(str, modules)) or '(none)'}")
    if args.job is not None:
        log(f"job: {args.job} {shlex.join(pytest_args)}")
    else:
        log(f"pytest args: {shlex.join(pytest_args)}")
    log(f"console log: {rundir / 'console.log'}; timeout {args.timeout:.0f}s")
    (rundir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")

    t_boot = time.monotonic()
    timed_out = False

    def on_signal(signum, _frame):
        raise SystemExit(f"qemu: killed by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    watch = KillWatch(rundir / "console.log", args.kill_after, args.kill_delay)
    rc, timed_out = run_vm(cmd, args, rundir, t_boot, watch)
    t_end = time.monotonic()
    cut = watch.killed_at is not None


    console = (rundir / "console.log").read_text("utf-8", "replace") if (rundir / "console.log").exists() else ""
    ready = re.search(r"cfs-guest: ready at uptime ([\d.]+)s", console)
    done = re.search(r"cfs-guest: finished at uptime ([\d.]+)s", console)
    problems: list[str] = []
    if timed_out:
        problems.append(f"timeout after {args.timeout:.0f}s (guest hung or too slow)")
    if args.kill_after and not cut and not timed_out:
        problems.append("the guest finished before the power cut (--kill-after never fired)")
    if rc != 0 and not timed_out and not cut:
        problems.append(f"QEMU exited with status {rc} (non-zero: guest panic via pvpanic, or QEMU error)")
    marks = [m for m in MARKER_RE.finditer(console) if m["nonce"] == nonce]
    if not marks and not cut:
        problems.append("no result marker with this run's nonce on the console (guest crashed, hung or rebooted)")
    elif marks:
        m = marks[-1]
        if m["setup"] != "ok":
            problems.append("guest set-up failed (see the console log)")
        if m["modules"] != "ok":
            problems.append("loading a kernel module failed")
        if m["pytest"] != "0" and not args.shell:
            problems.append(f"{'the job' if args.job else 'pytest'} exited with status {m['pytest']}")
    dmesg_path = rundir / "dmesg.txt"
    kernel_log = dmesg_path.read_text("utf-8", "replace") if dmesg_path.exists() else ""
    if not kernel_log:
        # No dmesg written (crash): the kernel's own console lines carry a timestamp.
        kernel_log = "\n".join(l for l in console.splitlines() if re.match(r"\s*\[\s*\d+\.\d+\]", l))
    bad = [l for l in kernel_log.splitlines() if DMESG_BAD_RE.search(l)]
    if bad:
        problems.append("kernel log reports problems:\n    " + "\n    ".join(bad[:20]))

    if problems:
        print("\n=== guest dmesg (tail) ===", flush=True)
        print(tail_lines(dmesg_path, 120) if dmesg_path.exists() else "(no dmesg.txt; see console)")
        print("=== console log (tail) ===")
        print(tail_lines(rundir / "console.log", 60))
    if not problems and not args.keep and args.disk is None:
        img.unlink(missing_ok=True)

    boot = f"{float(ready[1]):.1f}s to guest ready" if ready else "guest never got ready"
    guest = f", guest job {float(done[1]) - float(ready[1]):.1f}s" if ready and done else ""
    if cut:
        log(f"power cut: QEMU killed {watch.killed_at - watch.seen_at:.2f}s after the kill marker, "
            f"{watch.killed_at - t_boot:.1f}s after start")
    log(f"timing: total {t_end - t0:.1f}s (prep {t_boot - t0:.1f}s, VM {t_end - t_boot:.1f}s; {boot}{guest})")
    if problems:
        for p in problems:
            log(f"FAIL: {p}")
        log(f"artefacts kept in {rundir}")
        return 1
    log("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
