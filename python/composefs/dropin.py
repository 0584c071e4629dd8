# SPDX-License-Identifier: MIT OR Apache-2.0
"""``mkcomposefs`` and ``composefs-info``: the reference tools' command lines, our core.

Scripts and packaging that call composefs 1.0.8's tools run these unchanged: the same options
parsed the same way (GNU getopt_long: options anywhere, ``--opt=value`` or ``--opt value``,
unambiguous prefixes), the same usage text, the same output bytes and exit statuses. Images
are the reference's byte for byte (hardlinks split, as mkcomposefs 1.0 writes them, and the
build options ignored for dump sources as 1.0.8 ignores them). What differs: the wording of
error messages (they come from our core; the exit status is the reference's).
"""

from __future__ import annotations

import errno
import getopt
import os
import sys

from .errors import CfsError, printable

DEFAULT_MIN_VERSION = 0
DEFAULT_MAX_VERSION = 1
MAX_VERSION = 1


def _argv0() -> str:
    """argv[0] as given: what composefs-info's usage and glibc's getopt messages print."""
    return sys.argv[0] if sys.argv and sys.argv[0] else "composefs"


def _prog() -> str:
    """Its base name: what err(3) and mkcomposefs' usage print."""
    return os.path.basename(_argv0())


def _die(message: str, code: int = 1) -> None:
    """err(3)'s way out: ``PROG: MESSAGE``. Names in MESSAGE are escaped by the caller (``_p``)."""
    sys.stdout.flush()
    sys.stderr.write(f"{_prog()}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")


