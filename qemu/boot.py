#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Boot a Debian system from a composefs image under QEMU (TCG) and check it from inside (issue #15).

Usage (as root, from the repository root, after `make setup`; `make qemu-boot-test` does all):

    qemu/boot.py                  # prepare, then every boot below
    qemu/boot.py --only module    # boots whose name contains this (repeatable)
    qemu/boot.py --exclude tampered --exclude wrong   # not these (a full boot alone, for timing)
    qemu/boot.py --keep           # keep qemu/work/boot/ after a passing run

What happens:
  1. The Debian root: qemu/boot-rootfs.sh (debootstrap bookworm minbase + systemd +
     initramfs-tools + fsverity, then linux-image-6.12-amd64 from bookworm-security), made once
     per machine under $CFS_TEST_CACHE (/var/cache/cfs-test), keyed by that script's hash.
  2. A copy of it (qemu/work/boot/root) gets our kernel/ module in /lib/modules/KVER/updates, the
     test's check unit (qemu/boot/cfs-boot-check*), a reference file and a file whose object is
     tampered with later, and the hook and boot script through `cfsctl boot install-initramfs`.
     mkinitramfs runs once in a chroot; the initrd holds the module, and the stock path (EROFS +
     overlayfs) is booted from the same initrd with `module_blacklist=composefs`, which makes the
     boot program's `modprobe` of composefs fail as on a kernel without the module.
  3. The disk: `cfsctl import` of that root into DISK/composefs, `cfsctl boot deploy`, then
     `mkfs.ext4 -O verity -d DISK`; one busybox guest (qemu/run.py --job
     qemu/boot/enable_verity.py) enables fs-verity on every object and image (the host has none).
  4. Boots, each `-kernel vmlinuz -initrd initrd -append "root=/dev/vda rw composefs=..."`:
       module, then stock             full boots to multi-user.target: / is the composefs mount,
                                      /etc writable, /usr read-only, files equal the source tree,
                                      the tampered object is EIO; the stock boot is the reboot:
                                      /etc still holds what the module boot wrote there, and
                                      its `overlay.redirect_max=300` reached the module (loaded
                                      by modprobe then: composefs-setup-root leaves to modprobe
                                      what modprobe's configuration names);
       wrong-digest, tampered-image-module, tampered-image-stock
                                      stop in the initramfs with one "composefs: boot stopped:" line;
                                      they run at the same time as the module boot, on a copy of
                                      the disk with a tampered image, each with -snapshot.
Artefacts (console logs, qemu commands) in qemu/work/boot/logs/. Exit status 0 pass, 1 fail.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
import run as qrun  # noqa: E402  (qemu/run.py: kernel choice, module build, VM runner)

PY = REPO / ".venv" / "bin" / "python"
CACHE = Path(os.environ.get("CFS_TEST_CACHE", "/var/cache/cfs-test"))
VICTIM = "usr/share/cfs-boot/tampered"
REFERENCE = "usr/share/cfs-boot/reference"
CHECKED = (REFERENCE, "usr/lib/systemd/systemd", "usr/bin/bash")
log = qrun.log


def sh(cmd: list, what: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], **kw)
    if r.returncode != 0:
        out = (r.stdout or b"")[-3000:] if isinstance(r.stdout, bytes) else (r.stdout or "")[-3000:]
        log(f"FAIL: {what} (exit {r.returncode}): {shlex.join(map(str, cmd))}\n{out}")
        sys.exit(1)
    return r


def cfsctl(*args) -> str:
    r = sh([PY, "-m", "composefs.cli", *args], f"cfsctl {args[0]}", capture_output=True, text=True)
    return r.stdout


def security_mirror(mirror: str) -> str:
    return os.environ.get("CFS_DEBIAN_SECURITY") or re.sub(r"/debian/?$", "/debian-security", mirror)


def debian_root() -> Path:
    """The cached Debian root (made once per machine and package list)."""
    script = HERE / "boot-rootfs.sh"
    key = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    dest = CACHE / f"boot-bookworm-{key}"
    if dest.is_dir():
        return dest
    import ocireg  # the minbase debootstrap cache's mirror lookup and lock

    mirror = ocireg.debian_mirror()
    if mirror is None:
        log("FAIL: no Debian bookworm mirror in /etc/apt/sources*")
        sys.exit(1)
    with ocireg._cache_lock("boot-rootfs"):
        if not dest.is_dir():
            t = time.monotonic()
            log(f"debootstrap of the boot root into {dest} (once per machine)")
            sh([script, mirror, security_mirror(mirror), dest], "boot-rootfs.sh")
            log(f"timing: debootstrap root {time.monotonic() - t:.0f}s")
    return dest


