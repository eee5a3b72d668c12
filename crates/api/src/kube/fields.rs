//! Unknown-field detection for `fieldValidation` (Strict: 400, Warn: `Warning` header, Ignore), by walking a
//! request document against the kind's structural schema.

use std::sync::LazyLock;

use cls_core::Kind;
use serde_json::Value;

const TOP_LEVEL: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
const METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "generateName",
    "selfLink",
];

static SCHEMAS: LazyLock<Vec<(Kind, Value)>> =
    LazyLock::new(|| Kind::ALL.into_iter().map(|kind| (kind, cls_core::crd::schema(kind))).collect());

fn schema(kind: Kind) -> &'static Value {
    &SCHEMAS.iter().find(|(candidate, _)| *candidate == kind).expect("a schema per kind").1
}

/// Paths of fields in `document` that the kind's schema does not know, e.g. `spec.colour`.
pub fn unknown_fields(kind: Kind, document: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    let Value::Object(fields) = document else {
        return unknown;
    };
    for (key, value) in fields {
        match key.as_str() {
            "metadata" => {
                if let Value::Object(metadata) = value {
                    unknown.extend(
                        metadata
                            .keys()
                            .filter(|key| !METADATA.contains(&key.as_str()))
                            .map(|key| format!("metadata.{key}")),
                    );
                }
            }
            "spec" | "status" => walk(&schema(kind)["properties"][key], value, key, &mut unknown),
            other if !TOP_LEVEL.contains(&other) => unknown.push(other.to_owned()),
            _ => {}
        }
    }
    unknown
}

fn walk(schema: &Value, value: &Value, path: &str, unknown: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(fields) => {
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (key, field) in fields {
                    match properties.get(key) {
                        Some(field_schema) => walk(field_schema, field, &format!("{path}.{key}"), unknown),
                        None => unknown.push(format!("{path}.{key}")),
                    }
                }
            } else if let Some(additional) = schema.get("additionalProperties").filter(|schema| schema.is_object()) {
                for (key, field) in fields {
                    walk(additional, field, &format!("{path}.{key}"), unknown);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    walk(item_schema, item, &format!("{path}[{index}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// What the request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(format!("fieldValidation must be one of Strict, Warn or Ignore, got {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_named_with_their_paths() {
        let document = json!({
            "apiVersion": "cls.dev/v1alpha1", "kind": "Service", "extra": 1,
            "metadata": {"name": "web", "colour": "red"},
            "spec": {"clusterRef": {"name": "dev", "typo": true}, "image": "x", "ports": [{"port": 80, "proto": "TCP"}]},
        });
        assert_eq!(
            unknown_fields(Kind::Service, &document),
            vec!["extra", "metadata.colour", "spec.clusterRef.typo", "spec.ports[0].proto"]
        );
    }

    #[test]
    fn free_form_config_is_not_checked() {
        let document = json!({"spec": {"platform": {"type": "gcp", "config": {"anything": {"goes": 1}}}}});
        assert!(unknown_fields(Kind::Cluster, &document).is_empty());
    }
}
