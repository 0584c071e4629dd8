# SPDX-License-Identifier: MIT OR Apache-2.0
"""Man pages and shell completion scripts, generated from one source.

The pages of ``cfsctl`` and each of its sub-commands are made from the click commands themselves
(usage, help text, options: what ``--help`` prints), ``mkcomposefs(1)`` and ``composefs-info(1)``
from the option tables of ``dropin.py`` (what their usage messages print), each plus the short
text of its entry in ``EXTRA`` below; ``mount.composefs(8)`` is that text alone. The files are
kept in the repository under ``pkgdata/data/share`` (installed with the package into the
environment's ``share/``, so ``man cfsctl`` finds them through the virtualenv's ``share/man``):
``python -m composefs.manpages [DIR]`` writes them (``make man``), and a test fails when the
committed copies differ from what the commands say now.
"""

from __future__ import annotations

import os
import sys

import click

from . import __version__

DATE = "2026"
SOURCE = f"composefs {__version__}"

EXTRA: dict[str, dict[str, str]] = {
    "cfsctl": {
        "FILES": "/var/lib/composefs\n  The repository of root (objects/, images/, refs/, meta.json).\n"
                 "~/.local/share/composefs\n  The repository of other users.",
        "ENVIRONMENT": "CFS_REPO\n  The repository to use when --repo is given neither before nor after the command.\n"
                       "CFS_NO_AVX512, CFS_NO_SHA_NI\n  Set to 1: do not use these CPU features for SHA-256.",
        "JSON": "With --json, a command prints one JSON document on standard output and, when it fails, "
                "{\"error\": TEXT} on standard error; the fields are listed in docs/json.md of the source.",
        "EXIT STATUS": "0 on success, 1 on an error (the message is one line: cfsctl: error: WHAT: WHY), "
                       "2 on a usage error.",
        "SEE ALSO": "mkcomposefs(1), composefs-info(1), mount.composefs(8), mount(8), fsverity(1)",
    },
    "mkcomposefs": {
        "DESCRIPTION": "Builds the composefs image IMAGE from SOURCE, a directory (read recursively) or, with "
                       "--from-file, a composefs-dump(5) file (- for standard input). Regular files larger "
                       "than 64 bytes become objects named by their fs-verity digest, copied into "
                       "--digest-store when given; smaller ones are stored in the image. IMAGE - writes "
                       "the image to standard output.\n\n"
                       "This is the mkcomposefs of the composefs toolchain (cfsctl): it accepts the command "
                       "line of composefs 1.0.8's mkcomposefs and writes the same image bytes (every name "
                       "of a hardlinked file gets its own inode, as mkcomposefs 1.0 does; cfsctl build "
                       "--hardlinks keeps them). Error messages are worded differently; exit statuses are "
                       "the same.",
        "SEE ALSO": "composefs-info(1), cfsctl(1), cfsctl-build(1), mount.composefs(8)",
    },
    "composefs-info": {
        "DESCRIPTION": "Prints what composefs images hold. COMMAND is one of:\n"
                       "ls\n  every path, with '/' after directories, '-> TARGET' after symlinks and "
                       "'@ OBJECT' after files backed by an object.\n"
                       "objects\n  the backing objects the images refer to, sorted, each once.\n"
                       "missing-objects\n  those not present in --basedir.\n"
                       "dump\n  the whole tree in composefs-dump(5) format (input for mkcomposefs --from-file).\n"
                       "measure-file\n  the fs-verity digest of each FILE (the kernel's measurement when "
                       "the file has fs-verity, else computed).\n\n"
                       "This is the composefs-info of the composefs toolchain (cfsctl): the command line and "
                       "output of composefs 1.0.8's composefs-info.",
        "SEE ALSO": "mkcomposefs(1), cfsctl-info(1)",
    },
    "mount.composefs": {
        "NAME": "mount.composefs - mount a composefs image (the mount(8) helper)",
        "SYNOPSIS": "mount -t composefs IMAGE MOUNTPOINT -o basedir=DIR[:DIR...][,OPTIONS]\n"
                    "mount.composefs IMAGE MOUNTPOINT [-s] [-o OPTIONS]",
        "DESCRIPTION": "mount(8) runs this helper for filesystems of type composefs, so that fstab lines and "
                       "mount -t composefs work. With the composefs kernel module loaded the image is "
                       "mounted by it; otherwise it is mounted as EROFS under overlayfs, with the object "
                       "directories as data-only layers. cfsctl install-helper links it into /sbin.",
        "OPTIONS": "basedir=DIR[:DIR...]\n  Object directories holding the file contents, searched in order.\n"
                   "digest=HEX\n  The image's fs-verity sha256 digest; the mount fails unless it matches, "
                   "and every file is verified.\n"
                   "verity\n  Every file must have fs-verity with the digest its entry records.\n"
                   "tryverity\n  Verify files where the filesystem supports fs-verity.\n"
                   "verity_check=0|1|2\n  0: no checks; 1: files recording a digest are checked; 2: every "
                   "file must record one and match.\n"
                   "idmap=PATH\n  Map owners through the user namespace of PATH (/proc/PID/ns/user).\n"
                   "upperdir=DIR, workdir=DIR\n  A writable overlay on top of the image.\n"
                   "backend=auto|kernel|overlay\n  Which kernel path mounts the image.\n"
                   "ro, rw, nosuid, nodev, noexec, noatime\n  The usual mount attributes.\n"
                   "-s\n  Sloppy: ignore options the helper does not know; an option it cannot honour that "
                   "concerns verification is still an error.",
        "EXIT STATUS": "As mount(8): 0 success, 1 incorrect invocation or permissions, 32 mount failure.",
        "SEE ALSO": "mount(8), cfsctl-mount(1), mkcomposefs(1)",
    },
}


