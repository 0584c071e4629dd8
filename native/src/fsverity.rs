//! fs-verity digests, exactly as the kernel computes them (see Documentation/filesystems/fsverity.rst).
