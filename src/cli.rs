//! Small command implementations shared by the binary and its tests.

use std::path::Path;
use std::process::ExitCode;

/// Exit code for bad input or configuration (EX_USAGE / EX_DATAERR family).
pub const EXIT_BAD_INPUT: u8 = 64;

/// `spillway policy check DIR`: print every error, exit 64 if any; else a summary.
pub fn policy_check(dir: &Path) -> ExitCode {
    match crate::policy::load_dir(dir) {
        Ok(set) => {
            let default = set.iter().filter(|p| p.namespace.is_none()).count();
            println!(
                "{}: {} policies ok ({} namespaces, {} cluster default)",
                dir.display(),
                set.len(),
                set.namespaces().count(),
                default
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{} error(s) in {}", errors.0.len(), dir.display());
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}