def _getopt(args: list[str], longopts: list[str], usage, quiet: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """GNU getopt_long. ``quiet``: the reference's option string starts with ':' (mkcomposefs), so
    getopt prints nothing itself and a missing value is reported as "option needs a value"."""
    try:
        return getopt.gnu_getopt(args, "", longopts)
    except getopt.GetoptError as e:
        missing = "requires argument" in e.msg
        if quiet and missing:
            _say("option needs a value")
            raise SystemExit(1) from None
        if not quiet:  # glibc's own messages
            if missing:
                _say(f"{_argv0()}: option '--{e.opt}' requires an argument")
            elif "must not have an argument" in e.msg:
                _say(f"{_argv0()}: option '--{e.opt}' doesn't allow an argument")
            elif "not a unique prefix" in e.msg:
                _say(f"{_argv0()}: option '--{e.opt}' is ambiguous")
            else:
                _say(f"{_argv0()}: unrecognized option '--{e.opt}'")
        return usage(None)


# --- mkcomposefs ------------------------------------------------------------------------------

MKCOMPOSEFS_LONGOPTS = ["skip-xattrs", "user-xattrs", "skip-devices", "use-epoch", "digest-store=", "print-digest",
                        "print-digest-only", "from-file", "max-version=", "min-version=", "threads="]


# The options and their help, as the reference's usage message words them (its typos kept: the
# usage text is the same bytes); the man page is made from this table too.
MKCOMPOSEFS_OPTIONS = [
    ("--digest-store=PATH", "Store content files in this directory"),
    ("--use-epoch", "Make all mtimes zero"),
    ("--skip-devices", "Don't store device nodes"),
    ("--skip-xattrs", "Don't store file xattrs"),
    ("--user-xattrs", "Only store user.* xattrs"),
    ("--print-digest", "Print the digest of the image"),
    ("--print-digest-only", "Print the digest of the image, don't write image"),
    ("--from-file", "The source is a dump file, not a directory"),
    ("--min-version=N", "Use this minimal format version (default={min})"),
    ("--max-version=N", "Use this maxium format version (default={max})"),
    ("--threads=N", "Use this to override the default number of threads used to calculate digest and copy files "
                    "(default={cpus})"),
]
INFO_OPTIONS = [
    ("--basedir=PATH", "The directory of backing files that missing-objects checks against."),
    ("--filter=NAME", "Only the top-level entries called NAME (a name, not a path); repeat for several."),
]


def mkcomposefs_usage(exit_code: int | None = 1):
    lines = [f"Usage: {_prog()} [OPTIONS] SOURCE IMAGE", "Options:"]
    for spec, text in MKCOMPOSEFS_OPTIONS:
        text = text.format(min=DEFAULT_MIN_VERSION, max=DEFAULT_MAX_VERSION, cpus=os.cpu_count() or 1)
        lines.append(f"  {spec:<22}{text}")
    _say("\n".join(lines))
    raise SystemExit(1 if exit_code is None else exit_code)


def _c_long(text: str) -> int | None:
    """strtol(text, &end, 10) with the reference's check (all of it a number, not empty)."""
    t = text.lstrip(" \t\n\r\f\v")
    try:
        return int(t, 10) if t and t.strip() == t and t.lstrip("+-").isdigit() else None
    except ValueError:
        return None


def mkcomposefs(args: list[str]) -> int:
    opts, rest = _getopt(args, MKCOMPOSEFS_LONGOPTS, mkcomposefs_usage, quiet=True)
    flags = dict(use_epoch=False, skip_devices=False, skip_xattrs=False, user_xattrs=False)
    store = None
    print_digest = print_digest_only = from_file = False
    version_set = False
    lo = hi = 0
    threads = 0
    for o, v in opts:
        name = o[2:]
        if name in ("use-epoch", "skip-devices", "skip-xattrs", "user-xattrs"):
            flags[name.replace("-", "_")] = True
        elif name == "digest-store":
            store = v
        elif name == "print-digest":
            print_digest = True
        elif name == "print-digest-only":
            print_digest = print_digest_only = True
        elif name == "from-file":
            from_file = True
        elif name in ("min-version", "max-version"):
            version_set = True
            n = _c_long(v)
            if n is None:
                _say(f"Invalid {name[:3]} version {v}")
                return 1
            if name == "min-version":
                lo = n
            else:
                hi = n
        elif name == "threads":
            n = _c_long(v)
            if n is None:
                _say(f"Invalid threads count {v}")
                return 1
            if n <= 0:
                _say(f"Invalid threads count {n}")
                return 1
            threads = n
    if not version_set:
        lo, hi = DEFAULT_MIN_VERSION, DEFAULT_MAX_VERSION
    if not rest:
        _say("No source path specified")
        mkcomposefs_usage()
    source = rest[0]
    if source == "":
        _die("Empty source path specified")
    if len(rest) > 2:
        _say("Too many arguments")
        mkcomposefs_usage()
    image = None
    if len(rest) == 1:
        if not print_digest_only:
            _say("No destination path specified")
            mkcomposefs_usage()
    elif not print_digest_only:
        image = rest[1]
    else:
        _say("Cannot specify destination path with --print-digest-only")
        mkcomposefs_usage()
    if not (0 <= lo <= MAX_VERSION and hi <= MAX_VERSION):
        _die("cannot write file: Invalid argument")  # the reference's words for a version it lacks
    hi = max(lo, hi)
    to_stdout = image == "-"
    if to_stdout and sys.stdout.isatty():
        _die("stdout is a tty.  Refusing to use it")
    target = None if print_digest_only or to_stdout else image
    options = dict(min_version=lo, max_version=hi, threads=threads)
    try:
        if from_file:
            from .cmd_build import build_from_dump

            # mkcomposefs 1.0.8 applies none of the build flags to a dump source.
            result = build_from_dump(source, target, return_image=to_stdout, use_epoch=False, skip_devices=False,
                                     skip_xattrs=False, user_xattrs=False, **options)
        else:
            from .build import ScanOptions, build_image

            if store is not None:
                os.makedirs(store, exist_ok=True)  # mkcomposefs creates the store directory
            scan = ScanOptions(no_hardlinks=True, threads=threads, **flags)
            result = build_image(source, target, scan, store=store, min_version=lo, max_version=hi,
                                 return_image=to_stdout)
    except CfsError as e:
        _die(printable(str(e)))
    except OSError as e:
        _die(printable(f"{e.filename}: {e.strerror}" if e.filename else (e.strerror or str(e))))
    out = sys.stdout.buffer
    if to_stdout:
        assert result.image is not None  # return_image=True
        out.write(result.image)
    if print_digest:
        out.write(result.digest.encode() + b"\n")
    out.flush()
    return 0


# --- composefs-info ---------------------------------------------------------------------------

INFO_COMMANDS = ("ls", "objects", "dump", "missing-objects", "measure-file")


def composefs_info_usage(exit_code: int | None = 1):
    _say(f"usage: {_argv0()} [--basedir=path] [ls|objects|dump|missing-objects|measure-file] IMAGES...")
    raise SystemExit(1 if exit_code is None else exit_code)


def measure_file(path: str) -> str:
    """composefs-info measure-file: the kernel's fs-verity measurement of a file when it has
    fs-verity, else its digest computed here (sha256, 4 KiB blocks, no salt). Unlike composefs
    1.0.8's, an empty file gets its fs-verity digest (the one `fsverity digest` prints; the
    reference prints another) and a file that is not regular is refused, not read."""
    from . import fsverity
    from .mountapi import FS_VERITY_HASH_ALG_SHA256, measure_verity

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            measured = measure_verity(fd)
            if measured.algorithm == FS_VERITY_HASH_ALG_SHA256:
                return measured.digest.hex()
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTTY):
                raise
        return fsverity.digest_file(f"/proc/self/fd/{fd}").hex()
    finally:
        os.close(fd)


