//! Reading policy files so that *every* error is found in one go, and the
//! report of `spillway policy check`.
//!
//! serde stops a document at its first structural error (an unknown field, a
//! value of the wrong type). To find the next one without a second schema, the
//! document is parsed again with the offending `key: value` entry blanked out
//! (replaced by spaces, so every other line and column stays where it was),
//! until it parses; the validation of the parsed document then adds the value
//! errors. This works on the text, not on the fields, so a new policy field
//! needs nothing here. Documents (`---`) are parsed one by one: an error in
//! one does not hide the next.
//!
//! This module reads no files; `check_paths` is the only function that does.

use super::raw::RawPolicy;
use super::{BurstPolicy, PolicyError, PolicySet, policy_files, validate};
use std::path::{Path, PathBuf};

/// At most this many structural errors are collected per document; past
/// that the document is too broken for more messages to help.
const MAX_RETRIES_PER_DOCUMENT: usize = 32;

/// Parse every policy document in one file's text, appending every error
/// found (sorted by position) to `errors`. Only error-free documents
/// yield a policy.
pub fn parse_documents(text: &str, file: &str, errors: &mut Vec<PolicyError>) -> Vec<BurstPolicy> {
    let mut found = Vec::new();
    let mut policies = Vec::new();
    for doc in split_documents(text) {
        if let Some(p) = parse_document(doc, file, &mut found) {
            policies.push(p);
        }
    }
    found.sort_by_key(|e| (e.line, e.column));
    errors.append(&mut found);
    policies
}

/// One document: structural errors by retrying with the bad entry blanked,
/// then validation errors.
fn parse_document(
    mut doc: String,
    file: &str,
    errors: &mut Vec<PolicyError>,
) -> Option<BurstPolicy> {
    let mut structural = 0;
    let mut blanked: Vec<String> = Vec::new();
    let raw = loop {
        let e = match serde_saphyr::from_str::<RawPolicy>(&doc) {
            Ok(raw) => break Some(raw),
            Err(e) => e,
        };
        let message = error_message(&e);
        // A required field whose value was blanked after an error is
        // "missing" now: that is the same error again, not a new one.
        if blanked
            .iter()
            .any(|k| message.starts_with(&format!("missing field `{k}`")))
        {
            break None;
        }
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .filter(|&(l, _)| l > 0)
            .unwrap_or((1, 1));
        let offset = offset_of(&doc, line, column);
        errors.push(PolicyError {
            file: file.to_string(),
            line,
            column,
            field: offset.map(|o| field_path(&doc, o)).unwrap_or_default(),
            message,
        });
        structural += 1;
        // A missing field cannot be blanked away; the document ends here.
        if errors
            .last()
            .is_some_and(|e| e.message.starts_with("missing field"))
            || structural >= MAX_RETRIES_PER_DOCUMENT
        {
            break None;
        }
        match offset.and_then(|o| blank_entry(&mut doc, o)) {
            Some(key) => blanked.push(key),
            None => break None,
        }
    };
    let raw = raw?;
    // Validation errors are worth reporting even when the structure had
    // errors; the policy itself is only used when there were none.
    let policy = validate(raw, file, errors);
    if structural > 0 { None } else { policy }
}

/// serde-saphyr's message without its `error: line N column M:` prefix and
/// source snippet: the location is reported once, by the caller.
fn error_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid YAML");
    strip_position(first.strip_prefix("error: ").unwrap_or(first)).to_string()
}

