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

use crate::http::error::ApiError;

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
/// `metadata.managedFields` updated. A configuration that is not an object, or whose `metadata` is not an object,
/// is a 400 (`metadata: null` counts as no metadata), as kube-apiserver refuses what does not decode into an object.
pub fn apply(current: Option<&Value>, applied: &Value, manager: &str, now: &str) -> Result<Value, ApiError> {
    let mut applied_body = applied.clone();
    let Some(applied_fields) = applied_body.as_object_mut() else {
        return Err(ApiError::bad_request("the applied configuration must be an object"));
    };
    match applied_fields.get_mut("metadata") {
        None => {}
        Some(Value::Null) => {
            applied_fields.remove("metadata");
        }
        Some(Value::Object(metadata)) => {
            metadata.remove("managedFields");
            metadata.remove("resourceVersion");
        }
        Some(_) => return Err(ApiError::bad_request("metadata of the applied configuration must be an object")),
    }
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
    merge(&mut result, &applied_body);
    let entry = json!({
        "manager": manager, "operation": "Apply", "apiVersion": cls_core::API_VERSION, "time": now,
        "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&applied_paths),
    });
    match previous {
        Some(index) => managed[index] = entry,
        None => managed.push(entry),
    }
    // Both the configuration and the stored object are objects, so the merge is one and its metadata is an object
    // or missing; a stored object is never anything else, but a broken one must not panic the request either.
    let Some(fields) = result.as_object_mut() else {
        return Err(ApiError::bad_request("the applied configuration must be an object"));
    };
    let metadata = fields.entry("metadata").or_insert_with(|| json!({}));
    let Some(metadata) = metadata.as_object_mut() else {
        return Err(ApiError::bad_request("metadata of the object must be an object"));
    };
    metadata.insert("managedFields".into(), Value::Array(managed));
    Ok(result)
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
            apply(None, &json!({"metadata": {"name": "a"}, "spec": {"replicas": 2, "image": "x"}}), "kubectl", "t")
                .unwrap();
        let mut current = first.clone();
        current["spec"]["healthCheck"] = json!({"tcp": {"port": 80}});
        let second =
            apply(Some(&current), &json!({"metadata": {"name": "a"}, "spec": {"replicas": 3}}), "kubectl", "t")
                .unwrap();
        assert_eq!(second["spec"], json!({"replicas": 3, "healthCheck": {"tcp": {"port": 80}}}));
        assert_eq!(second["metadata"]["managedFields"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn dropping_the_last_field_of_an_object_removes_the_object_but_not_the_spec() {
        let first =
            apply(None, &json!({"metadata": {"name": "a"}, "spec": {"release": {"version": "1"}}}), "m", "t").unwrap();
        let second =
            apply(Some(&first), &json!({"metadata": {"name": "a"}, "spec": {"platform": {"type": "x"}}}), "m", "t")
                .unwrap();
        assert_eq!(second["spec"], json!({"platform": {"type": "x"}}));
        let third = apply(Some(&second), &json!({"metadata": {"name": "a"}}), "m", "t").unwrap();
        assert_eq!(third["spec"], json!({}));
    }

    #[test]
    fn another_manager_applying_only_an_annotation_keeps_the_spec() {
        let first = apply(None, &json!({"metadata": {"name": "a"}, "spec": {"replicas": 2}}), "kubectl", "t").unwrap();
        let annotation = json!({"metadata": {"name": "a", "annotations": {"last": "x"}}});
        let second = apply(Some(&first), &annotation, "kubectl-last-applied", "t").unwrap();
        assert_eq!(second["spec"], json!({"replicas": 2}));
        assert_eq!(second["metadata"]["annotations"]["last"], "x");
        assert_eq!(second["metadata"]["managedFields"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_configuration_that_is_not_an_object_or_has_no_object_metadata_is_a_bad_request() {
        // found by the apply_patch fuzz target: these panicked on `result["metadata"]["managedFields"] = ...`
        let current = apply(None, &json!({"metadata": {"name": "a"}, "spec": {"replicas": 2}}), "m", "t").unwrap();
        for applied in [json!("x"), json!([1]), json!(null), json!({"metadata": 5}), json!({"metadata": ["a"]})] {
            for current in [None, Some(&current)] {
                let error = apply(current, &applied, "m", "t").expect_err(&applied.to_string());
                assert_eq!(error.code, axum::http::StatusCode::BAD_REQUEST, "{applied}");
            }
        }
    }

    #[test]
    fn null_metadata_in_the_configuration_is_no_metadata() {
        let current = apply(None, &json!({"metadata": {"name": "a", "labels": {"x": "1"}}}), "m", "t").unwrap();
        let second = apply(Some(&current), &json!({"metadata": null, "spec": {"replicas": 2}}), "other", "t").unwrap();
        assert_eq!(second["metadata"]["name"], "a");
        assert_eq!(second["metadata"]["labels"], json!({"x": "1"}));
        assert_eq!(second["metadata"]["managedFields"].as_array().map(Vec::len), Some(2));
    }
}