def chroot_mkinitramfs(root: Path, kver: str, out: Path) -> str:
    """mkinitramfs in the root (its own initramfs-tools, hooks and modules); returns the listing."""
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        sh(["chroot", root, "mkinitramfs", "-o", "/initrd.tmp", kver], f"mkinitramfs for {out.name}",
           capture_output=True)
        listing = sh(["chroot", root, "lsinitramfs", "/initrd.tmp"], "lsinitramfs", capture_output=True,
                     text=True).stdout
    finally:
        subprocess.run(["umount", str(root / "proc")], check=True)
    shutil.move(root / "initrd.tmp", out)
    return listing


def prepare_root(work: Path, kver: str, modules: list[Path]) -> Path:
    src = debian_root()
    # The cached root stays untouched under an overlayfs: the test's additions go to its upper
    # directory, and nothing is copied.
    root = work / "root"
    for d in (root, work / "root.upper", work / "root.work"):
        d.mkdir(parents=True)
    sh(["mount", "-t", "overlay", "boot-test-root", "-o",
        f"lowerdir={src},upperdir={work / 'root.upper'},workdir={work / 'root.work'}", root],
       "overlay over the cached Debian root")
    if not (root / "lib/modules" / kver).is_dir():
        log(f"FAIL: the Debian root has no kernel {kver} (it has {os.listdir(root / 'lib/modules')})")
        sys.exit(1)
    upd = root / "lib/modules" / kver / "updates"
    upd.mkdir(exist_ok=True)
    for m in modules:
        shutil.copy2(m, upd / m.name)
    sh(["depmod", "-b", root, kver], "depmod")
    # the test's own files: the check unit, a reference file, a file whose object is tampered with
    shutil.copy2(HERE / "boot/cfs-boot-check", root / "usr/local/sbin/cfs-boot-check")
    unitdir = root / "etc/systemd/system"
    shutil.copy2(HERE / "boot/cfs-boot-check.service", unitdir / "cfs-boot-check.service")
    (unitdir / "multi-user.target.wants").mkdir(exist_ok=True)
    os.symlink("/etc/systemd/system/cfs-boot-check.service", unitdir / "multi-user.target.wants/cfs-boot-check.service")
    (unitdir / "default.target").unlink(missing_ok=True)
    os.symlink("/lib/systemd/system/multi-user.target", unitdir / "default.target")
    # units that only cost time in a test VM; udev too: nothing in this system waits for a
    # device (no fstab entries, no getty), and its coldplug is the slowest part of an emulated boot
    for u in ("systemd-udevd.service", "systemd-udev-trigger.service", "systemd-udev-settle.service",
              "systemd-udevd-control.socket", "systemd-udevd-kernel.socket", "systemd-hwdb-update.service",
              "serial-getty@ttyS0.service", "getty@tty1.service", "getty-static.service", "apt-daily.timer",
              "apt-daily-upgrade.timer", "systemd-timesyncd.service", "e2scrub_reap.service", "e2scrub_all.timer",
              "dpkg-db-backup.timer", "fstrim.timer", "systemd-tmpfiles-clean.timer", "systemd-update-utmp.service",
              "systemd-update-utmp-runlevel.service"):
        (unitdir / u).unlink(missing_ok=True)
        os.symlink("/dev/null", unitdir / u)
    # the initrd the kernel package made has no composefs hook; the test builds its own
    for p in (root / "boot").glob("initrd.img-*"):
        p.unlink()
    (root / "usr/share/cfs-boot").mkdir(parents=True, exist_ok=True)
    (root / REFERENCE).write_bytes(os.urandom(300_000))
    (root / VICTIM).write_bytes(os.urandom(8192))
    (root / "etc/hostname").write_text("cfsboot\n")
    (root / "etc/fstab").write_text("# the root is a composefs image (composefs= on the kernel command line)\n")
    # a small initramfs: the modules named here, not most of the kernel
    (root / "etc/initramfs-tools/conf.d/cfs-boot-test").write_text("MODULES=list\n")
    (root / "etc/initramfs-tools/modules").write_text("virtio_blk\next4\n")
    cfsctl("boot", "install-initramfs", "--root", root)
    return root


