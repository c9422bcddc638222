//! How the operator holds its memory: mimalloc, without transparent huge pages.
//!
//! mimalloc instead of glibc's malloc: at 1,000 sessions the operator kept 123 MiB after the
//! start with glibc and 96 MiB with mimalloc (bench-operator, same machine).
//!
//! A huge page stays resident whole (2 MiB) while a single object in it lives. mimalloc asks
//! the kernel for them on its arenas unless built not to (its `no_thp` feature, set for the
//! workspace); kernels set to `enabled=always` hand them out unasked, which
//! [`without_huge_pages`] turns off. With them, 24 MiB of the operator's 78 MiB at 1,000
//! sessions once quiet were huge pages; without, it kept 53-57 MiB (bench-operator, same
//! session).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. The kernel checks the flag at every page
/// fault, so called first thing in `main` it covers everything the process allocates after;
/// the error is for the log, once it is set up.
pub fn without_huge_pages() -> Result<(), String> {
    nix::sys::prctl::set_thp_disable(true)
        .map_err(|e| format!("could not turn transparent huge pages off (more memory will be held): {e}"))
}
