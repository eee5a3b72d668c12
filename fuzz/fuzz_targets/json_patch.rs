//! JSON patch (RFC 6902) through `Patch::parse` and `Patch::apply`, on a stored object. Input: the object as JSON,
//! NUL, the patch body. A patch that applies keeps the object's name, leaves the value its last `add` or `replace`
//! wrote, and changes nothing when it only tests; a refused patch is a 4xx.
#![no_main]

use bytes::Bytes;
use cls_api::fuzzing::Patch;
use cls_api::http::body::Body;
use json_patch::PatchOperation;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|input: &[u8]| {
    let (object, Some(patch)) = cls_fuzz::split_at_nul(input) else { return };
    let Some((_, object)) = cls_fuzz::stored_object(object) else { return };
    let body = Body { media_type: "application/json-patch+json".to_owned(), bytes: Bytes::copy_from_slice(patch) };
    let patch = match Patch::parse(&body) {
        Ok(patch) => patch,
        Err(error) => return assert!(error.code.is_client_error(), "{}: {}", error.code, error.message),
    };
    let Patch::Json(operations) = &patch else { panic!("a JSON patch body parsed as another kind of patch") };
    let result = match patch.apply(object.clone()) {
        Ok(result) => result,
        Err(error) => return assert!(error.code.is_client_error(), "{}: {}", error.code, error.message),
    };

    assert_eq!(result["metadata"]["name"], object["metadata"]["name"], "a patch that applied renamed the object");
    if operations.0.iter().all(|operation| matches!(operation, PatchOperation::Test(_))) {
        assert_eq!(result, object, "a patch of tests only changed the object");
    }
    let (path, written) = match operations.0.last() {
        Some(PatchOperation::Add(operation)) => (operation.path.as_str(), &operation.value),
        Some(PatchOperation::Replace(operation)) => (operation.path.as_str(), &operation.value),
        _ => return,
    };
    let found = match path.strip_suffix("/-").and_then(|parent| result.pointer(parent)).and_then(Value::as_array) {
        // appended to an array: its last element
        Some(items) => items.last(),
        // anything else, `-` too: in an object it names the member "-" (RFC 6901)
        None => result.pointer(path),
    };
    assert_eq!(found, Some(written), "the last operation wrote {written} at {path:?}");
});
