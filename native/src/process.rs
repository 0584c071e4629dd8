// SPDX-License-Identifier: MIT OR Apache-2.0
//! Process-wide settings. Library code never changes the process it runs in (other threads,
//! an embedding application); an entry point that owns its process (the `cfsctl` CLI) opts in
//! here, once, as policy.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

static TRIM_AFTER_SCAN: AtomicBool = AtomicBool::new(false);

/// What a file-heavy command-line tool wants of its own process: the soft limit on open files
/// raised to the hard one (a walk holds one descriptor per directory level on every worker, and
/// a tree 2,000 levels deep needs more than the usual 1,024), and the scan's freed memory given
/// back to the system before an image is laid out (see [`after_scan`]).
pub fn configure_for_cli() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        // Best effort: a limit that stays low shows as EMFILE on a very deep tree, by name.
        let _ = setrlimit(Resource::Nofile, lim);
    }
    TRIM_AFTER_SCAN.store(true, Relaxed);
}

/// Called when a scan is done: its per-entry records and work lists were allocated on the
/// worker threads' malloc arenas and are free now; in a process that opted in, give those pages
/// back (otherwise they stay resident and add to a build's peak RSS).
pub(crate) fn after_scan() {
    if TRIM_AFTER_SCAN.load(Relaxed) {
        // SAFETY: malloc_trim takes no pointers and only returns free heap pages to the system;
        // it is thread-safe in glibc (it locks each arena it trims).
        unsafe { libc::malloc_trim(0) };
    }
}
