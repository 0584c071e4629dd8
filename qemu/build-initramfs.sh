#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
# Build the busybox initramfs for the QEMU guest.
#
#   qemu/build-initramfs.sh KVER OUT.cpio [EXTRA.ko ...]
#
# Contents: a static busybox, /init (qemu/guest-init.sh), and the Debian modules of kernel KVER the
# guest needs (ext4 + deps, virtio_blk, erofs, overlay, 9p + 9pnet_virtio, loop, pvpanic, fuse), decompressed
# (busybox insmod cannot read .ko.xz) and listed in dependency order in /modules.list.
# EXTRA.ko (our own modules) are NOT copied: the guest loads them from the host's root over 9p.
# Only the Debian modules they depend on (modinfo -F depends) are added here.
set -euo pipefail

KVER=${1:?usage: build-initramfs.sh KVER OUT.cpio [EXTRA.ko ...]}
OUT=${2:?usage: build-initramfs.sh KVER OUT.cpio [EXTRA.ko ...]}
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)

# fuse (the FUSE backend's guest tests) is built into Debian's 6.12 (`builtin fuse`, nothing to
# copy); it is listed so that a kernel building it as a module gets it too.
WANT=(pvpanic_mmio pvpanic_pci virtio_blk ext4 loop erofs overlay 9pnet_virtio 9p veth sch_netem sch_tbf fuse)
for ko in "$@"; do
    deps=$(modinfo -F depends "$ko" 2>/dev/null || true)
    IFS=, read -r -a extra <<<"$deps"
    WANT+=("${extra[@]}")
done

STAGE=$(mktemp -d "${OUT}.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,dev,proc,sys,host,out,run,tmp,lib/modules}
# The kernel opens /dev/console for init before anything is mounted (init re-opens it after
# mounting devtmpfs, for builds where mknod is not allowed).
mknod -m 600 "$STAGE/dev/console" c 5 1 2>/dev/null || true
cp /bin/busybox "$STAGE/bin/busybox"
ln -s busybox "$STAGE/bin/sh"
install -m 0755 "$HERE/guest-init.sh" "$STAGE/init"

declare -A seen=()
: >"$STAGE/modules.list"
for m in "${WANT[@]}"; do
    [ -n "$m" ] || continue
    # Lines are "insmod /path/x.ko.xz [params]" or "builtin x".
    while read -r verb path _; do
        [ "$verb" = insmod ] || continue
        name=$(basename "$path")
        name=${name%.xz}; name=${name%.zst}; name=${name%.gz}
        [ -z "${seen[$name]:-}" ] || continue
        seen[$name]=1
        case "$path" in
            *.xz)  xz -dc "$path" >"$STAGE/lib/modules/$name" ;;
            *.zst) zstd -qdc "$path" >"$STAGE/lib/modules/$name" ;;
            *.gz)  gzip -dc "$path" >"$STAGE/lib/modules/$name" ;;
            *)     cp "$path" "$STAGE/lib/modules/$name" ;;
        esac
        echo "$name" >>"$STAGE/modules.list"
    done < <(modprobe -S "$KVER" --show-depends "$m")
done

(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo ">> initramfs $OUT: $(wc -l <"$STAGE/modules.list") modules, $(du -k "$OUT" | cut -f1) KiB"