def _roff(text: str) -> str:
    out = []
    for line in text.replace("\\", "\\e").splitlines():
        line = line.replace("-", "\\-")
        if line.startswith((".", "'")):
            line = "\\&" + line
        out.append(line)
    return "\n".join(out)


def _section(name: str, body: str) -> str:
    """A section; lines 'TERM' followed by '  text' lines become tagged paragraphs."""
    lines = body.splitlines()
    out = [f".SH {name}"]
    if name == "SYNOPSIS":  # one invocation per line
        return out[0] + "\n" + "\n.br\n".join(_roff(line) for line in lines)
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and lines[i + 1].startswith("  ") and not line.startswith("  "):
            out.append(".TP\n.B " + _roff(line))
            i += 1
            while i < len(lines) and lines[i].startswith("  "):
                out.append(_roff(lines[i].strip()))
                i += 1
            continue
        out.append(".PP" if not line.strip() else _roff(line))
        i += 1
    return "\n".join(out)


def _page(title: str, section: int, sections: list[tuple[str, str]]) -> str:
    head = f'.TH "{title.upper()}" "{section}" "{DATE}" "{SOURCE}" "composefs"\n'
    return head + "\n".join(_section(n, b) for n, b in sections if b) + "\n"


def _help_text(cmd: click.Command) -> str:
    text = (cmd.help or "").replace("\b\n", "")
    return "\n".join(line.strip() for line in text.splitlines()).strip()


def _options(ctx: click.Context, cmd: click.Command) -> str:
    rows = []
    for p in cmd.get_params(ctx):
        rec = p.get_help_record(ctx)
        if rec is None:
            continue
        opts, helptext = rec
        rows.append(f"{opts}\n  {helptext}")
    return "\n".join(rows)


def _walk(cmd: click.Command, ctx: click.Context, path: list[str]):
    yield cmd, ctx, path
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            yield from _walk(sub, click.Context(sub, info_name=name, parent=ctx), path + [name])


