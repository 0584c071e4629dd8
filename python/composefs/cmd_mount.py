# SPDX-License-Identifier: MIT OR Apache-2.0
"""``cfsctl mount`` and ``cfsctl umount``."""

from __future__ import annotations

import json
import os

import click

from .globalopts import GlobalOption
from .errors import CfsError
from .mount import BACKENDS, MOUNT_APIS, MountError, MountRequest, ObjectDir, mount_image, parse_options, unmount


def is_image_path(image: str, basedirs: list) -> bool:
    """The one rule for IMAGE: a path when it holds a '/' or object directories are given
    (--basedir, -o basedir=); else an image name, digest or digest prefix in the repository."""
    return "/" in image or bool(basedirs)


def _complete_image(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Shell completion: the repository's image names that match, else files (click's bash script
    offers one or the other, not both)."""
    from click.shell_completion import CompletionItem

    from .cmd_repo import complete_names

    return complete_names(ctx, param, incomplete) or [CompletionItem(incomplete, type="file")]


@click.command("mount")
@click.argument("image", metavar="IMAGE|NAME|DIGEST", shell_complete=_complete_image)
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--basedir", "basedirs", multiple=True, metavar="DIR",
              help="Object directory holding the file contents (objects/XX/...); repeat to search "
                   "several, in order. Needed for an image file; for a repository image the "
                   "repository's objects/ is used.")
@click.option("--repo", "repo_path", cls=GlobalOption, metavar="PATH", envvar="CFS_REPO", default=None,
              help="Repository to look NAME|DIGEST up in (default as for 'cfsctl init').")
@click.option("--digest", metavar="HEX",
              help="The image's expected fs-verity sha256 digest; checked before mounting. "
                   "Implies --verity-check 2.")
@click.option("--verity-check", type=click.IntRange(0, 2), default=None,
              help="0: no checks (default); 1: files whose image entry records a digest must have "
                   "fs-verity with exactly that digest; 2: every file must record and match one.")
@click.option("--backend", type=click.Choice(BACKENDS + ("fuse",)), default="auto", show_default=True,
              help="kernel: the composefs module; overlay: EROFS + overlayfs on a stock kernel; "
                   "fuse: served in user space, no privileges needed; auto: fuse for a user who is "
                   "not root, else the module when /proc/filesystems lists composefs, else overlay.")
@click.option("--fuse", "use_fuse", is_flag=True, help="Same as --backend fuse.")
@click.option("--foreground", is_flag=True, help="With fuse: serve in this process until unmounted.")
@click.option("--upperdir", metavar="DIR", help="Writable overlay upper directory (with --workdir).")
@click.option("--workdir", metavar="DIR", help="overlayfs work directory, on the upperdir's filesystem.")
@click.option("-o", "--options", "options", metavar="OPTS", multiple=True,
              help="mount.composefs options, comma separated (backslash escapes): basedir=DIR[:DIR], "
                   "digest=HEX, verity, tryverity, verity_check=N, idmap=PATH, upperdir=DIR, "
                   "workdir=DIR, backend=..., ro, rw, nosuid, nodev, noexec, noatime, ...")
@click.option("--remote", metavar="URL",
              help="Fetch objects missing from every basedir on first open from the repository at "
                   "URL (checked as 'cfsctl pull' checks them) into the first basedir: with the kernel "
                   "module by a 'cfsctl fetchd' daemon that exits when the mount goes, with FUSE by "
                   "the FUSE daemon itself.")
@click.option("--fetch-timeout", type=click.IntRange(1, 3600), default=None, metavar="SECONDS",
              help="With --remote: an open waiting longer for its object fails with EIO (default 30).")
@click.option("--tls-verify", type=click.BOOL, default=True, show_default=True, metavar="BOOL",
              help="With --remote: check HTTPS certificates.")
@click.option("--readahead", type=click.IntRange(0, 4096), default=None, metavar="N",
              help="With --remote and the kernel module: after a miss, also fetch up to the next N "
                   "objects in the order 'find' meets the files (at most 16 MiB ahead; a miss never waits "
                   "behind them); 0: only what is opened (default 64).")
@click.option("--json", "as_json", is_flag=True, help="Print what was mounted as JSON.")
@click.option("--erofs-source", type=click.Choice(["auto", "file", "loop"]), default="auto", hidden=True)
@click.option("--mount-api", type=click.Choice(MOUNT_APIS), default="auto", hidden=True)
def mount_cmd(image, mountpoint, basedirs, repo_path, digest, verity_check, backend, use_fuse, foreground, upperdir,
              workdir, options, remote, fetch_timeout, tls_verify, readahead, as_json, erofs_source, mount_api):
    """Mount the composefs IMAGE on MOUNTPOINT, file contents served from --basedir.

    \b
    Example:
      cfsctl mount app.cfs /mnt/app --basedir /var/lib/composefs/objects
      cfsctl umount /mnt/app

    IMAGE is an image file when it holds a '/' (write ./app.cfs for a file here) or when object
    directories are given (--basedir, -o basedir=); anything else is an image name or digest (or
    unique digest prefix) in the repository, whose digest is then verified before mounting (by
    fs-verity when the image file has it, else computed in software).

    -o takes what mount.composefs takes (the same Rust code parses it); the flags above add to
    it, and win where both say something.

    The kernel paths need root; --fuse (the default for other users) needs none: the image is
    checked and served by a daemon in user space, objects verified on first open at the
    --verity-check level (default 1 with FUSE), and 'cfsctl umount' (or fusermount3 -u)
    unmounts it. On the kernel paths only the final mount is left behind: on a stock kernel the image's EROFS mount is
    detached and held by the overlay, and a loop device (only used on kernels that cannot mount
    EROFS from a file) clears itself when the mount goes.
    """
    o = parse_options(options)
    basedirs = list(basedirs) + o.basedirs
    digest = digest or o.digest
    verity_check = verity_check if verity_check is not None else o.verity_check
    upperdir = upperdir or o.upperdir or None
    workdir = workdir or o.workdir or None
    if backend == "auto":
        backend = o.backend
    attrs = list(o.attrs)
    if o.readonly is not None:
        attrs.append("ro" if o.readonly else "rw")
    from_repo = not is_image_path(image, basedirs)
    if from_repo:
        from .repository import Repository, default_path, verified_image_for_mount

        try:
            repo = Repository.open(repo_path or default_path())
            with repo.locked():
                image, repo_digest = verified_image_for_mount(repo, image)
        except CfsError as e:
            if os.path.exists(image):
                raise MountError(f"{e}; IMAGE without a '/' and without --basedir is looked up in the "
                                 f"repository: for the file here write ./{image} and give --basedir",
                                 image) from None
            raise
        digest = digest or repo_digest
        basedirs.append(repo.objects)
    elif not basedirs:
        if not os.path.exists(image):
            raise MountError("image does not exist", image)
        raise MountError("an image file needs --basedir or -o basedir= (the object directory)", image)
    if remote and backend == "overlay":
        raise MountError("--remote needs the composefs kernel module or FUSE (--backend kernel|fuse)")
    if readahead is not None and not remote:
        raise MountError("--readahead goes with --remote")
    if use_fuse or backend == "fuse" or (backend == "auto" and os.geteuid() != 0):
        from .fusemount import mount_fuse

        if upperdir or workdir:
            raise MountError("a FUSE mount is read-only; --upperdir needs a kernel backend")
        if o.idmap:
            raise MountError("idmap= needs a kernel backend (a FUSE mount cannot be idmapped)")
        if readahead:
            raise MountError("--readahead needs the kernel module (FUSE fetches only what is opened)")
        if verity_check is None and (o.require_verity or o.try_verity):
            verity_check = 2
        result = mount_fuse(image, mountpoint, basedirs, digest=digest, verity_check=verity_check,
                            foreground=foreground, remote=remote, tls_verify=tls_verify)
        if as_json:
            click.echo(json.dumps(result, indent=2))
        return
    req = MountRequest(image=image, mountpoint=mountpoint, basedirs=[ObjectDir(b) for b in basedirs],
                       digest=digest, verity_check=verity_check, backend=backend, upperdir=upperdir,
                       workdir=workdir, attrs=attrs, erofs_source=erofs_source, mount_api=mount_api,
                       image_nofollow=from_repo, require_verity=o.require_verity, try_verity=o.try_verity,
                       idmap=o.idmap or None, fetch_timeout=fetch_timeout)
    if remote:
        from .fetchd import READAHEAD, start

        fetcher = start(remote, os.path.abspath(image), os.path.abspath(basedirs[0]), tls_verify=tls_verify,
                        readahead=READAHEAD if readahead is None else readahead)
        req.fetch_fd = fetcher.fd
        try:
            result = mount_image(req)
        except BaseException:
            fetcher.abort()
            raise
        fetcher.release()  # the daemon now holds the only copy; it exits when the mount goes
    else:
        result = mount_image(req)
    if as_json:
        out = result.to_json()
        if remote:
            out.update(remote=remote, fetchd_pid=fetcher.proc.pid)
        click.echo(json.dumps(out, indent=2))


@click.command("umount")
# Not click.Path: it stats the path, and a mount point's stat waits for a FUSE daemon that may be
# stopped; unmount() finds the mount in mountinfo without touching it.
@click.argument("mountpoint")
@click.option("-l", "--lazy", is_flag=True, help="Detach now, clean up when no longer busy (MNT_DETACH).")
@click.option("--json", "as_json", is_flag=True, help="Print what was unmounted as JSON.")
def umount_cmd(mountpoint, lazy, as_json):
    """Unmount the composefs mount on MOUNTPOINT.

    Refuses mounts that are not composefs mounts. Everything the mount created (the overlay, the
    detached EROFS layer and any loop device) goes with it. A FUSE mount is unmounted without
    waiting on its daemon, which is killed (SIGKILL) if it is stopped or has not exited 3 seconds
    later; --lazy detaches only a busy mount and leaves its daemon serving what is still open.
    """
    info = unmount(mountpoint, lazy=lazy)
    if as_json:
        click.echo(json.dumps(info, indent=2))


def register(cli: click.Group) -> None:
    cli.add_command(mount_cmd)
    cli.add_command(umount_cmd)


__all__ = ["mount_cmd", "umount_cmd", "register", "MountError"]
