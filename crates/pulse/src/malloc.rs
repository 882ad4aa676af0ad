//! The process's glibc `malloc` settings, made before any thread starts.
//!
//! Rebalancing allocates and frees memory in bursts: the records a joining node stores, the
//! keys a hand-off drops, the buffers of multi-megabyte messages. By default glibc returns
//! the free top of a heap to the kernel once it exceeds 128 KiB, and after a large block is
//! freed it serves blocks of that size from its heaps instead of mapping them, then trims
//! them from the heap again. Each burst was given back to the kernel and faulted in again
//! while the foreground's threads waited. With the heaps kept ([`TRIM_THRESHOLD`]) and large
//! blocks always mapped on their own ([`MMAP_THRESHOLD`], glibc's default, kept fixed), the
//! foreground's p99 during a join in `pulse bench` was lower than with glibc's defaults in
//! each of 7 runs alternated with them (medians 748 and 932 µs), and over all runs of each
//! (18 and 12) its median fell from 851 to 745 µs (docs/BENCHMARKS.md). Memory per entry did
//! not change; the process keeps what its heaps held at their peak, as a cache sized to its
//! capacity does anyway. An application embedding the library makes this choice for its own
//! process (README, "Operating a node").

/// Free bytes kept at the top of a heap before glibc returns them to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;
/// Blocks at least this large get their own mapping, returned to the kernel when freed.
/// glibc's default; setting it keeps glibc from raising it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 << 10;

/// Applies the settings above; elsewhere than glibc, does nothing.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; it is called before any thread
    // starts, with parameters and values glibc documents.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
