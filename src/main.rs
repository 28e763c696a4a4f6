//! The `bazaar` binary: see `bazaar --help`.

// glibc's malloc was a tenth of the CPU an order costs (SQLite, diesel and serde allocate
// small blocks on every statement, across threads); mimalloc serves them from per-thread pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bazaar::run()
}
