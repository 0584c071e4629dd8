# SPDX-License-Identifier: MIT OR Apache-2.0
"""Guest job of qemu/boot.py (run by qemu/run.py --job): enable fs-verity on every object and
image of the repository on the boot disk, which the host made with mkfs.ext4 -d (the host kernel
has no fs-verity), and check that the kernel's measurement of each file is its name.

    enable_verity.py REPO    (REPO: /run/cfs/verity/composefs in the guest)
"""

import os
import subprocess
import sys

from composefs import _native


def main() -> int:
    repo = sys.argv[1]
    # fs-verity hashes with the best sha256 the kernel has loaded; the generic C one is the
    # slowest under emulation (best effort: the host's module tree is the guest's through 9p)
    subprocess.run(["modprobe", "-q", "sha256_ssse3"], check=False)
    files = [os.path.join(repo, "images", n) for n in os.listdir(os.path.join(repo, "images"))
             if len(n) == 64]
    objdir = os.path.join(repo, "objects")
    for d in sorted(os.listdir(objdir)):
        files += [os.path.join(objdir, d, n) for n in os.listdir(os.path.join(objdir, d))]
    bad = 0
    for path in files:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            if not _native.enable_verity(fd):
                print(f"enable_verity: {path}: fs-verity not supported", flush=True)
                return 1
            name = path[-64:] if "/images/" in path else path[-65:-63] + path[-62:]
            if _native.measure_verity(fd).digest.hex() != name:
                print(f"enable_verity: {path}: measured digest is not its name", flush=True)
                bad += 1
        finally:
            os.close(fd)
    os.sync()
    print(f"enable_verity: {len(files)} files, {bad} wrong", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
