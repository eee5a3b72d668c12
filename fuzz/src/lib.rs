//! Helpers shared by the fuzz targets: splitting one input into parts and building the documents the API would
//! hand to the code under test.

use cls_api::store::StoredObject;
use cls_core::Kind;
use serde_json::Value;

/// Time stamp passed to server-side apply: the targets compare results, so it is fixed.
pub const NOW: &str = "2026-01-01T00:00:00Z";

/// The part before the first NUL and the part after it (`None` without a NUL). JSON and YAML documents cannot hold
/// a raw NUL byte, so it separates two documents in one input.
pub fn split_at_nul(input: &[u8]) -> (&[u8], Option<&[u8]>) {
    match input.iter().position(|&byte| byte == 0) {
        Some(index) => (&input[..index], Some(&input[index + 1..])),
        None => (input, None),
    }
}

/// A stored object as the API renders it (`StoredObject::to_json`), read from a JSON document with at least
/// `kind`, `metadata.{uid, name, resourceVersion, creationTimestamp}`: the only shape the patch code is given.
pub fn stored_object(bytes: &[u8]) -> Option<(Kind, Value)> {
    let document: Value = serde_json::from_slice(bytes).ok()?;
    let kind = document["kind"].as_str().and_then(Kind::from_kind_name)?;
    let object = StoredObject::from_json(kind, &document)?;
    Some((kind, object.to_json()))
}

/// The JSON pointer (RFC 6901) of a path of object keys.
pub fn pointer<S: AsRef<str>>(segments: &[S]) -> String {
    segments.iter().map(|segment| format!("/{}", segment.as_ref().replace('~', "~0").replace('/', "~1"))).collect()
}

/// Whether a string anywhere in the document (keys included) holds a NUL character.
pub fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(fields) => fields.iter().any(|(key, field)| key.contains('\0') || contains_nul(field)),
        _ => false,
    }
}
