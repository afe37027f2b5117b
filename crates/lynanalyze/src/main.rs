//! The `lynanalyze` binary: everything lives in the library; this only hands over the arguments.

use std::process::ExitCode;

/// A big build is millions of spans: mimalloc allocates them faster than the system allocator and
/// hands memory freed by one phase to the next instead of back to the kernel.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    lynanalyze::cli::run(std::env::args_os())
}
