//! How Turnstile's processes take memory from the kernel.
//!
//! Every binary uses mimalloc as its global allocator. mimalloc asks for
//! transparent huge pages on its arenas (`madvise(MADV_HUGEPAGE)`) and hands
//! freed memory back 4 KiB at a time. Together that makes the kernel zero a
//! whole 2 MiB page again and again as a burst of requests grows and shrinks
//! the heap. In the first second of a 5 000 claims/s sale on two cores,
//! `perf` shows `clear_page_erms` under `do_huge_pmd_anonymous_page` at
//! about a fifth of all CPU with huge pages, and at 0.2% without.

/// Turns transparent huge pages off for this process and the processes it
/// starts (`prctl(PR_SET_THP_DISABLE)`), whatever the system's THP mode.
/// Call it first thing in `main`. Where the kernel has no such switch the
/// process simply keeps the system's setting.
pub fn disable_transparent_huge_pages() {
    // Not fatal: it only costs CPU, never correctness.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_runs_without_transparent_huge_pages() {
        super::disable_transparent_huge_pages();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().expect("prctl(PR_GET_THP_DISABLE)"));
    }
}
