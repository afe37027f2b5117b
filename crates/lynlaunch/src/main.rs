//! `lynshim`, the command: see the lynlaunch library.

use std::process::ExitCode;

fn main() -> ExitCode {
    lynlaunch::main(std::env::args_os().skip(1).collect())
}
