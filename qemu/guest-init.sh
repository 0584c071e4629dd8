#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
# /init of the QEMU guest (busybox). Driven by qemu/run.py, which shares:
#   9p tag "host": the host's root, read-only  -> /host (the chroot the tests run in)
#   9p tag "out":  the run dir, read-write      -> /out, seen in the chroot as /run/cfs/out
#                  (holds job.env and job.sh written by run.py; we write dmesg.txt there)
#   /dev/vda:      ext4 with -O verity          -> /run/cfs/verity in the chroot (CFS_VERITY_DIR)
# Ends with a marker line on the console that run.py checks:
#   CFS-QEMU-RESULT nonce=<nonce> pytest=<rc> modules=<ok|fail> setup=<ok|fail>
export PATH=/bin
/bin/busybox --install -s /bin 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

say() { echo "cfs-guest: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
finish() {
    # $1 = pytest rc, $2 = modules status, $3 = setup status
    dmesg >/out/dmesg.txt 2>/dev/null
    say "finished at uptime $(uptime_s)s"
    echo "CFS-QEMU-RESULT nonce=${CFS_NONCE:-none} pytest=$1 modules=$2 setup=$3"
    sync
    umount /host/run/cfs/verity 2>/dev/null
    umount /host/run/cfs/out /out 2>/dev/null
    poweroff -f
    sleep 10
    echo o >/proc/sysrq-trigger
    sleep 1000
}
fatal() { say "FATAL: $*"; finish 255 "${mods:-unknown}" fail; }

say "init at uptime $(uptime_s)s"
while read -r m; do
    insmod "/lib/modules/$m" 2>/dev/null || say "warning: insmod $m failed (ignored; harmless if built in or an alternative is loaded)"
done </modules.list

mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=524288 host /host || fatal "cannot mount host root over 9p"
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=262144 out /out || fatal "cannot mount the out share"
[ -r /out/job.env ] || fatal "no /out/job.env"
. /out/job.env

# The chroot: guest /proc /sys /dev, fresh tmpfs on /tmp and /run, the verity disk and the out share.
# A checkout under /tmp or /run (a fresh clone in /tmp, say) would vanish under those tmpfs: hold
# it on /repo first and bind it back at its own path, where the absolute paths inside its .venv
# (the interpreter link, the scripts' #! lines, the editable install) expect it.
case "$CFS_REPO/" in
/tmp/* | /run/*)
    mkdir -p /repo && mount -o bind "/host$CFS_REPO" /repo || fatal "cannot hold $CFS_REPO";;
esac
mount -t tmpfs -o mode=1777 tmpfs /host/tmp || fatal "tmpfs on /host/tmp"
mount -t tmpfs -o mode=755 tmpfs /host/run || fatal "tmpfs on /host/run"
if [ -d /repo ]; then
    mkdir -p "/host$CFS_REPO" && mount -o bind /repo "/host$CFS_REPO" || fatal "cannot bind $CFS_REPO back"
fi
mount -o bind /proc /host/proc || fatal "bind /proc"
mount -o bind /sys /host/sys || fatal "bind /sys"
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -o bind /dev /host/dev || fatal "bind /dev"
mount -o bind /dev/pts /host/dev/pts
mount -o bind /dev/shm /host/dev/shm
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /host/run/cfs/verity /host/run/cfs/out
mount -o bind /out /host/run/cfs/out || fatal "bind /out"
if [ -b /dev/vda ]; then
    mount -t ext4 -o noinit_itable /dev/vda /host/run/cfs/verity || fatal "cannot mount the verity disk /dev/vda"
    chmod 1777 /host/run/cfs/verity
else
    fatal "no verity disk /dev/vda"
fi

mods=ok
IFS_SAVED=$IFS; IFS=:
set -- $CFS_MODULES
IFS=$IFS_SAVED
for ko in "$@"; do
    if insmod "/host$ko"; then
        say "loaded $ko"
    else
        say "ERROR: insmod $ko failed"
        mods=fail
    fi
done

say "ready at uptime $(uptime_s)s"
# job.sh / shell.sh (written by run.py) set the whole test environment themselves.
CHROOT_RUN="env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot /host /bin/sh"
if [ "${CFS_SHELL:-0}" = 1 ]; then
    say "interactive shell (busybox, outside the chroot). Inside it:"
    say "  $CHROOT_RUN /run/cfs/out/shell.sh   # bash in the test environment"
    say "  $CHROOT_RUN /run/cfs/out/job.sh     # the pytest run"
    say "  exit                                 # power off"
    setsid cttyhack sh
    rc=0
else
    $CHROOT_RUN /run/cfs/out/job.sh </dev/null
    rc=$?
fi
say "job exited with status $rc"
finish "$rc" "$mods" ok
