//! Which command lines are launched natively: `run`, with `-o DIR`/`--out DIR`/`--out=DIR`,
//! `--label NAME`/`--label=NAME` and `--no-exec-trace` in any order, then the command (after `--`,
//! or from the first argument that is not an option: argparse's REMAINDER).
//!
//! Nothing else is parsed here, on purpose: a form argparse reads in its own way (an abbreviated
//! option, `-oDIR`, a value that starts with `-`, `--help`) or rejects (no command) makes
//! [`parse_run`] return `None`, and the whole command line goes to `lynshim.cli` as it was, so that
//! help, errors and corner cases have one definition.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// A `lynshim run` to launch natively.
#[derive(Debug, PartialEq, Eq)]
pub struct RunArgs {
    pub out: PathBuf,
    pub label: Option<String>,
    pub exec_trace: bool,
    pub command: Vec<OsString>,
}

/// `-o`'s default, as in `lynshim.cli`.
const DEFAULT_OUT: &str = "lynshim-traces";

/// The run these arguments (without the program name) ask for, or `None` for anything this launcher
/// leaves to the Python one.
pub fn parse_run(argv: &[OsString]) -> Option<RunArgs> {
    let (verb, rest) = argv.split_first()?;
    if verb != "run" {
        return None;
    }
    let mut run = RunArgs { out: PathBuf::from(DEFAULT_OUT), label: None, exec_trace: true, command: Vec::new() };
    let mut i = 0;
    while let Some(arg) = rest.get(i) {
        let text = arg.to_str();
        match text {
            Some("--") => {
                i += 1;
                break;
            }
            Some("-o" | "--out") => {
                run.out = PathBuf::from(value(rest.get(i + 1))?);
                i += 2;
            }
            Some("--label") => {
                run.label = Some(value(rest.get(i + 1))?.to_str()?.to_owned());
                i += 2;
            }
            Some("--no-exec-trace") => {
                run.exec_trace = false;
                i += 1;
            }
            Some(t) if t.starts_with("--out=") => {
                run.out = PathBuf::from(value(Some(&OsString::from(&t["--out=".len()..])))?);
                i += 1;
            }
            Some(t) if t.starts_with("--label=") => {
                run.label = Some(t["--label=".len()..].to_owned());
                i += 1;
            }
            // Any other option, in whatever encoding, is argparse's to read.
            _ if arg.as_encoded_bytes().starts_with(b"-") => return None,
            _ => break,
        }
    }
    run.command = rest[i..].to_vec();
    if run.command.is_empty() {
        return None;
    }
    Some(run)
}

/// An option's value as argparse would take it without a second thought: present, not empty (an
/// empty `-o` means `.` to pathlib), not starting with `-` (argparse reads that as another option).
fn value(arg: Option<&OsString>) -> Option<&OsStr> {
    let arg = arg?;
    let bytes = arg.as_encoded_bytes();
    (!bytes.is_empty() && !bytes.starts_with(b"-")).then_some(arg.as_os_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Option<RunArgs> {
        parse_run(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    fn command(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn plain_runs_are_launched_natively() {
        let run = parse(&["run", "-o", "t", "--label", "cold", "--", "make", "-s"]).expect("native");
        assert_eq!(
            run,
            RunArgs {
                out: "t".into(),
                label: Some("cold".into()),
                exec_trace: true,
                command: command(&["make", "-s"])
            }
        );
        let run = parse(&["run", "--no-exec-trace", "--out=x", "--label=", "make"]).expect("native");
        assert_eq!(run.out, PathBuf::from("x"));
        assert_eq!(run.label.as_deref(), Some(""));
        assert!(!run.exec_trace);
        assert_eq!(parse(&["run", "make"]).expect("native").out, PathBuf::from(DEFAULT_OUT));
    }

    #[test]
    fn the_command_is_everything_from_its_first_word() {
        // argparse's REMAINDER: options after the command are the command's.
        assert_eq!(parse(&["run", "make", "-o", "x"]).expect("native").command, command(&["make", "-o", "x"]));
        // One `--` goes, as lynshim.cli drops it; a second is the command's.
        assert_eq!(parse(&["run", "--", "--", "x"]).expect("native").command, command(&["--", "x"]));
        assert_eq!(parse(&["run", "--", "-o", "x"]).expect("native").command, command(&["-o", "x"]));
    }

    #[test]
    fn everything_else_goes_to_the_python_command_line() {
        for args in [
            &[][..],
            &["--help"],
            &["--version"],
            &["bench", "--", "true"],
            &["run"],
            &["run", "--"],
            &["run", "--help"],
            &["run", "-h", "--", "true"],
            &["run", "--lab", "x", "--", "true"],
            &["run", "-otraces", "--", "true"],
            &["run", "-o", "--", "true"],
            &["run", "-o", "", "--", "true"],
            &["run", "--label", "-x", "--", "true"],
            &["run", "-o"],
            &["run", "--verbose", "true"],
        ] {
            assert_eq!(parse(args), None, "{args:?}");
        }
    }

    #[test]
    fn a_label_that_is_not_text_goes_to_python() {
        use std::os::unix::ffi::OsStringExt;
        let label = OsString::from_vec(vec![b'a', 0xff]);
        let args = vec![OsString::from("run"), "--label".into(), label, "--".into(), "true".into()];
        assert_eq!(parse_run(&args), None);
    }
}