def make_initrd(work: Path, root: Path, kver: str) -> Path:
    out = work / "initrd"
    listing = chroot_mkinitramfs(root, kver, out)
    for want in ("/composefs.ko", "scripts/local-bottom/composefs", "bin/composefs-setup-root"):
        if want not in listing:
            log(f"FAIL: the initrd lacks {want}")
            sys.exit(1)
    return out


def make_disk(work: Path, root: Path, more: dict[str, Path] | None = None) -> tuple[Path, str]:
    """The boot disk: `root` imported as "debian" and deployed (and each of `more` the same way,
    under its name), fs-verity enabled on the repository. Returns (disk image, digest of root)."""
    disk = work / "disk"
    disk.mkdir()
    cfsctl("init", "--repo", disk / "composefs")
    for name, tree in (more or {}).items():
        cfsctl("import", tree, "--name", name, "--repo", disk / "composefs")
        cfsctl("boot", "deploy", name, "--root", disk)
    cfsctl("import", root, "--name", "debian", "--repo", disk / "composefs")
    karg = cfsctl("boot", "deploy", "debian", "--root", disk).strip()
    digest = karg.removeprefix("composefs=")
    log(f"image {digest}")
    r = subprocess.run([PY, str(HERE / "run.py"), "-q", "--no-build-module", "--keep", "--disk-size", "3G",
                        "--disk-dir", str(disk), "--work", str(work / "prep"), "--timeout", "900",
                        "--job", str(HERE / "boot/enable_verity.py"), "--", "/run/cfs/verity/composefs"])
    if r.returncode != 0:
        log("FAIL: enabling fs-verity on the boot disk in the guest")
        sys.exit(1)
    img = work / "disk.img"
    shutil.move(work / "prep/run/verity.img", img)
    return img, digest


def debugfs(img: Path, *cmds: str) -> None:
    for c in cmds:
        sh(["debugfs", "-w", "-R", c, img], f"debugfs {c}", capture_output=True)


def tamper_object(img: Path, root: Path, work: Path) -> None:
    """Replace the victim file's object on the disk with other bytes of the same size and no
    fs-verity, as an offline edit of the disk would."""
    d = cfsctl("digest", root / VICTIM).split()[0].removeprefix("sha256:")
    obj = f"/composefs/objects/{d[:2]}/{d[2:]}"
    bad = work / "tampered-object"
    bad.write_bytes(os.urandom(8192))
    debugfs(img, f"rm {obj}", f"write {bad} {obj}")


def tamper_image(img: Path, digest: str, work: Path) -> None:
    """Rewrite the image file with one byte changed (and so without its fs-verity)."""
    path = f"/composefs/images/{digest}"
    copy = work / "image-copy"
    sh(["debugfs", "-R", f"dump {path} {copy}", img], "debugfs dump", capture_output=True)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(data)
    debugfs(img, f"rm {path}", f"write {copy} {path}")


# the kernel command line that sends a boot down the stock path: composefs-setup-root's modprobe
# of the module fails, as on a kernel that lacks it
STOCK_ARG = "module_blacklist=composefs"
# overlayfs's limit on a redirect's length (default 256): harmless for a read-only root.
STOCK_PARAM = "overlay.redirect_max=300"


