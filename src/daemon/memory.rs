//! Keeping an idle daemon small (issue 21: under 30 MB resident after an hour of drift
//! checks).
//!
//! glibc's `malloc` gives each thread that allocates an arena of its own (up to eight per
//! core) and keeps what is freed for later. The daemon wakes for short runs (a fetch, a
//! drift check, a render in a blocking thread) and then waits: memory those runs freed
//! would otherwise stay resident in several arenas for the daemon's whole life. So the
//! daemon uses at most [`ARENAS`] arenas and returns free memory to the system every
//! [`TRIM_EVERY`]. Elsewhere (another libc) both are no-ops.
//!
//! What stays resident between runs is bounded elsewhere: the batched probe fragments kept
//! by `engine::probes` (dead ones swept at twice what the last sweep left), and SQLite's page
//! cache for the state database, which grows with the database up to SQLite's default
//! 2,000 KiB per connection (the daemon holds one). bench/RESULTS.md has an hour's samples.

use std::time::Duration;

/// Arenas `malloc` may use: the runtime's threads share them.
pub const ARENAS: i32 = 2;
/// How often free memory goes back to the system.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Caps `malloc`'s arenas at [`ARENAS`]. Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any positive value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Returns the free memory at the top of the heap and in every arena to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    /// Freed memory goes back: after a large allocation is freed and trimmed, the resident
    /// size is back near where it was.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trimmed_memory_goes_back_to_the_system() {
        fn rss_kb() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        }
        // Many small blocks (below the mmap threshold, so they live in the heap).
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![(i % 251) as u8; 4000]).collect();
        let full = rss_kb();
        // Keep only the last one: the heap's top stays in use unless trimmed from inside.
        let last = blocks.into_iter().last();
        super::trim();
        let after = rss_kb();
        assert!(last.is_some());
        assert!(
            after + 40_000 < full,
            "resident {full} kB with 80 MB allocated, {after} kB after freeing and trimming"
        );
    }
}