/// `line 7 column 3: rest` → `rest`.
fn strip_position(s: &str) -> &str {
    let Some(rest) = s.strip_prefix("line ") else {
        return s;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let Some(rest) = rest.strip_prefix(" column ") else {
        return s;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    rest.strip_prefix(": ").unwrap_or(s)
}

/// Each YAML document of `text` as its own string, with the lines of other
/// documents left empty so that line numbers stay those of the file.
/// Documents holding only comments and blank lines are dropped (as
/// `from_multiple` skips empty documents).
pub(crate) fn split_documents(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut has_content = false;
    let mut flush = |current: &mut String, has_content: &mut bool, next_start: usize| {
        if *has_content {
            docs.push(std::mem::take(current));
        }
        *current = "\n".repeat(next_start);
        *has_content = false;
    };
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let body = line.trim_end_matches(['\n', '\r']);
        let is_start =
            body.starts_with("---") && body[3..].chars().next().is_none_or(char::is_whitespace);
        let is_end = body == "..." || body.starts_with("... ");
        if is_start || is_end {
            flush(&mut current, &mut has_content, line_no);
            // `--- {inline: document}`: keep what follows the marker, in place.
            let rest = if is_start { &body[3..] } else { "" };
            current.push_str("   ");
            current.push_str(rest);
            current.push('\n');
            has_content |= is_content(rest);
        } else if body.starts_with('%') && !has_content {
            // A directive (%YAML, %TAG) belongs to the next document's header.
            current.push('\n');
        } else {
            current.push_str(line);
            if !line.ends_with('\n') {
                current.push('\n');
            }
            has_content |= is_content(body);
        }
    }
    flush(&mut current, &mut has_content, 0);
    docs
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// Byte offset of a 1-based line and character column.
fn offset_of(doc: &str, line: u64, column: u64) -> Option<usize> {
    let mut start = 0usize;
    for (i, l) in doc.split_inclusive('\n').enumerate() {
        if i as u64 + 1 == line {
            let body = l.trim_end_matches(['\n', '\r']);
            let col = column.saturating_sub(1) as usize;
            return match body.char_indices().nth(col) {
                Some((b, _)) => Some(start + b),
                None if col == body.chars().count() => Some(start + body.len()),
                None => None,
            };
        }
        start += l.len();
    }
    None
}

/// The line around `offset`: (start, end without the newline).
fn line_bounds(doc: &str, offset: usize) -> (usize, usize) {
    let start = doc[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = doc[offset..].find('\n').map_or(doc.len(), |i| offset + i);
    (start, end)
}

/// Where a block line's node begins: (column of the first character, column
/// of its key after any `- ` sequence markers). `None` for blank and comment lines.
fn block_columns(line: &str) -> Option<(usize, usize)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let rest = &line[indent..];
    if !is_content(rest) {
        return None;
    }
    let mut key = indent;
    let mut r = rest;
    while let Some(after) = r.strip_prefix("- ").or_else(|| (r == "-").then_some("")) {
        let spaces = after.len() - after.trim_start_matches(' ').len();
        key += 2 + spaces.saturating_sub(1);
        r = after.trim_start_matches(' ');
        if r.is_empty() {
            break;
        }
    }
    Some((indent, key))
}

/// The key of a `key: value` / `key:` text, unquoted.
fn key_of(s: &str) -> Option<String> {
    let s = s.trim_start();
    if s.starts_with(['{', '[', '#']) {
        return None;
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut quote = None;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'"' || c == b'\'' => quote = Some(c),
            None if c == b':' && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) => {
                let k = s[..i].trim().trim_matches(['"', '\'']);
                return (!k.is_empty()).then(|| k.to_string());
            }
            None if matches!(c, b',' | b'{' | b'}' | b'[' | b']') => return None,
            None => {}
        }
        i += 1;
    }
    None
}

/// Flow-collection state of a line up to `until`.
struct FlowScan {
    /// Keys owning each open `{`/`[` (None for an item without a key).
    stack: Vec<Option<String>>,
    /// The key of the entry being read at the innermost level, once its `:` was seen.
    last_key: Option<String>,
    /// Where the entry being read at the innermost level begins.
    entry_start: usize,
    /// Whether that entry follows a `,` (then the comma goes with it when blanked).
    after_comma: bool,
}

