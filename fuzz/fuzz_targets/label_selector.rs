//! `labelSelector`: any text either fails to parse or parses to a selector whose canonical text parses back to the
//! same selector; negated requirements match exactly the label sets their positive forms do not.
#![no_main]

use std::collections::BTreeMap;

use cls_core::selector::{LabelRequirement, LabelSelector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (selector, labels) = cls_fuzz::split_at_nul(input);
    let Ok(text) = std::str::from_utf8(selector) else { return };
    let Ok(selector) = LabelSelector::parse(text) else { return };

    let rendered = selector.to_string();
    let reparsed = LabelSelector::parse(&rendered)
        .unwrap_or_else(|error| panic!("{text:?} renders as {rendered:?}, which does not parse: {error}"));
    assert_eq!(reparsed, selector, "{text:?} renders as {rendered:?}, which parses to another selector");
    assert_eq!(reparsed.to_string(), rendered, "the canonical text is a fixed point");

    for labels in label_sets(&selector, labels) {
        for requirement in &selector.requirements {
            let (positive, negative) = complements(requirement);
            assert_ne!(positive.matches(&labels), negative.matches(&labels), "{positive} vs {negative} on {labels:?}");
        }
        let all = selector.requirements.iter().all(|requirement| requirement.matches(&labels));
        assert_eq!(selector.matches(&labels), all, "{rendered:?} on {labels:?}");
    }
});

/// The requirement and its negation, in either order.
fn complements(requirement: &LabelRequirement) -> (LabelRequirement, LabelRequirement) {
    use LabelRequirement::*;
    let negation = match requirement.clone() {
        Equals { key, value } => NotEquals { key, value },
        NotEquals { key, value } => Equals { key, value },
        In { key, values } => NotIn { key, values },
        NotIn { key, values } => In { key, values },
        Exists { key } => DoesNotExist { key },
        DoesNotExist { key } => Exists { key },
    };
    (requirement.clone(), negation)
}

/// Label sets that hit both outcomes: none, every key with the first value the selector names for it, every key
/// with another value, and `key=value` lines from the rest of the input.
fn label_sets(selector: &LabelSelector, rest: Option<&[u8]>) -> Vec<BTreeMap<String, String>> {
    use LabelRequirement::*;
    let named = |requirement: &LabelRequirement| match requirement {
        Equals { value, .. } | NotEquals { value, .. } => Some(value.clone()),
        In { values, .. } | NotIn { values, .. } => values.first().cloned(),
        Exists { .. } | DoesNotExist { .. } => None,
    };
    let keys = selector.requirements.iter();
    let same = keys.clone().map(|r| (r.key().to_owned(), named(r).unwrap_or_default())).collect();
    let other = keys.map(|r| (r.key().to_owned(), format!("{}-other", named(r).unwrap_or_default()))).collect();
    let given = String::from_utf8_lossy(rest.unwrap_or_default())
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    vec![BTreeMap::new(), same, other, given]
}
