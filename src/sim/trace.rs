//! Workload traces: CSV files with one pod per line.
//!
//! ```text
//! submit_s,duration_s,cpu,memory_mib,namespace,priority
//! 0,600,0.5,1024,web,0
//! 12.5,3600,2,4096,batch
//! ```
//!
//! The header is required; columns may come in any order; `priority` is
//! optional (default 0). `cpu` is in cores (`0.5`) or a Kubernetes quantity
//! (`500m`). Blank lines and lines starting with `#` are skipped. Every bad
//! line is reported with file:line:column.

use super::dist::Dist;
use super::scenario::{Arrivals, InputError, InputErrors, Scenario, TracePod, WorkloadSpec};
use crate::units::{Duration, MIB, Resources, parse_cpu_millis};
use std::collections::BTreeMap;

const REQUIRED: [&str; 5] = ["submit_s", "duration_s", "cpu", "memory_mib", "namespace"];

/// Parse a trace's text. Stops collecting after 50 errors.
pub fn parse(text: &str, file: &str) -> Result<Vec<TracePod>, InputErrors> {
    let mut errors = Vec::new();
    let err = |errors: &mut Vec<InputError>, line: usize, column: usize, message: String| {
        errors.push(InputError {
            file: file.to_string(),
            line: line as u64,
            column: column as u64,
            message,
        })
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((hline, header)) = lines.next() else {
        err(
            &mut errors,
            1,
            1,
            format!(
                "empty trace: expected a header line {:?}",
                REQUIRED.join(",")
            ),
        );
        return Err(InputErrors(errors));
    };
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| names.iter().position(|n| *n == name);
    for (i, n) in names.iter().enumerate() {
        if !REQUIRED.contains(n) && *n != "priority" {
            err(
                &mut errors,
                hline,
                column_of(header, i),
                format!("unknown column {n:?}"),
            );
        }
    }
    let mut idx = [0usize; 5];
    for (k, name) in REQUIRED.iter().enumerate() {
        match col(name) {
            Some(i) => idx[k] = i,
            None => err(
                &mut errors,
                hline,
                1,
                format!("missing column {name:?} in the header"),
            ),
        }
    }
    if !errors.is_empty() {
        return Err(InputErrors(errors));
    }
    let prio = col("priority");
    let mut pods = Vec::new();
    for (ln, line) in lines {
        if errors.len() >= 50 {
            break;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != names.len() {
            err(
                &mut errors,
                ln,
                1,
                format!("expected {} fields, found {}", names.len(), fields.len()),
            );
            continue;
        }
        let mut bad = |i: usize, what: String| err(&mut errors, ln, column_of(line, i), what);
        let secs = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
        let submit = secs(fields[idx[0]]);
        if submit.is_none() {
            bad(
                idx[0],
                format!(
                    "submit_s: expected non-negative seconds, got {:?}",
                    fields[idx[0]]
                ),
            );
        }
        let duration = secs(fields[idx[1]]).filter(|d| *d > 0.0);
        if duration.is_none() {
            bad(
                idx[1],
                format!(
                    "duration_s: expected positive seconds, got {:?}",
                    fields[idx[1]]
                ),
            );
        }
        let cpu = parse_cpu_millis(fields[idx[2]]);
        if let Err(e) = &cpu {
            bad(idx[2], format!("cpu: {e}"));
        }
        let mem = secs(fields[idx[3]]);
        if mem.is_none() {
            bad(
                idx[3],
                format!(
                    "memory_mib: expected a non-negative number, got {:?}",
                    fields[idx[3]]
                ),
            );
        }
        let ns = fields[idx[4]];
        if ns.is_empty() {
            bad(idx[4], "namespace: must not be empty".to_string());
        }
        let priority = match prio.map(|i| (i, fields[i])) {
            None | Some((_, "")) => Some(0),
            Some((i, p)) => match p.parse::<i32>() {
                Ok(v) => Some(v),
                Err(_) => {
                    bad(i, format!("priority: expected an integer, got {p:?}"));
                    None
                }
            },
        };
        if let (Some(s), Some(d), Ok(c), Some(m), Some(p)) = (submit, duration, cpu, mem, priority)
            && !ns.is_empty()
        {
            pods.push(TracePod {
                submit: Duration::from_millis((s * 1000.0).round() as u64),
                duration: Duration::from_millis(((d * 1000.0).round() as u64).max(1)),
                requests: Resources::new(c, (m * MIB as f64).round() as u64),
                namespace: ns.to_string(),
                priority: p,
            });
        }
    }
    if errors.is_empty() {
        Ok(pods)
    } else {
        Err(InputErrors(errors))
    }
}

/// The 1-based column where field `i` of a comma-separated line starts.
fn column_of(line: &str, i: usize) -> usize {
    line.split(',').take(i).map(|f| f.len() + 1).sum::<usize>() + 1
}

/// Replace a scenario's workloads with a trace. Pods that fit no pool's
/// nodes are errors (pointing at their line) rather than pods pending forever.
pub fn apply(base: &Scenario, text: &str, file: &str) -> Result<Scenario, InputErrors> {
    let pods = parse(text, file)?;
    let mut errors = Vec::new();
    // Line numbers of data rows, to point at pods that fit nowhere.
    let data_lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .skip(1)
        .map(|(i, _)| i + 1)
        .collect();
    for (i, p) in pods.iter().enumerate() {
        if !base.pools.iter().any(|pool| p.requests.fits_in(&pool.node)) {
            errors.push(InputError {
                file: file.to_string(),
                line: data_lines.get(i).copied().unwrap_or(1) as u64,
                column: 1,
                message: format!(
                    "pod requests {:.2} vCPU / {} MiB fit no pool's nodes",
                    p.requests.cpu_cores(),
                    p.requests.memory_bytes / MIB
                ),
            });
        }
    }
    if !errors.is_empty() {
        return Err(InputErrors(errors));
    }
    let last = pods
        .iter()
        .map(|p| p.submit)
        .max()
        .unwrap_or(Duration::ZERO);
    let mut sc = base.clone();
    sc.name = format!("trace:{file}");
    sc.duration = Duration::from_millis(last.millis() + 1);
    sc.workloads = vec![WorkloadSpec {
        name: "trace".into(),
        namespace: String::new(),
        labels: BTreeMap::new(),
        priority: 0,
        requests: Resources::default(),
        duration: Dist::Fixed(Duration::ZERO),
        tolerates_virtual: true,
        arrivals: Arrivals::Trace(pods),
    }];
    Ok(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_columns_in_any_order_with_optional_priority() {
        let t = "# a comment\nnamespace,submit_s,duration_s,cpu,memory_mib\nweb,0,600,0.5,1024\n\nbatch,12.5,60,250m,256\n";
        let pods = parse(t, "t.csv").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[0].requests, Resources::new(500, 1024 * MIB));
        assert_eq!(pods[1].submit, Duration::from_millis(12_500));
        assert_eq!(pods[1].requests.cpu_millis, 250);
        assert_eq!(pods[1].priority, 0);
        let t = "submit_s,duration_s,cpu,memory_mib,namespace,priority\n1,2,1,512,a,100\n";
        assert_eq!(parse(t, "t.csv").map(|p| p[0].priority), Ok(100));
    }

    #[test]
    fn every_bad_field_is_reported_with_line_and_column() {
        let t = "submit_s,duration_s,cpu,memory_mib,namespace,priority\n0,600,0.5,1024,web,0\n-1,0,lots,x,,high\n1,2,3\n";
        let e = parse(t, "t.csv").err().map(|e| e.0).unwrap_or_default();
        let msgs: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert!(
            msgs.contains(
                &"t.csv:3:1: submit_s: expected non-negative seconds, got \"-1\"".to_string()
            ),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.starts_with("t.csv:3:4: duration_s")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.starts_with("t.csv:3:6: cpu")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.starts_with("t.csv:3:11: memory_mib")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.starts_with("t.csv:3:13: namespace")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.starts_with("t.csv:3:14: priority")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("t.csv:4:1: expected 6 fields")),
            "{msgs:?}"
        );
    }

    #[test]
    fn header_problems_are_errors() {
        let e = parse("submit_s,cpu\n", "t.csv")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("missing column \"duration_s\""), "{e}");
        let e = parse("", "t.csv")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("empty trace"), "{e}");
        let e = parse(
            "submit_s,duration_s,cpu,memory_mib,namespace,gpu\n",
            "t.csv",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("t.csv:1:46: unknown column \"gpu\""), "{e}");
    }

    #[test]
    fn apply_rejects_pods_that_fit_nowhere() {
        let base = Scenario::builtin();
        let e = apply(
            &base,
            "submit_s,duration_s,cpu,memory_mib,namespace\n0,1,1,1\n",
            "t.csv",
        );
        assert!(e.is_err());
        let e = apply(
            &base,
            "submit_s,duration_s,cpu,memory_mib,namespace\n0,60,1,512,a\n5,60,32,512,a\n",
            "t.csv",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.starts_with("t.csv:3:1: pod requests 32.00 vCPU"), "{e}");
        let sc = apply(
            &base,
            "submit_s,duration_s,cpu,memory_mib,namespace\n0,60,1,512,a\n5,60,2,512,b\n",
            "t.csv",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sc.generate(1).len(), 2);
        assert_eq!(sc.pools, base.pools);
    }
}