fn scan_flow(line: &str, until: usize) -> FlowScan {
    let mut s = FlowScan {
        stack: Vec::new(),
        last_key: None,
        entry_start: 0,
        after_comma: false,
    };
    let bytes = line.as_bytes();
    let mut quote = None;
    let mut token_start = 0;
    let mut i = 0;
    while i < until.min(bytes.len()) {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'"' | b'\'' => quote = Some(c),
                b'#' if i == 0 || bytes[i - 1] == b' ' => break,
                b'{' | b'[' => {
                    s.stack.push(s.last_key.take());
                    token_start = i + 1;
                    s.entry_start = i + 1;
                    s.after_comma = false;
                }
                b'}' | b']' => {
                    s.stack.pop();
                    s.last_key = None;
                    token_start = i + 1;
                }
                b',' => {
                    s.last_key = None;
                    token_start = i + 1;
                    s.entry_start = i + 1;
                    s.after_comma = true;
                }
                b':' if bytes
                    .get(i + 1)
                    .is_none_or(|n| n.is_ascii_whitespace() || *n == b'{' || *n == b'[') =>
                {
                    let k = line[token_start..i].trim().trim_start_matches("- ").trim();
                    let k = k.trim_matches(['"', '\'']);
                    if !k.is_empty() {
                        s.last_key = Some(k.to_string());
                    }
                    token_start = i + 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    s
}

/// The dotted path of the field at `offset` (a key, or a key's value):
/// block ancestors by indentation, then flow keys on the line. Sequence
/// items add no index.
fn field_path(doc: &str, offset: usize) -> String {
    let (ls, le) = line_bounds(doc, offset);
    let line = &doc[ls..le];
    let at = offset - ls;
    let flow = scan_flow(line, at);
    let mut keys: Vec<String> = flow.stack.iter().flatten().cloned().collect();
    if let Some(k) = flow
        .last_key
        .clone()
        .or_else(|| key_of(&line[at.min(line.len())..]))
    {
        keys.push(k);
    }
    let mut ancestors = Vec::new();
    if let Some((indent, _)) = block_columns(line) {
        let mut start = indent;
        let mut is_item = line[indent..].starts_with('-');
        for prev in doc[..ls].lines().rev() {
            let Some((pi, pk)) = block_columns(prev) else {
                continue;
            };
            // A parent's key is left of this node; a sequence may sit at its
            // parent's own column (`key:` over `- item`).
            let parent = if is_item { pk <= start } else { pk < start };
            if !parent {
                continue;
            }
            if let Some(k) = key_of(&prev[pk..]) {
                ancestors.push(k);
            }
            start = pi;
            is_item = prev[pi..].starts_with('-');
        }
    }
    ancestors.reverse();
    ancestors.extend(keys);
    ancestors.join(".")
}

/// Blank (with spaces) the `key: value` entry at `offset`, a key or its value.
/// Returns the key blanked, or `None` when the entry cannot be found safely.
fn blank_entry(doc: &mut String, offset: usize) -> Option<String> {
    let (ls, le) = line_bounds(doc, offset);
    let line = doc[ls..le].to_string();
    let at = offset - ls;
    let flow = scan_flow(&line, at);
    if !flow.stack.is_empty() {
        // Inside `{ … }` / `[ … ]` on this line: the entry runs to the next
        // `,` (blanked with it) or the closing bracket at the same depth.
        let bytes = line.as_bytes();
        let mut depth = 0usize;
        let mut quote = None;
        let mut end = None;
        for (i, &c) in bytes.iter().enumerate().skip(at) {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    b'"' | b'\'' => quote = Some(c),
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth == 0 => {
                        end = Some((i, false));
                        break;
                    }
                    b'}' | b']' => depth -= 1,
                    b',' if depth == 0 => {
                        end = Some((i + 1, true));
                        break;
                    }
                    _ => {}
                },
            }
        }
        let (end, took_comma) = end?;
        let mut start = flow.entry_start;
        if !took_comma && flow.after_comma {
            start -= 1; // the comma before the last entry
        }
        let key = key_of(&line[flow.entry_start..end])
            .or_else(|| flow.last_key.clone())
            .unwrap_or_default();
        blank(doc, ls + start, ls + end);
        return Some(key);
    }
    // A block entry: its line from the key on, and the lines nested under it.
    let (indent, key_col) = block_columns(&line)?;
    if at < key_col {
        return None;
    }
    let key = key_of(&line[key_col..])?;
    let mut end = le;
    let mut pos = (le + 1).min(doc.len());
    while pos < doc.len() {
        let next_end = doc[pos..].find('\n').map_or(doc.len(), |i| pos + i);
        let next = &doc[pos..next_end];
        match block_columns(next) {
            // A compact sequence (`key:` over `- item` at the same column) is nested too.
            Some((i, _)) if i < key_col || (i == key_col && !next[i..].starts_with('-')) => break,
            _ => end = next_end,
        }
        pos = next_end + 1;
    }
    let tail_start = pos.min(doc.len());
    blank(doc, ls + key_col, end);
    // A parent left without children would read as null: make it `{}`.
    let siblings_follow = doc[tail_start..]
        .lines()
        .find_map(block_columns)
        .is_some_and(|(i, _)| i >= key_col);
    let parent_is_bare_key = doc[..ls]
        .lines()
        .rev()
        .find_map(|l| block_columns(l).map(|c| (l, c)))
        .is_some_and(|(l, (_, pk))| {
            pk < key_col && key_of(&l[pk..]).is_some() && without_comment(l).ends_with(':')
        });
    let only_child_of_item = indent < key_col;
    if parent_is_bare_key && !siblings_follow && !only_child_of_item {
        doc.replace_range(ls + key_col..ls + key_col + 2, "{}");
    }
    Some(key)
}

