//! `fieldSelector`: for the fields each kind supports, any text either fails to parse or parses to a selector whose
//! canonical text parses back to the same selector, naming only supported fields.
#![no_main]

use cls_api::store::read::supported_fields;
use cls_core::Kind;
use cls_core::selector::{FieldRequirement, FieldSelector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else { return };
    for kind in Kind::ALL {
        let supported = supported_fields(kind);
        let Ok(selector) = FieldSelector::parse(text, supported) else { continue };

        let rendered = selector.to_string();
        let reparsed = FieldSelector::parse(&rendered, supported)
            .unwrap_or_else(|error| panic!("{text:?} renders as {rendered:?}, which does not parse: {error}"));
        assert_eq!(reparsed, selector, "{text:?} renders as {rendered:?}, which parses to another selector");

        for requirement in &selector.requirements {
            let (FieldRequirement::Equals { field, value } | FieldRequirement::NotEquals { field, value }) =
                requirement;
            assert!(supported.contains(&field.as_str()), "{field:?} is not a field of {kind}");
            assert_eq!(value.trim(), value, "values are trimmed");
            // An object whose field has exactly the value: `=` matches it, `!=` does not.
            let with_value = |asked: &str| (asked == field).then(|| value.clone());
            let single = FieldSelector { requirements: vec![requirement.clone()] };
            let equals = matches!(requirement, FieldRequirement::Equals { .. });
            assert_eq!(single.matches(with_value), equals, "{requirement} on {field}={value}");
        }
    }
});
