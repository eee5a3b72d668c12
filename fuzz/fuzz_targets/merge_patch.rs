//! JSON merge patch (RFC 7386) through `Patch::parse` and `Patch::apply`, on a stored object. Input: the object as
//! JSON, NUL, the patch body. A patch that applies gives exactly the RFC 7386 result and applying it again changes
//! nothing; a refused patch is a 4xx.
#![no_main]

use bytes::Bytes;
use cls_api::fuzzing::Patch;
use cls_api::http::body::Body;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|input: &[u8]| {
    let (object, Some(patch)) = cls_fuzz::split_at_nul(input) else { return };
    let Some((_, object)) = cls_fuzz::stored_object(object) else { return };
    for media_type in ["application/merge-patch+json", "application/json"] {
        let body = Body { media_type: media_type.to_owned(), bytes: Bytes::copy_from_slice(patch) };
        let patch = match Patch::parse(&body) {
            Ok(patch) => patch,
            Err(error) => {
                assert!(error.code.is_client_error(), "{}: {}", error.code, error.message);
                return;
            }
        };
        let Patch::Merge(document) = &patch else { panic!("{media_type} parsed as another kind of patch") };
        match patch.apply(object.clone()) {
            Ok(once) => {
                assert_merged(&object, document, &once, "");
                let twice = patch.apply(once.clone()).expect("a merge patch that applied once applies again");
                assert_eq!(twice, once, "applying the same merge patch twice changed the object");
            }
            Err(error) => assert!(error.code.is_client_error(), "{}: {}", error.code, error.message),
        }
    }
});

/// RFC 7386 section 2, as a check: each patch member set to null is gone, an object member is merged into the
/// target's member, any other member replaces it, and members the patch does not name are unchanged.
fn assert_merged(target: &Value, patch: &Value, result: &Value, at: &str) {
    let Value::Object(members) = patch else {
        return assert_eq!(result, patch, "at {at:?} a non-object patch replaces the target");
    };
    let Value::Object(fields) = result else { panic!("at {at:?} an object patch gave {result}") };
    for (key, value) in members {
        let path = format!("{at}/{key}");
        match value {
            Value::Null => assert!(!fields.contains_key(key), "{path} was set to null but is {:?}", fields.get(key)),
            _ => {
                let Some(merged) = fields.get(key) else { panic!("{path} is missing") };
                assert_merged(target.get(key).unwrap_or(&Value::Null), value, merged, &path);
            }
        }
    }
    let unnamed = |key: &&String| !members.contains_key(*key);
    for key in fields.keys().filter(unnamed) {
        assert_eq!(Some(&fields[key]), target.get(key), "{at}/{key} is not in the patch but changed");
    }
    if let Value::Object(before) = target {
        for key in before.keys().filter(unnamed) {
            assert!(fields.contains_key(key), "{at}/{key} is not in the patch but was removed");
        }
    }
}
