#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
# The main job shown by `make demo`. Runs with .venv/bin first on PATH.
set -euo pipefail
cfsctl --version

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A small sample tree.
mkdir -p "$work/tree/etc" "$work/tree/usr/bin" "$work/tree/usr/share/doc"
printf 'hello, composefs\n' > "$work/tree/etc/motd"
: > "$work/tree/etc/empty"
head -c 100000 /dev/urandom > "$work/tree/usr/bin/tool"
head -c $((9 * 1024 * 1024 + 7)) /dev/urandom > "$work/tree/usr/share/doc/big.bin"   # parallel path
ln -s ../etc/motd "$work/tree/usr/motd-link"

cd "$work/tree"
files=$(find . -type f | sort)

echo
echo "== cfsctl digest (fs-verity sha256, 4 KiB blocks: the composefs object names)"
cfsctl digest $files
echo
echo "== fsverity digest (fsverity-utils) on the same files, for comparison"
fsverity digest $files
echo
if diff <(cfsctl digest $files) <(fsverity digest $files) >/dev/null; then
    echo "agreement: all $(echo "$files" | wc -l) digests identical"
else
    echo "MISMATCH between cfsctl digest and fsverity digest" >&2
    exit 1
fi

echo
echo "== cfsctl build: the tree becomes an image plus a content-addressed object store"
cfsctl build "$work/tree" "$work/sample.cfs" --digest-store "$work/objects" --print-digest
echo "objects: $(find "$work/objects" -type f | wc -l) files in $work/objects (XX/<62 hex>, named by fs-verity digest)"
echo
echo "== cfsctl info ls sample.cfs"
cfsctl info ls "$work/sample.cfs"
echo
echo "== a repository: two images sharing one store"
cfsctl init --repo "$work/repo" >/dev/null
cfsctl import --repo "$work/repo" "$work/tree" --name sample >/dev/null
echo "extra file" > "$work/tree/etc/extra"
cfsctl import --repo "$work/repo" "$work/tree" --name sample-v2 >/dev/null
cfsctl images --repo "$work/repo"

if [ "$(id -u)" = 0 ] && grep -qw overlay /proc/filesystems && grep -qw erofs /proc/filesystems; then
    echo
    echo "== cfsctl mount sample-v2 (root: erofs + overlayfs, or the composefs module when loaded)"
    mkdir -p "$work/mnt"
    cfsctl mount --repo "$work/repo" sample-v2 "$work/mnt"
    trap 'umount -l "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
    echo "mounted; /etc/motd reads: $(cat "$work/mnt/etc/motd")"
    if cmp -s "$work/mnt/usr/share/doc/big.bin" "$work/tree/usr/share/doc/big.bin"; then
        echo "big.bin through the mount equals the source"
    fi
    cfsctl umount "$work/mnt"
    echo "unmounted"
fi