def boot(name: str, args, kver: str, initrd: Path, img: Path, karg: str, logs: Path,
         timeout: float, smp: int | None = None, snapshot: bool = False) -> tuple[dict, str, float]:
    """One boot; returns (facts the check unit reported, console text, seconds). With snapshot,
    the guest's writes go to a temporary file and the disk image stays as it was."""
    nonce = secrets.token_hex(6)
    rundir = logs / name
    rundir.mkdir(parents=True)
    # no_timer_check: on a loaded host the emulated CPU can fail the early IO-APIC timer check,
    # a panic before the initramfs (qemu/powercut.py passes it too)
    append = (f"console=ttyS0 root=/dev/vda rw {karg} cfs.nonce={nonce} panic=-1 mitigations=off no_timer_check "
              "rcupdate.rcu_cpu_stall_timeout=120 watchdog_thresh=60 loglevel=5 " + args.append)
    cmd = ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", args.cpu, "-smp", str(smp or args.smp),
           "-m", args.mem, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-device", "pvpanic", "-action", "panic=exit-failure",
           "-chardev", f"file,id=ser0,path={rundir / 'console.log'}", "-serial", "chardev:ser0",
           "-kernel", f"/boot/vmlinuz-{kver}", "-initrd", str(initrd), "-append", append.strip(),
           "-drive", f"file={img},format=raw,if=virtio,cache=unsafe,aio=threads"] + (["-snapshot"] if snapshot else [])
    (rundir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
    t = time.monotonic()
    rc, timed_out = qrun.run_vm(cmd, argparse.Namespace(shell=False, quiet=not args.verbose, timeout=timeout),
                                rundir, t)
    took = time.monotonic() - t
    text = (rundir / "console.log").read_text("utf-8", "replace").replace("\r\n", "\n")
    facts: dict = {"qemu_rc": rc, "timed_out": timed_out, "sha256": {}}
    for line in text.splitlines():
        if f"CFS-BOOT nonce={nonce} " not in line:
            continue
        rest = line.split(f"CFS-BOOT nonce={nonce} ", 1)[1].strip()
        if rest.startswith("sha256 "):
            _, path, hexd = rest.split()
            facts["sha256"][path.lstrip("/")] = hexd
        elif rest == "done":
            facts["done"] = True
        else:
            for kv in rest.split(" "):
                k, _, v = kv.partition("=")
                facts[k] = v
    return facts, text, took


def check_full(name: str, facts: dict, text: str, path: str, boots: int, want_sha: dict) -> list[str]:
    p = []
    if facts["timed_out"] or not facts.get("done"):
        return [f"{name}: no report from the booted system ({'timeout' if facts['timed_out'] else 'qemu exit %s' % facts['qemu_rc']})"]
    want_fs = "composefs" if path == "module" else "overlay"
    expect = {"root_fstype": want_fs, "etc_fstype": "overlay", "var_fstype": "overlay",
              "default_target": "multi-user.target", "multi_user": "active", "etc_writes": "ok",
              "etc_boots": str(boots), "usr_readonly": "yes", "tampered": "Input/output_error"}
    for k, v in expect.items():
        if facts.get(k) != v:
            p.append(f"{name}: {k} is {facts.get(k)!r}, expected {v!r}")
    redirect_max = facts.get("overlay_redirect_max")
    if path == "stock" and redirect_max != "300":
        p.append(f"{name}: overlay.redirect_max=300 on the command line, the module has {redirect_max!r}")
    if path == "module" and redirect_max == "300":
        p.append(f"{name}: overlay's redirect_max is 300 without the command line asking for it")
    if path == "stock" and "verity=require" not in facts.get("root_options", ""):
        p.append(f"{name}: the overlayfs root lacks verity=require: {facts.get('root_options')}")
    if path == "module" and not ("digest=" in facts.get("root_options", "") and "verity_check=2" in facts.get("root_options", "")):
        p.append(f"{name}: the composefs root does not show its digest: {facts.get('root_options')}")
    for f, h in want_sha.items():
        if facts["sha256"].get(f) != h:
            p.append(f"{name}: /{f} reads {facts['sha256'].get(f)}, the source tree has {h}")
    p += kernel_problems(name, text)
    return p


def check_stopped(name: str, facts: dict, text: str, reason: str) -> list[str]:
    stops = [l for l in text.splitlines() if "composefs: boot stopped:" in l]
    p = []
    if facts.get("done") or "uptime" in facts:
        p.append(f"{name}: the system booted; it should have stopped in the initramfs")
    if facts["timed_out"]:
        p.append(f"{name}: timeout")
    if len(stops) != 1:
        p.append(f"{name}: {len(stops)} 'composefs: boot stopped:' lines on the console, expected one")
    elif reason not in stops[0]:
        p.append(f"{name}: stopped for another reason: {stops[0]!r} (expected {reason!r})")
    return p + kernel_problems(name, text)


def kernel_problems(name: str, text: str) -> list[str]:
    bad = [l for l in text.splitlines() if re.match(r"\s*\[\s*\d+\.\d+\]", l) and qrun.DMESG_BAD_RE.search(l)]
    return [f"{name}: kernel log: {l.strip()}" for l in bad[:10]]


def main() -> int:
    ap = argparse.ArgumentParser(description="Boot Debian from a composefs image under QEMU (see the top of this file).")
    ap.add_argument("--only", action="append", default=[], help="run only boots whose name contains this")
    ap.add_argument("--exclude", action="append", default=[], help="skip boots whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep qemu/work/boot after a passing run")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "boot")
    ap.add_argument("--mem", default="1G")
    ap.add_argument("--cpu", default="max")
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--append", default="", help="extra kernel command line")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for one full boot")
    ap.add_argument("-v", "--verbose", action="store_true", help="stream the consoles")
    ap.add_argument("--root-only", action="store_true",
                    help="only make the cached Debian root (make test starts this early, in the background)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("boot: needs root (debootstrap, chroot, mkfs)", file=sys.stderr)
        return 2
    if args.root_only:
        log(f"Debian root ready: {debian_root()}")
        return 0
    t0 = time.monotonic()
    kver = qrun.pick_kver(os.environ.get("CFS_QEMU_KVER"))
    modules = qrun.build_modules(kver)
    if not modules:
        log("FAIL: kernel/ built no module; the module path cannot be booted")
        return 1
    work = args.work.resolve()
    if work.exists():
        subprocess.run(["umount", "-q", str(work / "root")], check=False)  # a killed run's overlay
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        return run_all(args, work, kver, modules, t0)
    finally:
        subprocess.run(["umount", "-q", str(work / "root")], check=False)


def run_all(args, work: Path, kver: str, modules: list[Path], t0: float) -> int:
    logs = work / "logs"
    root = prepare_root(work, kver, modules)
    t_root = time.monotonic()
    initrd = make_initrd(work, root, kver)
    t_initrd = time.monotonic()
    img, digest = make_disk(work, root)
    t_disk = time.monotonic()
    log(f"timing: prepare root {t_root - t0:.0f}s, initramfs {t_initrd - t_root:.0f}s, "
        f"import + verity guest {t_disk - t_initrd:.0f}s")
    want_sha = {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in CHECKED}
    tamper_object(img, root, work)
    bad_img = work / "disk-tampered-image.img"
    sh(["cp", "--sparse=always", "--reflink=auto", img, bad_img], "copy the disk")
    tamper_image(bad_img, digest, work)
    karg = f"composefs={digest}"
    wrong = "composefs=" + hashlib.sha256(digest.encode()).hexdigest()

    # Full boots one after the other on one disk: name, kernel arguments, path, expected count of
    # boots /etc has seen (the stock boot is also the reboot that finds the module boot's /etc).
    # The stock boot also sets a module parameter on the command line, which the initramfs's
    # module loading must hand to the module (by modprobe, as anything modprobe configures).
    full = [("module", karg, "module"), ("stock", f"{karg} {STOCK_ARG} {STOCK_PARAM}", "stock")]
    # Boots that must stop in the initramfs: name, kernel arguments, the reason they must give.
    # All read the disk with the tampered image (the wrong digest is not found there either).
    stopped = [
        ("wrong-digest", wrong, "not found"),
        ("tampered-image-module", karg, "tampered or wrong image"),
        ("tampered-image-stock", f"{karg} {STOCK_ARG}", "tampered or wrong image"),
    ]
    if args.only:
        full = [b for b in full if any(o in b[0] for o in args.only)]
        stopped = [b for b in stopped if any(o in b[0] for o in args.only)]
    full = [b for b in full if not any(x in b[0] for x in args.exclude)]
    stopped = [b for b in stopped if not any(x in b[0] for x in args.exclude)]
    problems: list[str] = []
    times = []

    def report(name: str, took: float, facts: dict, text: str, p: list[str]) -> None:
        times.append(f"{name} {took:.0f}s" + (f" (multi-user at uptime {facts['uptime']}s)" if "uptime" in facts else ""))
        log(f"{name}: {'ok' if not p else 'FAIL'} ({took:.0f}s)")
        if p:
            print("\n".join(text.splitlines()[-40:]))
        problems.extend(p)

    # The short boots run beside the first full boot: each is one emulated CPU, and the disk is
    # theirs alone (-snapshot keeps even the initramfs's writes away from it).
    with ThreadPoolExecutor(max_workers=max(1, len(stopped))) as pool:
        pending = {pool.submit(boot, name, args, kver, initrd, bad_img, k, logs, 300, 1, True): (name, reason)
                   for name, k, reason in stopped}
        for boots, (name, k, path) in enumerate(full, 1):
            facts, text, took = boot(name, args, kver, initrd, img, k, logs, args.timeout)
            report(name, took, facts, text, check_full(name, facts, text, path, boots, want_sha))
        for fut in pending:
            name, reason = pending[fut]
            facts, text, took = fut.result()
            report(name, took, facts, text, check_stopped(name, facts, text, reason))
    log(f"timing: total {time.monotonic() - t0:.0f}s, boots {time.monotonic() - t_disk:.0f}s: " + ", ".join(times))
    if problems:
        for p in problems:
            log(f"FAIL: {p}")
        log(f"artefacts kept in {work}")
        return 1
    if not args.keep:
        subprocess.run(["umount", "-q", str(work / "root")], check=False)
        shutil.rmtree(work, ignore_errors=True)
    log("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
