#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
# Make the Debian root that qemu/boot.py boots from a composefs image, once per package list.
#
#   qemu/boot-rootfs.sh MIRROR SECURITY_MIRROR DEST
#
# debootstrap (minbase + systemd + initramfs-tools + fsverity), then Debian's 6.12 kernel from
# bookworm-security inside a chroot (debootstrap takes one suite only). What a virtio QEMU machine
# never uses is left out — documentation, man pages, translations, and the kernel's drivers for
# sound, graphics, media, wireless, InfiniBand and USB — because every file of the root is
# imported, hashed and fs-verity-enabled under emulation by each run of the test. The root is made in a
# temporary directory beside DEST and renamed to DEST when complete: a killed run leaves no half
# root under DEST's name. The caller keys DEST by this script's package list.
set -euo pipefail
MIRROR=${1:?usage: boot-rootfs.sh MIRROR SECURITY_MIRROR DEST}
SECMIRROR=${2:?usage}
DEST=${3:?usage}
# xz-utils (Priority: standard, in every standard install): the composefs hook unpacks its modules
INCLUDE=systemd,systemd-sysv,udev,kmod,initramfs-tools,fsverity,util-linux,xz-utils
KPKG=linux-image-6.12-amd64

TMP=$(dirname "$DEST")/.tmp-$(basename "$DEST")-$$
rm -rf "$TMP"
cleanup() {
    umount "$TMP/proc" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
debootstrap --variant=minbase --include=$INCLUDE bookworm "$TMP" "$MIRROR"
cat >"$TMP/etc/apt/sources.list" <<SRC
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECMIRROR bookworm-security main
SRC
mount -t proc proc "$TMP/proc"
# The initramfs is built later, with the composefs hook; none is needed now.
echo update_initramfs=no >"$TMP/etc/initramfs-tools/update-initramfs.conf.tmp"
mv "$TMP/etc/initramfs-tools/update-initramfs.conf" "$TMP/etc/initramfs-tools/update-initramfs.conf.orig"
mv "$TMP/etc/initramfs-tools/update-initramfs.conf.tmp" "$TMP/etc/initramfs-tools/update-initramfs.conf"
chroot "$TMP" apt-get -q update
DEBIAN_FRONTEND=noninteractive chroot "$TMP" apt-get -y -q install --no-install-recommends $KPKG
mv "$TMP/etc/initramfs-tools/update-initramfs.conf.orig" "$TMP/etc/initramfs-tools/update-initramfs.conf"
chroot "$TMP" apt-get clean
# dpkg leaves these out of anything installed later (the path-exclude file stays in the root);
# what debootstrap already unpacked goes now
cat >"$TMP/etc/dpkg/dpkg.cfg.d/cfs-boot-small" <<'EXC'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
EXC
find "$TMP/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$TMP/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$TMP/usr/share/man/"* "$TMP/usr/share/info/"* "$TMP/usr/share/locale/"*
for kd in "$TMP"/lib/modules/*/; do
    kver=$(basename "$kd")
    rm -rf "$kd/kernel/sound" "$kd/kernel/drivers/"{gpu,media,net/wireless,infiniband,usb,iio}
    chroot "$TMP" depmod "$kver"
done
rm -rf "$TMP/var/lib/apt/lists/"*
umount "$TMP/proc"
mv "$TMP" "$DEST"
trap - EXIT
