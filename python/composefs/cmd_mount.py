"""``cfsctl mount`` and ``cfsctl umount``."""

from __future__ import annotations

import json
import os

import click

from .mount import BACKENDS, MOUNT_APIS, MountError, MountRequest, ObjectDir, mount_image, unmount


def parse_attr_list(text: str | None) -> list[str]:
    if not text:
        return []
    return [a for a in (x.strip() for x in text.split(",")) if a]


@click.command("mount")
@click.argument("image", metavar="IMAGE|NAME|DIGEST")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--basedir", "basedirs", multiple=True, metavar="DIR",
              help="Object directory holding the file contents (objects/XX/...); repeat to search "
                   "several, in order. Needed for an image file; for a repository image the "
                   "repository's objects/ is used.")
@click.option("--repo", "repo_path", metavar="PATH", envvar="CFS_REPO", default=None,
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
@click.option("-o", "--options", "attrs", metavar="OPTS",
              help="Mount attributes, comma separated: ro, nosuid, nodev, noexec, noatime, ...")
@click.option("--remote", metavar="URL",
              help="Kernel module only: fetch objects missing from every basedir on first open from "
                   "the repository at URL (as 'cfsctl pull' does), by a 'cfsctl fetchd' daemon that "
                   "stores them in the first basedir and exits when the mount goes.")
@click.option("--fetch-timeout", type=click.IntRange(1, 3600), default=None, metavar="SECONDS",
              help="With --remote: an open waiting longer for its object fails with EIO (default 30).")
@click.option("--tls-verify", type=click.BOOL, default=True, show_default=True, metavar="BOOL",
              help="With --remote: check HTTPS certificates.")
@click.option("--json", "as_json", is_flag=True, help="Print what was mounted as JSON.")
@click.option("--erofs-source", type=click.Choice(["auto", "file", "loop"]), default="auto", hidden=True)
@click.option("--mount-api", type=click.Choice(MOUNT_APIS), default="auto", hidden=True)
def mount_cmd(image, mountpoint, basedirs, repo_path, digest, verity_check, backend, use_fuse, foreground, upperdir,
              workdir, attrs, remote, fetch_timeout, tls_verify, as_json, erofs_source, mount_api):
    """Mount the composefs IMAGE on MOUNTPOINT, file contents served from --basedir.

    \b
    Example:
      cfsctl mount app.cfs /mnt/app --basedir /var/lib/composefs/objects
      cfsctl umount /mnt/app

    IMAGE is an image file when that path exists (or --basedir is given, or it holds a '/');
    anything else is an image name or digest
    (or unique digest prefix) in the repository, whose digest is then verified before mounting
    (by fs-verity when the image file has it, else computed in software).

    The kernel paths need root; --fuse (the default for other users) needs none: the image is
    checked and served by a daemon in user space, objects verified on first open at the
    --verity-check level (default 1 with FUSE), and 'cfsctl umount' (or fusermount3 -u)
    unmounts it. On the kernel paths only the final mount is left behind: on a stock kernel the image's EROFS mount is
    detached and held by the overlay, and a loop device (only used on kernels that cannot mount
    EROFS from a file) clears itself when the mount goes.
    """
    basedirs = list(basedirs)
    from_repo = not os.path.exists(image) and not basedirs and "/" not in image
    if from_repo:
        from .repository import Repository, default_path, verified_image_for_mount

        repo = Repository.open(repo_path or default_path())
        with repo.locked():
            image, repo_digest = verified_image_for_mount(repo, image)
        digest = digest or repo_digest
        basedirs.append(repo.objects)
    elif not basedirs:
        if not os.path.exists(image):
            raise MountError("image does not exist", image)
        raise MountError("an image file needs --basedir (the object directory)", image)
    if remote and (use_fuse or backend in ("fuse", "overlay")):
        raise MountError("--remote needs the composefs kernel module (--backend kernel)")
    if use_fuse or backend == "fuse" or (backend == "auto" and os.geteuid() != 0):
        from .fusemount import mount_fuse

        if upperdir or workdir:
            raise MountError("a FUSE mount is read-only; --upperdir needs a kernel backend")
        result = mount_fuse(image, mountpoint, basedirs, digest=digest, verity_check=verity_check,
                            foreground=foreground)
        if as_json:
            click.echo(json.dumps(result, indent=2))
        return
    req = MountRequest(image=image, mountpoint=mountpoint, basedirs=[ObjectDir(b) for b in basedirs],
                       digest=digest, verity_check=verity_check, backend=backend, upperdir=upperdir,
                       workdir=workdir, attrs=parse_attr_list(attrs), erofs_source=erofs_source,
                       mount_api=mount_api, image_nofollow=from_repo, fetch_timeout=fetch_timeout)
    if remote:
        from .fetchd import start

        fetcher = start(remote, os.path.abspath(image), os.path.abspath(basedirs[0]), tls_verify=tls_verify)
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
@click.argument("mountpoint", type=click.Path())
@click.option("-l", "--lazy", is_flag=True, help="Detach now, clean up when no longer busy (MNT_DETACH).")
@click.option("--json", "as_json", is_flag=True, help="Print what was unmounted as JSON.")
def umount_cmd(mountpoint, lazy, as_json):
    """Unmount the composefs mount on MOUNTPOINT.

    Refuses mounts that are not composefs mounts. Everything the mount created (the overlay, the
    detached EROFS layer and any loop device) goes with it.
    """
    info = unmount(mountpoint, lazy=lazy)
    if as_json:
        click.echo(json.dumps(info, indent=2))


def register(cli: click.Group) -> None:
    cli.add_command(mount_cmd)
    cli.add_command(umount_cmd)


__all__ = ["mount_cmd", "umount_cmd", "register", "MountError"]
