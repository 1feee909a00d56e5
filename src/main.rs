//! The `fusebox` binary: a thin shell over [`fusebox::cli`].
//!
//! jemalloc is the binary's allocator (the library and its tests keep the system one). It
//! keeps allocations of one size together, so the buffers an app connection frees when it
//! rests leave whole pages that go back to the system, where glibc kept the holes they left
//! between the allocations that stay: 3.2 instead of 5.2 KiB per idle connection, and RSS that
//! falls back after reloads (docs/PERFORMANCE.md). Its settings, including a background
//! thread that returns pages left unused for a second, are in `.cargo/config.toml`.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    std::process::exit(fusebox::cli::main());
}