def cfsctl_pages() -> dict[str, str]:
    from .cli import cli

    pages = {}
    root = click.Context(cli, info_name="cfsctl")
    for cmd, ctx, path in _walk(cli, root, []):
        title = "-".join(["cfsctl", *path])
        summary = cmd.get_short_help_str(200) if path else "build, inspect and mount composefs images"
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        sections = [("NAME", f"{title} - {summary}"),
                    ("SYNOPSIS", f"{ctx.command_path} {usage}"),
                    ("DESCRIPTION", _help_text(cmd))]
        if isinstance(cmd, click.Group):
            subs = []
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    subs.append(f"{name}\n  {sub.get_short_help_str(200)} See {title}-{name}(1).")
            sections.append(("COMMANDS", "\n".join(subs)))
        sections.append(("OPTIONS", _options(ctx, cmd)))
        extra = EXTRA.get(title, {})
        sections += list(extra.items())
        if "SEE ALSO" not in extra:
            sections.append(("SEE ALSO", "cfsctl(1)" if path else ""))
        pages[f"man1/{title}.1"] = _page(title, 1, sections)
    return pages


def dropin_pages() -> dict[str, str]:
    from .dropin import INFO_OPTIONS, MKCOMPOSEFS_OPTIONS

    def opts(table):
        return "\n".join(f"{spec}\n  {helptext.format(min=0, max=1, cpus='the number of CPUs')}"
                         for spec, helptext in table)

    mk, info, mnt = EXTRA["mkcomposefs"], EXTRA["composefs-info"], EXTRA["mount.composefs"]
    return {
        "man1/mkcomposefs.1": _page("mkcomposefs", 1, [
            ("NAME", "mkcomposefs - create a composefs image"),
            ("SYNOPSIS", "mkcomposefs [OPTIONS] SOURCE IMAGE\nmkcomposefs [OPTIONS] --print-digest-only SOURCE"),
            ("DESCRIPTION", mk["DESCRIPTION"]), ("OPTIONS", opts(MKCOMPOSEFS_OPTIONS)),
            ("SEE ALSO", mk["SEE ALSO"])]),
        "man1/composefs-info.1": _page("composefs-info", 1, [
            ("NAME", "composefs-info - print what composefs images hold"),
            ("SYNOPSIS", "composefs-info [--basedir=DIR] [--filter=NAME...] ls|objects|missing-objects|dump IMAGE...\n"
                         "composefs-info measure-file FILE..."),
            ("DESCRIPTION", info["DESCRIPTION"]), ("OPTIONS", opts(INFO_OPTIONS)),
            ("SEE ALSO", info["SEE ALSO"])]),
        "man8/mount.composefs.8": _page("mount.composefs", 8, [
            (k, mnt[k]) for k in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "SEE ALSO")]),
    }


def completion_scripts() -> dict[str, str]:
    """click's own completion scripts for bash and zsh (they call back into cfsctl)."""
    from click.shell_completion import get_completion_class

    from .cli import cli

    out = {}
    for shell, path in (("bash", "bash-completion/completions/cfsctl"), ("zsh", "zsh/site-functions/_cfsctl")):
        comp = get_completion_class(shell)(cli, {}, "cfsctl", "_CFSCTL_COMPLETE")
        out[path] = comp.source()
    return out


def generated() -> dict[str, str]:
    """Every generated file, by its path under share/."""
    return {**{f"man/{k}": v for k, v in {**cfsctl_pages(), **dropin_pages()}.items()}, **completion_scripts()}


DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "pkgdata", "data", "share")


def main(argv: list[str] | None = None) -> None:
    target = (argv if argv is not None else sys.argv[1:] or [DEFAULT_DIR])[0]
    files = generated()
    for rel, text in files.items():
        path = os.path.join(target, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    print(f"wrote {len(files)} files under {target}")


if __name__ == "__main__":
    main()