/// A line without a trailing ` # comment`, trimmed at the end.
fn without_comment(line: &str) -> &str {
    line.split(" #").next().unwrap_or(line).trim_end()
}

/// Replace every character in `doc[start..end]` except newlines with a space.
fn blank(doc: &mut String, start: usize, end: usize) {
    let replaced: String = doc[start..end]
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    // Multi-byte characters become one space each: columns stay, bytes shift
    // only on this line, and offsets are recomputed from line:column anyway.
    doc.replace_range(start..end, &replaced);
}

/// Distinct files among `errors`.
pub fn files_with_errors(errors: &[PolicyError]) -> usize {
    let mut files: Vec<&str> = errors.iter().map(|e| e.file.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    files.len()
}

/// `N errors in M files` (singular for one).
pub fn summary(errors: &[PolicyError]) -> String {
    let n = errors.len();
    let m = files_with_errors(errors);
    format!(
        "{n} error{} in {m} file{}",
        if n == 1 { "" } else { "s" },
        if m == 1 { "" } else { "s" }
    )
}

/// What `spillway policy check` found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Policy files read.
    pub files: Vec<String>,
    /// Every error, per file in file order, then the cross-file ones.
    pub errors: Vec<PolicyError>,
    /// Policies that parsed and validated on their own.
    pub policies: usize,
    /// The set, when there were no errors at all.
    pub set: Option<PolicySet>,
}

impl CheckReport {
    /// Distinct files with at least one error.
    pub fn files_with_errors(&self) -> usize {
        files_with_errors(&self.errors)
    }

    /// `N errors in M files`.
    pub fn summary(&self) -> String {
        summary(&self.errors)
    }

    /// The human-readable report: one `file:line:column: field: message` per
    /// error, then the summary; or what was loaded.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for e in &self.errors {
            out.push_str(&e.to_string());
            out.push('\n');
        }
        match &self.set {
            Some(set) if self.errors.is_empty() => {
                let default = set.iter().filter(|p| p.namespace.is_none()).count();
                out.push_str(&format!(
                    "{} policies ok in {} file{} ({} namespaces, {} cluster default)\n",
                    set.len(),
                    self.files.len(),
                    if self.files.len() == 1 { "" } else { "s" },
                    set.namespaces().count(),
                    default
                ));
            }
            _ => {
                out.push_str(&self.summary());
                out.push('\n');
            }
        }
        out
    }

    /// The `--format json` document: `{"errors": [...], "summary": {...}}`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "errors": self.errors.iter().map(|e| serde_json::json!({
                "file": e.file,
                "line": e.line,
                "column": e.column,
                "field": e.field,
                "message": e.message,
            })).collect::<Vec<_>>(),
            "summary": {
                "errors": self.errors.len(),
                "files_with_errors": self.files_with_errors(),
                "files_checked": self.files.len(),
                "policies": self.policies,
                "text": self.summary(),
            },
        })
    }
}

/// Check policy files and directories (their `*.yaml`/`*.yml`, as the
/// extender reads them): every error of every file, then the conflicts
/// between the policies that are valid on their own.
pub fn check_paths(paths: &[PathBuf]) -> CheckReport {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            match policy_files(p) {
                Ok(fs) => files.extend(fs),
                Err(e) => errors.push(unlocated(p, format!("cannot read policy directory: {e}"))),
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut policies = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        match std::fs::read_to_string(f) {
            Ok(text) => policies.extend(parse_documents(&text, &name, &mut errors)),
            Err(e) => errors.push(unlocated(f, format!("cannot read: {e}"))),
        }
    }
    let count = policies.len();
    let set = match PolicySet::new(policies) {
        Ok(set) => Some(set),
        Err(more) => {
            errors.extend(more.0);
            None
        }
    };
    CheckReport {
        files: files.iter().map(|f| f.display().to_string()).collect(),
        policies: count,
        set: set.filter(|_| errors.is_empty()),
        errors,
    }
}

fn unlocated(path: &Path, message: String) -> PolicyError {
    PolicyError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        field: String::new(),
        message,
    }
}