def composefs_info(args: list[str]) -> int:
    from . import _native

    def usage(_):
        sys.stdout.write("Def\n")  # what composefs-info 1.0.8 prints for an unknown option
        sys.stdout.flush()
        composefs_info_usage()

    opts, rest = _getopt(args, ["basedir=", "filter="], usage, quiet=False)
    basedir = None
    filters: list[bytes] = []
    for o, v in opts:
        if o == "--basedir":
            basedir = v
        else:
            if "/" in v:
                _die(f"Filter must be a single name: {printable(v)}: Success")  # err(3) with errno 0, as 1.0.8
            filters.append(os.fsencode(v))
    if not rest:
        _say("No command specified")
        composefs_info_usage()
    command, images = rest[0], rest[1:]
    if command == "measure-file":
        if not images:
            _say("No files specified")
            composefs_info_usage()
        for path in images:
            try:
                digest = measure_file(path)
            except OSError as e:
                _die(f"Failed to open '{printable(path)}': {e.strerror}")
            sys.stdout.write(digest + "\n")
            sys.stdout.flush()
        return 0
    if command not in INFO_COMMANDS:
        _die(f"Unknown command '{printable(command)}'\n")
    if basedir is not None and not os.path.isdir(basedir):
        why = os.strerror(errno.ENOENT if not os.path.exists(basedir) else errno.ENOTDIR)
        _die(f"Can't open basedir `{printable(basedir)}`\n: {why}")
    if not images:
        _say("No image path specified")
        composefs_info_usage()
    flt = filters or None
    out = sys.stdout.buffer
    objects: set[bytes] = set()
    for img in images:
        try:
            if command in ("ls", "dump"):
                out.flush()
                if command == "ls":
                    _native.image_ls(img, out.fileno(), filter=flt)
                else:
                    _native.image_to_dump(img, out.fileno(), opaque=True, filter=flt)
            else:
                objects.update(_native.image_objects(img, filter=flt))
        except _native.FormatError as e:
            _die(f"Failed to load '{printable(img)}': {printable(str(e))}")
        except OSError as e:
            _die(f"Failed to open '{printable(img)}': {e.strerror}")
    if command in ("objects", "missing-objects"):
        names = sorted(objects)
        if command == "missing-objects" and basedir is not None:
            base = os.fsencode(basedir)
            names = [o for o in names if not os.path.exists(os.path.join(base, o.lstrip(b"/")))]
        out.write(b"".join(o + b"\n" for o in names))
    out.flush()
    return 0


def _run(fn) -> None:
    try:
        code = fn(sys.argv[1:])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BrokenPipeError:
        code = 1
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        code = code or 1
    os._exit(code or 0)


def mkcomposefs_main() -> None:
    """Console entry point ``mkcomposefs``."""
    _run(mkcomposefs)


def composefs_info_main() -> None:
    """Console entry point ``composefs-info``."""
    _run(composefs_info)
