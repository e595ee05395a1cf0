//! The first-hour commands through the built binary: `policy check` (every
//! error, exit 64, JSON), `version` / `--version` and `completion`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn spillway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running spillway: {e}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("policy-check")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{e}"));
}

const HEAD: &str = "apiVersion: spillway.io/v1alpha1\nkind: BurstPolicy\n";

/// Two files with several errors each, and a third that only conflicts.
fn broken_dir() -> PathBuf {
    let d = scratch("broken");
    write(
        &d,
        "a.yaml",
        &format!(
            "{HEAD}metadata: {{ name: a, namespace: web }}\nspec:\n  burst:\n    mode: Sometimes\n    spilAfter: 10s\n  budget:\n    maxMemory: 8Qi\n"
        ),
    );
    write(
        &d,
        "b.yaml",
        &format!(
            "{HEAD}metadata: {{ name: b, namespace: shop }}\nspec:\n  budget: {{ maxPods: lots }}\n---\n{HEAD}metadata: {{ name: c, namespace: shop }}\nspec:\n  drainBack: {{ after: 5 minutes }}\n  aci: {{ publicIp: maybe }}\n"
        ),
    );
    write(
        &d,
        "c.yaml",
        &format!(
            "{HEAD}metadata: {{ name: web-a, namespace: web }}\nspec:\n  podSelector: {{ matchLabels: {{ app: x }} }}\n"
        ),
    );
    write(
        &d,
        "d.yaml",
        &format!(
            "{HEAD}metadata: {{ name: web-b, namespace: web }}\nspec:\n  podSelector: {{ matchLabels: {{ tier: y }} }}\n"
        ),
    );
    d
}

#[test]
fn policy_check_reports_every_error_of_every_file_and_exits_64() {
    let d = broken_dir();
    let out = spillway(&["policy", "check", d.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let at = |file: &str, pos: &str| format!("{}:{pos}: ", d.join(file).display());
    let expected = [
        (
            at("a.yaml", "6:11"),
            "spec.burst.mode: unknown mode \"Sometimes\"",
        ),
        (
            at("a.yaml", "7:5"),
            "spec.burst.spilAfter: unknown field `spilAfter`",
        ),
        (at("a.yaml", "9:16"), "spec.budget.maxMemory: "),
        (at("b.yaml", "5:22"), "spec.budget.maxPods: "),
        (at("b.yaml", "11:23"), "spec.drainBack.after: "),
        (
            at("b.yaml", "12:20"),
            "spec.aci.publicIp: unknown value \"maybe\"",
        ),
        (
            at("d.yaml", "3:19"),
            "spec.podSelector: web/web-b claims the same pods with equal specificity as web/web-a",
        ),
    ];
    assert_eq!(lines.len(), expected.len() + 1, "{text}");
    for (line, (prefix, rest)) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(&format!("{prefix}{rest}")),
            "{line}\nexpected {prefix}{rest}…"
        );
        // The position is said once.
        assert!(
            !line.contains("line ") && !line.contains("column "),
            "{line}"
        );
    }
    // Both places of the conflict are named.
    assert!(
        lines[6].contains(&format!("{}:3:19", d.join("c.yaml").display())),
        "{}",
        lines[6]
    );
    assert_eq!(lines[7], "7 errors in 3 files");
}

#[test]
fn policy_check_json_lists_each_error_with_its_place() {
    let d = broken_dir();
    let out = spillway(&[
        "policy",
        "check",
        "--format",
        "json",
        d.to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(64));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("json: {e}: {out:?}"));
    let errors = v["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 7, "{v}");
    assert_eq!(errors[1]["file"], d.join("a.yaml").display().to_string());
    assert_eq!(errors[1]["line"], 7);
    assert_eq!(errors[1]["column"], 5);
    assert_eq!(errors[1]["field"], "spec.burst.spilAfter");
    assert!(
        errors[1]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("unknown field `spilAfter`")),
        "{}",
        errors[1]
    );
    assert_eq!(v["summary"]["errors"], 7);
    assert_eq!(v["summary"]["files_with_errors"], 3);
    assert_eq!(v["summary"]["files_checked"], 4);
    assert_eq!(v["summary"]["text"], "7 errors in 3 files");
}

#[test]
fn policy_check_of_the_shipped_policies_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let out = spillway(&["policy", "check", dir.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("policies ok in 3 files"), "{out:?}");
    let out = spillway(&[
        "policy",
        "check",
        "--format",
        "json",
        dir.to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("json: {e}"));
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(0));
    assert_eq!(v["summary"]["policies"], 4);
}

#[test]
fn policy_check_of_a_missing_path_exits_64() {
    let out = spillway(&["policy", "check", "/nonexistent/policies"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stdout(&out).contains("/nonexistent/policies: cannot read"),
        "{out:?}"
    );
    let out = spillway(&["policy", "check"]);
    assert_eq!(out.status.code(), Some(64), "a path is required");
}

#[test]
fn version_names_the_commit_and_build_date() {
    let out = spillway(&["version"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], concat!("spillway ", env!("CARGO_PKG_VERSION")));
    let commit = lines[1]
        .strip_prefix("commit: ")
        .unwrap_or_else(|| panic!("{text}"));
    let built = lines[2]
        .strip_prefix("built: ")
        .unwrap_or_else(|| panic!("{text}"));
    // This test runs from a git checkout: the commit is there.
    if Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists() {
        assert!(
            commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{commit}"
        );
    } else {
        assert_eq!(commit, "unknown");
    }
    let parts: Vec<&str> = built.split('-').collect();
    assert!(
        parts.len() == 3
            && parts[0].len() == 4
            && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())),
        "{built}"
    );
    let out = spillway(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim_end(),
        format!(
            "spillway {} (commit {commit}, built {built})",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn completion_scripts_cover_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = spillway(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = stdout(&out);
        for word in ["simulate", "policy", "explain", "completion", "strategies"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    assert!(stdout(&spillway(&["completion", "bash"])).contains("complete -F _spillway"));
    assert!(stdout(&spillway(&["completion", "zsh"])).starts_with("#compdef spillway"));
    let out = spillway(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn policy_check_refuses_a_public_ip_or_dns_label_on_a_private_network() {
    let d = scratch("private-network");
    write(
        &d,
        "p.yaml",
        &format!(
            "{HEAD}metadata: {{ name: p, namespace: web }}\nspec:\n  aci:\n    network: private\n    publicIp: always\n    dnsNameLabel: \"{{{{name}}}}\"\n"
        ),
    );
    let out = spillway(&["policy", "check", d.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let text = stdout(&out) + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("p.yaml:7:15: spec.aci.publicIp:"), "{text}");
    assert!(
        text.contains("p.yaml:8:19: spec.aci.dnsNameLabel:"),
        "{text}"
    );
    write(
        &d,
        "p.yaml",
        &format!(
            "{HEAD}metadata: {{ name: p, namespace: web }}\nspec:\n  aci: {{ network: private }}\n"
        ),
    );
    let out = spillway(&["policy", "check", d.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
