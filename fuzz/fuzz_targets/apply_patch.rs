//! Server-side apply (`application/apply-patch+yaml`): the applied configuration as the body decoder reads it, merged
//! into a stored object (or none, for a create). Input: optionally the object as JSON and NUL, then the applied
//! YAML. Applying never panics, applying the same configuration again changes nothing, every applied spec leaf,
//! label and annotation is in the result, and the manager owns exactly one Apply entry.
#![no_main]

use cls_api::fuzzing::server_side_apply;
use cls_api::http::body::parse_document;
use cls_core::manifest::{self, Expect};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const MANAGER: &str = "fuzz";

fuzz_target!(|input: &[u8]| {
    let (current, applied) = match cls_fuzz::split_at_nul(input) {
        (object, Some(applied)) => match cls_fuzz::stored_object(object) {
            Some((kind, object)) => (Some((kind, object)), applied),
            None => return,
        },
        (applied, None) => (None, applied),
    };
    let Ok(applied) = parse_document("application/apply-patch+yaml", applied) else { return };
    let object = current.as_ref().map(|(_, object)| object);
    let once = match server_side_apply(object, &applied, MANAGER, cls_fuzz::NOW) {
        Ok(once) => once,
        Err(error) => return assert!(error.code.is_client_error(), "{}: {}", error.code, error.message),
    };

    let twice = server_side_apply(Some(&once), &applied, MANAGER, cls_fuzz::NOW)
        .expect("a configuration that applied once applies again");
    assert_eq!(twice, once, "applying the same configuration twice changed the object");

    let mut leaves = Vec::new();
    if let Some(spec) = applied.get("spec") {
        spec_leaves(spec, &mut vec!["spec".to_owned()], &mut leaves);
    }
    for (path, value) in leaves {
        let pointer = cls_fuzz::pointer(&path);
        let found = once.pointer(&pointer);
        match value {
            // an empty object merges into what is there
            Value::Object(_) => assert!(found.is_some_and(Value::is_object), "{pointer} is {found:?}, not an object"),
            _ => assert_eq!(found, Some(value), "the applied {pointer} is missing"),
        }
    }
    for map in ["labels", "annotations"] {
        if let Some(Value::Object(entries)) = applied["metadata"].get(map) {
            for (key, value) in entries {
                assert_eq!(&once["metadata"][map][key], value, "the applied metadata.{map}.{key} is missing");
            }
        }
    }
    let entries = once["metadata"]["managedFields"].as_array().expect("managedFields is a list");
    let owned = entries.iter().filter(|entry| entry["manager"] == MANAGER && entry["operation"] == "Apply");
    assert_eq!(owned.count(), 1, "the manager owns one Apply entry: {entries:?}");

    let kind = current.map_or(cls_core::Kind::Cluster, |(kind, _)| kind);
    let _ = manifest::parse(kind, once, Expect { name: Some("fuzz"), namespace: Some("default") });
});

fn spec_leaves<'a>(value: &'a Value, path: &mut Vec<String>, leaves: &mut Vec<(Vec<String>, &'a Value)>) {
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            for (key, field) in fields {
                path.push(key.clone());
                spec_leaves(field, path, leaves);
                path.pop();
            }
        }
        _ => leaves.push((path.clone(), value)),
    }
}
