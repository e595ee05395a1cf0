//! Patch algorithms over `serde_json::Value`: JSON merge patch (RFC 7386),
//! JSON patch (RFC 6902), and an approximation of strategic merge patch.
//!
//! Strategic merge patch here is merge patch plus: lists whose field name is
//! in [`MERGE_KEYS`] merge element-wise by that key (e.g. `conditions` by
//! `type`, `containers` by `name`), `finalizers` merge as a set, `$patch:
//! delete|replace` directives and `$deleteFromPrimitiveList/<field>` are
//! honoured, other `$` directives are dropped. The real server derives merge
//! keys from the Go struct tags per path; a field name table is close enough
//! for the kinds this server serves. Server-side apply uses the same merge
//! (create-or-merge, no field ownership, no removal of fields a manager
//! stopped applying, no conflicts).

use serde_json::{Map, Value};

/// List fields merged element-wise by a key under strategic merge patch.
const MERGE_KEYS: &[(&str, &str)] = &[
    ("conditions", "type"),
    ("containers", "name"),
    ("initContainers", "name"),
    ("ephemeralContainers", "name"),
    ("containerStatuses", "name"),
    ("initContainerStatuses", "name"),
    ("ephemeralContainerStatuses", "name"),
    ("env", "name"),
    ("volumes", "name"),
    ("volumeMounts", "mountPath"),
    ("ports", "containerPort"),
    ("ownerReferences", "uid"),
    ("addresses", "type"),
    ("imagePullSecrets", "name"),
];

/// Primitive lists merged as sets under strategic merge patch.
const SET_LISTS: &[&str] = &["finalizers"];

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch_map {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Strategic merge patch (approximation; see module docs).
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch_map.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch_map {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (t.get_mut(field), v) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let merge_key = MERGE_KEYS.iter().find(|(f, _)| f == k).map(|(_, key)| *key);
        match (merge_key, v, t.get_mut(k)) {
            (Some(key), Value::Array(items), Some(Value::Array(existing))) => {
                merge_keyed_list(existing, items, key);
            }
            (None, Value::Array(items), Some(Value::Array(existing)))
                if SET_LISTS.contains(&k.as_str()) =>
            {
                for item in items {
                    if !existing.contains(item) {
                        existing.push(item.clone());
                    }
                }
            }
            (Some(_), Value::Array(items), _) => {
                let cleaned = items
                    .iter()
                    .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                    .map(strip_directives)
                    .collect();
                t.insert(k.clone(), Value::Array(cleaned));
            }
            _ => strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v),
        }
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_keyed_list(existing: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let Some(id) = item.get(key) else {
            // Items without the merge key cannot be matched: append.
            existing.push(strip_directives(item));
            continue;
        };
        let pos = existing.iter().position(|e| e.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut existing[i], item),
            (None, false) => existing.push(strip_directives(item)),
        }
    }
}

/// Why a JSON patch could not be applied.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPatchError(pub String);

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
/// All-or-nothing: on error the target is left unchanged.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), JsonPatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| JsonPatchError("a JSON patch must be an array of operations".into()))?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let field = |name: &str| -> Result<&str, JsonPatchError> {
            op.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| JsonPatchError(format!("operation {i}: missing '{name}'")))
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| JsonPatchError(format!("operation {i}: missing 'value'")))
        };
        let path = field("path")?;
        match field("op")? {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let from = field("from")?;
                let v = remove(&mut doc, from)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let from = field("from")?;
                let v = pointer(&doc, from)?.clone();
                add(&mut doc, path, v)?;
            }
            "test" => {
                if *pointer(&doc, path)? != value()? {
                    return Err(JsonPatchError(format!(
                        "operation {i}: test failed at {path}"
                    )));
                }
            }
            other => {
                return Err(JsonPatchError(format!(
                    "operation {i}: unknown op {other:?}"
                )));
            }
        }
    }
    *target = doc;
    Ok(())
}

fn split_pointer(path: &str) -> Result<Vec<String>, JsonPatchError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| JsonPatchError(format!("invalid JSON pointer {path:?}")))?;
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn pointer<'a>(doc: &'a Value, path: &str) -> Result<&'a Value, JsonPatchError> {
    let mut cur = doc;
    for seg in split_pointer(path)? {
        cur = match cur {
            Value::Object(m) => m.get(&seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| JsonPatchError(format!("path {path:?} does not exist")))?;
    }
    Ok(cur)
}

fn parent<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), JsonPatchError> {
    let mut segs = split_pointer(path)?;
    let last = segs
        .pop()
        .ok_or_else(|| JsonPatchError("cannot operate on the whole document".into()))?;
    let mut cur = doc;
    for seg in segs {
        cur = match cur {
            Value::Object(m) => m.get_mut(&seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| JsonPatchError(format!("path {path:?} does not exist")))?;
    }
    Ok((cur, last))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), JsonPatchError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (p, last) = parent(doc, path)?;
    match p {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            let idx = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| JsonPatchError(format!("invalid array index in {path:?}")))?
            };
            a.insert(idx, value);
            Ok(())
        }
        _ => Err(JsonPatchError(format!(
            "parent of {path:?} is not a container"
        ))),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, JsonPatchError> {
    let (p, last) = parent(doc, path)?;
    let missing = || JsonPatchError(format!("path {path:?} does not exist"));
    match p {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let idx = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(missing)?;
            Ok(a.remove(idx))
        }
        _ => Err(missing()),
    }
}
