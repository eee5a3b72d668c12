//! Server-side apply (`application/apply-patch+yaml`): each field manager owns the set of fields it applied
//! (`metadata.managedFields`, `FieldsV1`). An apply merges the applied document into the object and removes the
//! fields the same manager applied before and has now dropped; fields of other managers and of plain updates stay.
//! So kubectl's second apply with `fieldManager=kubectl-last-applied` (only the last-applied annotation) leaves
//! the spec alone.
//!
//! Left out: conflict detection between managers (`force=false` never answers 409) and ownership of list items
//! by key; lists are owned whole.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

type FieldPath = Vec<String>;

/// The applied fields a manager can own: `spec`, `metadata.labels`, `metadata.annotations`, `metadata.finalizers`.
fn owned_paths(document: &Value) -> BTreeSet<FieldPath> {
    let mut paths = BTreeSet::new();
    if let Some(spec) = document.get("spec") {
        leaves(spec, &mut vec!["spec".into()], &mut paths);
    }
    for key in ["labels", "annotations"] {
        if let Some(Value::Object(map)) = document["metadata"].get(key) {
            for name in map.keys() {
                paths.insert(vec!["metadata".into(), key.into(), name.clone()]);
            }
        }
    }
    if document["metadata"].get("finalizers").is_some() {
        paths.insert(vec!["metadata".into(), "finalizers".into()]);
    }
    paths
}

fn leaves(value: &Value, prefix: &mut FieldPath, paths: &mut BTreeSet<FieldPath>) {
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            for (key, field) in fields {
                prefix.push(key.clone());
                leaves(field, prefix, paths);
                prefix.pop();
            }
        }
        _ => {
            paths.insert(prefix.clone());
        }
    }
}

/// `{"f:spec": {"f:replicas": {}}}` for the paths.
fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for segment in path {
            node = node
                .entry(format!("f:{segment}"))
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("fieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

fn from_fields_v1(fields: &Value) -> BTreeSet<FieldPath> {
    fn walk(node: &Value, prefix: &mut FieldPath, paths: &mut BTreeSet<FieldPath>) {
        let Some(children) = node.as_object().filter(|children| !children.is_empty()) else {
            paths.insert(prefix.clone());
            return;
        };
        for (key, child) in children {
            let Some(segment) = key.strip_prefix("f:") else { continue };
            prefix.push(segment.to_owned());
            walk(child, prefix, paths);
            prefix.pop();
        }
    }
    let mut paths = BTreeSet::new();
    if fields.as_object().is_some_and(|fields| !fields.is_empty()) {
        walk(fields, &mut Vec::new(), &mut paths);
    }
    paths
}

/// Removes the field at `path`, and the objects above it that it leaves empty (below the top level: `spec` and
/// `metadata` stay).
fn remove_path(document: &mut Value, path: &[String]) {
    fn remove(node: &mut Value, path: &[String], depth: usize) {
        let Some(fields) = node.as_object_mut() else { return };
        match path {
            [] => {}
            [last] => {
                fields.remove(last);
            }
            [first, rest @ ..] => {
                let Some(child) = fields.get_mut(first) else { return };
                remove(child, rest, depth + 1);
                if depth >= 1 && child.as_object().is_some_and(Map::is_empty) {
                    fields.remove(first);
                }
            }
        }
    }
    remove(document, path, 0);
}

/// Objects merge field by field; anything else is replaced.
fn merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(target), Value::Object(applied)) => {
            for (key, value) in applied {
                match target.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => merge(existing, value),
                    _ => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, applied) => *target = applied.clone(),
    }
}

/// The object after `manager` applies `applied` over `current` (`None`: the object does not exist yet), with its
/// `metadata.managedFields` updated.
pub fn apply(current: Option<&Value>, applied: &Value, manager: &str, now: &str) -> Value {
    let applied_paths = owned_paths(applied);
    let mut managed: Vec<Value> =
        current.and_then(|current| current["metadata"]["managedFields"].as_array().cloned()).unwrap_or_default();
    let previous = managed.iter().position(|entry| entry["manager"] == manager && entry["operation"] == "Apply");
    let mut result = current.cloned().unwrap_or_else(|| json!({}));
    if let Some(index) = previous {
        for dropped in from_fields_v1(&managed[index]["fieldsV1"]).difference(&applied_paths) {
            remove_path(&mut result, dropped);
        }
    }
    let mut applied_body = applied.clone();
    if let Some(metadata) = applied_body.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
        metadata.remove("resourceVersion");
    }
    merge(&mut result, &applied_body);
    let entry = json!({
        "manager": manager, "operation": "Apply", "apiVersion": cls_core::API_VERSION, "time": now,
        "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&applied_paths),
    });
    match previous {
        Some(index) => managed[index] = entry,
        None => managed.push(entry),
    }
    result["metadata"]["managedFields"] = Value::Array(managed);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_round_trips() {
        let paths = owned_paths(&json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": {"y": 1}, "z": [1]}}));
        assert_eq!(from_fields_v1(&to_fields_v1(&paths)), paths);
    }

    #[test]
    fn a_field_the_manager_dropped_is_removed_and_others_stay() {
        let first =
            apply(None, &json!({"metadata": {"name": "a"}, "spec": {"replicas": 2, "image": "x"}}), "kubectl", "t");
        let mut current = first.clone();
        current["spec"]["healthCheck"] = json!({"tcp": {"port": 80}});
        let second =
            apply(Some(&current), &json!({"metadata": {"name": "a"}, "spec": {"replicas": 3}}), "kubectl", "t");
        assert_eq!(second["spec"], json!({"replicas": 3, "healthCheck": {"tcp": {"port": 80}}}));
        assert_eq!(second["metadata"]["managedFields"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn dropping_the_last_field_of_an_object_removes_the_object_but_not_the_spec() {
        let first = apply(None, &json!({"metadata": {"name": "a"}, "spec": {"release": {"version": "1"}}}), "m", "t");
        let second =
            apply(Some(&first), &json!({"metadata": {"name": "a"}, "spec": {"platform": {"type": "x"}}}), "m", "t");
        assert_eq!(second["spec"], json!({"platform": {"type": "x"}}));
        let third = apply(Some(&second), &json!({"metadata": {"name": "a"}}), "m", "t");
        assert_eq!(third["spec"], json!({}));
    }

    #[test]
    fn another_manager_applying_only_an_annotation_keeps_the_spec() {
        let first = apply(None, &json!({"metadata": {"name": "a"}, "spec": {"replicas": 2}}), "kubectl", "t");
        let annotation = json!({"metadata": {"name": "a", "annotations": {"last": "x"}}});
        let second = apply(Some(&first), &annotation, "kubectl-last-applied", "t");
        assert_eq!(second["spec"], json!({"replicas": 2}));
        assert_eq!(second["metadata"]["annotations"]["last"], "x");
        assert_eq!(second["metadata"]["managedFields"].as_array().unwrap().len(), 2);
    }
}
