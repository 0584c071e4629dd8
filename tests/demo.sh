#!/usr/bin/env bash
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
