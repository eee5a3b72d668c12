//! The manifest decoder: a request body (JSON or YAML, as `http::body` reads it) into a validated `Manifest` of a
//! kind. Input: one byte choosing the format, the kind and what the URL names, then the body. A decoded document
//! re-encodes (JSON and YAML) to the same document; a decoded manifest re-encodes to a document that decodes, as JSON
//! and as YAML, to the same manifest.
#![no_main]

use cls_api::http::body::parse_document;
use cls_core::Kind;
use cls_core::manifest::{self, Expect, Manifest};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const JSON: &str = "application/json";
const YAML: &str = "application/yaml";

fuzz_target!(|input: &[u8]| {
    let Some((&choice, body)) = input.split_first() else { return };
    let media_type = if choice & 1 == 0 { JSON } else { YAML };
    let kind = Kind::ALL[usize::from(choice >> 1) % 3];
    let expect = match (choice >> 1) / 3 % 3 {
        0 => Expect::default(),
        1 => Expect { name: Some("web"), namespace: None },
        _ => Expect { name: Some("web"), namespace: Some("team-a") },
    };
    let Ok(document) = parse_document(media_type, body) else { return };
    assert!(!cls_fuzz::contains_nul(&document), "a decoded document holds a NUL: {document}");
    assert_reencodes(&document, |decoded| assert_eq!(decoded, &document, "the document changed on re-encoding"));

    let Ok(manifest) = manifest::parse(kind, document, expect) else { return };
    let reencoded = manifest.to_document();
    assert_eq!(reparse(kind, reencoded.clone(), expect), manifest);
    assert_reencodes(&reencoded, |decoded| assert_eq!(reparse(kind, decoded.clone(), expect), manifest));
});

fn reparse(kind: Kind, document: Value, expect: Expect<'_>) -> Manifest {
    manifest::parse(kind, document.clone(), expect)
        .unwrap_or_else(|error| panic!("the re-encoded manifest {document} does not decode: {error:?}"))
}

/// Writes the document as JSON and as YAML, decodes each with the body decoder and hands it to `check`.
fn assert_reencodes(document: &Value, check: impl Fn(&Value)) {
    let json = serde_json::to_vec(document).expect("a JSON value serializes to JSON");
    let yaml = serde_norway::to_string(document).expect("a JSON value serializes to YAML");
    for (media_type, bytes) in [(JSON, json.as_slice()), (YAML, yaml.as_bytes())] {
        let decoded = parse_document(media_type, bytes).unwrap_or_else(|error| {
            panic!(
                "{document} written as {media_type} does not decode: {}\n{}",
                error.message,
                String::from_utf8_lossy(bytes)
            )
        });
        check(&decoded);
    }
}
