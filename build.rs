//! Stamps the binary with the git commit and the build date for
//! `spillway version` / `--version`: `SPILLWAY_GIT_COMMIT` (short hash) and
//! `SPILLWAY_BUILD_DATE`
//! (UTC, `YYYY-MM-DD`; `SOURCE_DATE_EPOCH` wins, for reproducible builds).
//! Outside a git checkout (a source tarball) both fall back to "unknown"
//! rather than failing the build, unless `SPILLWAY_GIT_COMMIT` is set in the
//! build's environment (the Dockerfile passes its `REVISION` argument).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn build_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_secs()).ok())
        });
    match secs {
        Some(s) => {
            let (y, m, d) = civil_from_days(s.div_euclid(86_400));
            format!("{y:04}-{m:02}-{d:02}")
        }
        None => "unknown".into(),
    }
}

/// A missing file would make cargo rerun the script on every build.
fn rerun_if_exists(path: PathBuf) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // Only this crate's own checkout counts, not a repository that happens
    // to hold an unpacked tarball further up.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").map(PathBuf::from).ok();
    let own_checkout = git(&["rev-parse", "--show-toplevel"])
        .map(PathBuf::from)
        .zip(manifest_dir)
        .is_some_and(|(top, manifest)| {
            top.canonicalize()
                .ok()
                .is_some_and(|t| Some(t) == manifest.canonicalize().ok())
        });
    let commit = own_checkout
        .then(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .flatten();
    if commit.is_some() {
        // Rebuild the stamp when HEAD moves: HEAD itself, the branch it points
        // to, and packed refs (a worktree keeps HEAD in its own git dir).
        for (flag, file) in [("--git-dir", "HEAD"), ("--git-common-dir", "packed-refs")] {
            if let Some(dir) = git(&["rev-parse", flag]) {
                rerun_if_exists(PathBuf::from(dir).join(file));
            }
        }
        if let (Some(common), Some(head_ref)) = (
            git(&["rev-parse", "--git-common-dir"]),
            git(&["symbolic-ref", "-q", "HEAD"]),
        ) {
            rerun_if_exists(PathBuf::from(common).join(head_ref));
        }
    }
    // A build without the checkout (a container build whose context leaves
    // out .git) names the commit itself: `SPILLWAY_GIT_COMMIT`.
    println!("cargo:rerun-if-env-changed=SPILLWAY_GIT_COMMIT");
    let given = std::env::var("SPILLWAY_GIT_COMMIT")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "unknown");
    let commit = given.or(commit).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SPILLWAY_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=SPILLWAY_BUILD_DATE={}", build_date());
}
