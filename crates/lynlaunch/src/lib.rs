//! The `lynshim` command, native.
//!
//! `lynshim run` stands in front of every traced command. As a Python console script it cost 55–70 ms
//! a run (an interpreter starting, then `lynshim.cli` importing; `make bench`), 7 % of a one-second command
//! traced alone (#17). This binary launches `run` itself, so that only a spawn stands in front of the
//! command, and leaves the command line's definition where it was: argparse in `lynshim.cli`. It
//! recognises exactly the plain forms of `run` it implements ([`args`]) and hands every other command
//! line to `python -m lynshim` unchanged (help, `--version`, `bench`, abbreviated options, mistakes),
//! as it does the runs it could not launch exactly as the Python launcher would ([`install`]): a
//! `pyproject.toml` that configures lynshim (read with tomllib), bootstrap bytecode still to compile
//! (py_compile), an installation it cannot find. Both launchers write the same environment, run
//! record and summary line; `tests/test_launcher.py` runs them side by side. The summary line, which
//! trace file is whose, and the children's CPU are defined here once: the Python launcher calls them
//! through the extension module (`lynshim._native`).

mod args;
mod install;
mod launch;
pub mod summary;

pub use launch::children_cpu_s;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

/// Runs `lynshim ARGS…` (without the program name) and returns its exit status; dies of the command's
/// signal when a signal ended the command.
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let Some(run) = args::parse_run(&argv) else {
        return hand_over(&argv);
    };
    let package = match install::Package::locate() {
        Some(package) if package.launches_natively() => package,
        _ => return hand_over(&argv),
    };
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(_) => return hand_over(&argv),
    };
    if install::pyproject_configures_lynshim(&cwd) {
        return hand_over(&argv);
    }
    launch::run(&package, &cwd, run)
}

/// `python -m lynshim ARGS…` in this process's place: the Python CLI, for everything not launched here.
fn hand_over(argv: &[OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let mut failure = None;
    for python in install::pythons() {
        // -P: the working directory is not put first on sys.path (a `lynshim` folder there would be
        // imported instead), as it is not for a console script.
        let err = std::process::Command::new(&python).args(["-P", "-m", "lynshim"]).args(argv).exec();
        let not_found = err.kind() == std::io::ErrorKind::NotFound;
        failure = Some((python, err));
        if !not_found {
            break;
        }
    }
    let (python, err) = failure.unwrap_or_else(|| ("python3".into(), std::io::ErrorKind::NotFound.into()));
    let _ = writeln!(
        std::io::stderr(),
        "lynshim: cannot start {} to run lynshim's Python command line: {err}; \
         run `make install` in the lynshim checkout",
        python.display()
    );
    ExitCode::from(127)
}
