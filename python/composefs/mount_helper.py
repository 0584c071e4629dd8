"""``mount.composefs``: the helper mount(8) runs for ``mount -t composefs IMAGE MNT -o ...``.

mount(8) calls ``/sbin/mount.composefs SOURCE TARGET [-sfnv] [-N NS] [-o OPTIONS]``. The options use
the kernel module's syntax, so one fstab line works whichever way the image ends up mounted::

    basedir=DIR[:DIR...]   object directories, searched in order (required)
    digest=HEX             the image's fs-verity digest (implies verity_check=2)
    verity_check=0|1|2     how strictly file contents are verified
    upperdir=DIR,workdir=DIR   a writable overlay on top (stock overlay backend only)
    backend=auto|kernel|overlay
    ro, rw, nosuid, nodev, noexec, noatime, ...   the usual mount attributes

With the composefs module loaded the mount is handed to it; otherwise EROFS + overlayfs is used.
Exit status follows mount(8): 0 success, 1 bad invocation or permissions, 32 mount failure.
"""

from __future__ import annotations

import sys

from .errors import CfsError
from .mount import MountRequest, ObjectDir, mount_image, parse_digest, validate

EX_USAGE = 1
EX_FAIL = 32

USAGE = "usage: mount.composefs IMAGE MOUNTPOINT [-sfnv] [-o basedir=DIR[:DIR...],digest=HEX,verity_check=N,...]"

# Options mount(8) may pass along that mean nothing to us (userspace-only, or defaults).
_IGNORED = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail",
            "_netdev", "suid", "dev", "exec", "relatime", "atime", "diratime", "async", "loud",
            "silent"}
_ATTRS = {"ro", "nosuid", "nodev", "noexec", "noatime", "nodiratime", "strictatime"}


class UsageError(CfsError):
    pass


def parse_args(argv: list[str]) -> tuple[str, str, list[str], dict]:
    """Split mount(8)'s helper arguments: (source, target, option strings, flags)."""
    positional: list[str] = []
    opts: list[str] = []
    flags = {"sloppy": False, "fake": False, "nomtab": False, "verbose": False}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-o" or a == "-t" or a == "-N":
            if i + 1 >= len(argv):
                raise UsageError(f"option {a} needs a value\n{USAGE}")
            if a == "-o":
                opts.append(argv[i + 1])
            elif a == "-t" and argv[i + 1] not in ("composefs",):
                raise UsageError(f"this helper mounts composefs, not {argv[i + 1]}")
            elif a == "-N":
                raise UsageError("mount.composefs does not support -N (mount namespaces)")
            i += 2
            continue
        if a.startswith("-o") and len(a) > 2:
            opts.append(a[2:])
        elif a.startswith("-") and len(a) > 1 and a != "--":
            for ch in a[1:]:
                if ch == "s":
                    flags["sloppy"] = True
                elif ch == "f":
                    flags["fake"] = True
                elif ch == "n":
                    flags["nomtab"] = True
                elif ch == "v":
                    flags["verbose"] = True
                elif ch == "r":
                    opts.append("ro")
                elif ch == "w":
                    opts.append("rw")
                elif ch == "h":
                    raise UsageError(USAGE)
                else:
                    raise UsageError(f"unknown flag -{ch}\n{USAGE}")
        else:
            positional.append(a)
        i += 1
    if len(positional) != 2:
        raise UsageError(USAGE)
    return positional[0], positional[1], opts, flags


def request_from_options(image: str, target: str, opt_strings: list[str], sloppy: bool = False) -> MountRequest:
    req = MountRequest(image=image, mountpoint=target, basedirs=[])
    for s in opt_strings:
        for item in s.split(","):
            if not item:
                continue
            key, eq, value = item.partition("=")
            if key == "basedir":
                if not value:
                    raise UsageError("basedir= needs at least one directory")
                req.basedirs += [ObjectDir(p) for p in value.split(":") if p]
            elif key == "digest":
                req.digest = parse_digest(value)
            elif key == "verity_check":
                if value not in ("0", "1", "2"):
                    raise UsageError(f"bad verity_check={value!r}: expected 0, 1 or 2")
                req.verity_check = int(value)
            elif key == "upperdir":
                req.upperdir = value
            elif key == "workdir":
                req.workdir = value
            elif key == "backend":
                req.backend = value
            elif key in _ATTRS and not eq:
                if key not in req.attrs:
                    req.attrs.append(key)
            elif (key in _IGNORED and not eq) or key.startswith("x-") or key == "comment":
                continue
            elif not sloppy:
                raise UsageError(f"unknown option {item!r} (use -s to ignore unknown options)")
    if not req.basedirs:
        raise UsageError("missing basedir= option: where are the objects?")
    validate(req)
    return req


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        image, target, opts, flags = parse_args(argv)
        req = request_from_options(image, target, opts, sloppy=flags["sloppy"])
    except CfsError as e:
        print(f"mount.composefs: {e}", file=sys.stderr)
        return EX_USAGE
    if flags["fake"]:
        if flags["verbose"]:
            print(f"mount.composefs: would mount {image} on {target}")
        return 0
    try:
        result = mount_image(req)
    except CfsError as e:
        print(f"mount.composefs: {e}", file=sys.stderr)
        return EX_USAGE if "must be root" in str(e) else EX_FAIL
    except OSError as e:
        print(f"mount.composefs: {e.filename or target}: {e.strerror or e}", file=sys.stderr)
        return EX_FAIL
    if flags["verbose"]:
        how = f"{result.backend}" + (f", erofs from {result.erofs_source}" if result.erofs_source else "")
        print(f"mount.composefs: {image} mounted on {result.mountpoint} ({how})")
    return 0


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
