//! Label and field selectors: the `labelSelector` and `fieldSelector` list/watch query parameters.
//!
//! Parsing follows Kubernetes (`k8s.io/apimachinery/pkg/labels` and `pkg/fields`) and yields a
//! small public AST that is matched in memory ([`LabelSelector::matches`],
//! [`FieldSelector::matches`]) or translated to SQL by the storage layer. Bad input is always an
//! error, never a panic.

use std::collections::BTreeMap;
use std::fmt;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `key=value` or `key==value`: the key is present with exactly this value.
    Equals { key: String, value: String },
    /// `key!=value`: the key is absent or has another value.
    NotEquals { key: String, value: String },
    /// `key in (a,b)`: the key is present with one of the values.
    In { key: String, values: Vec<String> },
    /// `key notin (a,b)`: the key is absent or has none of the values.
    NotIn { key: String, values: Vec<String> },
    /// `key`: the key is present, with any value.
    Exists { key: String },
    /// `!key`: the key is absent.
    DoesNotExist { key: String },
}

impl LabelRequirement {
    /// The label key the requirement is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Equals { key, .. }
            | Self::NotEquals { key, .. }
            | Self::In { key, .. }
            | Self::NotIn { key, .. }
            | Self::Exists { key }
            | Self::DoesNotExist { key } => key,
        }
    }

    /// Whether an object with these labels satisfies the requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let actual = labels.get(self.key());
        match self {
            Self::Equals { value, .. } => actual == Some(value),
            Self::NotEquals { value, .. } => actual != Some(value),
            Self::In { values, .. } => actual.is_some_and(|a| values.contains(a)),
            Self::NotIn { values, .. } => !actual.is_some_and(|a| values.contains(a)),
            Self::Exists { .. } => actual.is_some(),
            Self::DoesNotExist { .. } => actual.is_none(),
        }
    }
}

/// The canonical text of the requirement (`key in (a,b)`), which [`LabelSelector::parse`] reads back.
impl fmt::Display for LabelRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Equals { key, value } => write!(f, "{key}={value}"),
            Self::NotEquals { key, value } => write!(f, "{key}!={value}"),
            Self::In { key, values } => write!(f, "{key} in ({})", values.join(",")),
            Self::NotIn { key, values } => write!(f, "{key} notin ({})", values.join(",")),
            Self::Exists { key } => write!(f, "{key}"),
            Self::DoesNotExist { key } => write!(f, "!{key}"),
        }
    }
}

/// A parsed label selector: the AND of its requirements. No requirements selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<LabelRequirement>,
}

impl LabelSelector {
    /// Parses a selector such as `app=web,tier in (a,b),!legacy`. Empty or blank input is the
    /// empty selector.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut parser = Parser { tokens: lex(input), pos: 0 };
        let mut requirements = Vec::new();
        if parser.peek().is_none() {
            return Ok(Self::default());
        }
        loop {
            requirements.push(parser.requirement()?);
            match parser.next() {
                None => return Ok(Self { requirements }),
                Some(",") => {}
                Some(t) => return Err(unexpected(t, "',' or end of selector")),
            }
        }
    }

    /// Whether an object with these labels satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// The canonical text of the selector, requirements joined by `,`; the empty selector is the empty string.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_joined(f, &self.requirements)
    }
}

fn write_joined(f: &mut fmt::Formatter<'_>, requirements: &[impl fmt::Display]) -> fmt::Result {
    for (index, requirement) in requirements.iter().enumerate() {
        if index > 0 {
            f.write_str(",")?;
        }
        write!(f, "{requirement}")?;
    }
    Ok(())
}

/// One requirement of a field selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldRequirement {
    /// `field=value` or `field==value`.
    Equals { field: String, value: String },
    /// `field!=value`.
    NotEquals { field: String, value: String },
}

/// The canonical text of the requirement (`field=value`, `field!=value`).
impl fmt::Display for FieldRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Equals { field, value } => write!(f, "{field}={value}"),
            Self::NotEquals { field, value } => write!(f, "{field}!={value}"),
        }
    }
}

/// A parsed field selector: the AND of its requirements. No requirements selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses `field=value`, `field==value` and `field!=value` terms separated by commas.
    /// `supported` lists the field paths the resource allows (e.g. `["metadata.name",
    /// "metadata.namespace"]`); any other field is an error naming the field, like
    /// kube-apiserver's `field label not supported: spec.foo`.
    pub fn parse(input: &str, supported: &[&str]) -> Result<Self, SelectorError> {
        if input.trim().is_empty() {
            return Ok(Self::default());
        }
        let requirements = input.split(',').map(|term| parse_field_term(term, supported)).collect::<Result<_, _>>()?;
        Ok(Self { requirements })
    }

    /// `value_of` returns the value of a supported field for an object. As in Kubernetes, a
    /// field it has no value for (`None`) compares as the empty string.
    pub fn matches(&self, value_of: impl Fn(&str) -> Option<String>) -> bool {
        let actual = |field: &str| value_of(field).unwrap_or_default();
        self.requirements.iter().all(|r| match r {
            FieldRequirement::Equals { field, value } => actual(field) == *value,
            FieldRequirement::NotEquals { field, value } => actual(field) != *value,
        })
    }
}

/// The canonical text of the selector, which [`FieldSelector::parse`] reads back.
impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_joined(f, &self.requirements)
    }
}

/// Why a label or field selector was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SelectorError {
    #[error("unexpected end of selector")]
    UnexpectedEnd,
    #[error("unexpected {found:?} in selector, expected {expected}")]
    UnexpectedToken { found: String, expected: &'static str },
    #[error("empty requirement in selector: unexpected ','")]
    EmptyRequirement,
    #[error("invalid label key {key:?}: {reason}")]
    InvalidLabelKey { key: String, reason: String },
    #[error("invalid label value {value:?} for key {key:?}: {reason}")]
    InvalidLabelValue { key: String, value: String, reason: String },
    #[error("empty value list for key {key:?}: 'in' and 'notin' need at least one value")]
    EmptyValueList { key: String },
    #[error("empty value in the list for key {key:?}")]
    EmptyListValue { key: String },
    #[error("invalid field selector {requirement:?}: expected field=value or field!=value")]
    InvalidFieldRequirement { requirement: String },
    #[error("unsupported field selector {field:?}")]
    UnsupportedField { field: String },
    #[error("invalid field selector value {value:?} for {field:?}: '=' is not allowed in a value")]
    InvalidFieldValue { field: String, value: String },
}

const NAME_RULE: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start \
     and end with an alphanumeric character";
const PREFIX_RULE: &str = "prefix part must be a lowercase RFC 1123 subdomain: lowercase \
     alphanumeric characters, '-' or '.', each part starting and ending with an alphanumeric \
     character";
const OPERATORS: &str = "'=', '==', '!=', 'in', 'notin', ',' or end of selector";

/// Validates a label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters. The error is a lowercase message without the key.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if name.contains('/') {
            return Err("a label key may contain at most one '/'".to_owned());
        }
        if prefix.is_empty() {
            return Err("prefix part must be non-empty".to_owned());
        }
        if !is_dns_subdomain(prefix) {
            return Err(PREFIX_RULE.to_owned());
        }
        if prefix.len() > 253 {
            return Err("prefix part must be no more than 253 characters".to_owned());
        }
    }
    if name.is_empty() {
        return Err("name part must be non-empty".to_owned());
    }
    if !is_name(name) {
        return Err(format!("name part {NAME_RULE}"));
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters".to_owned());
    }
    Ok(())
}

/// Validates a label value: empty, or at most 63 characters of the label-name alphabet.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if !is_name(value) {
        return Err(format!("a label value must be empty or {NAME_RULE}"));
    }
    if value.len() > 63 {
        return Err("a label value must be no more than 63 characters".to_owned());
    }
    Ok(())
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_name(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let inner = |c: char| alnum(c) || matches!(c, '-' | '_' | '.');
    s.starts_with(alnum) && s.ends_with(alnum) && s.chars().all(inner)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`
fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let inner = |c: char| alnum(c) || c == '-';
    s.split('.').all(|part| part.starts_with(alnum) && part.ends_with(alnum) && part.chars().all(inner))
}

fn parse_field_term(term: &str, supported: &[&str]) -> Result<FieldRequirement, SelectorError> {
    let term = term.trim();
    if term.is_empty() {
        return Err(SelectorError::EmptyRequirement);
    }
    let invalid = || SelectorError::InvalidFieldRequirement { requirement: term.into() };
    // The earliest operator wins, as in Kubernetes: `!=` starts one byte before the first `=`.
    let (lhs, rhs) = term.split_once('=').ok_or_else(invalid)?;
    let (field, value, negated) = match lhs.strip_suffix('!') {
        Some(field) => (field, rhs, true),
        None => (lhs, rhs.strip_prefix('=').unwrap_or(rhs), false),
    };
    let (field, value) = (field.trim().to_owned(), value.trim().to_owned());
    if field.is_empty() {
        return Err(invalid());
    }
    if !supported.contains(&field.as_str()) {
        return Err(SelectorError::UnsupportedField { field });
    }
    if value.contains('=') {
        return Err(SelectorError::InvalidFieldValue { field, value });
    }
    Ok(if negated { FieldRequirement::NotEquals { field, value } } else { FieldRequirement::Equals { field, value } })
}

/// Whitespace and the punctuation that ends an identifier.
fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | '(' | ')' | '!' | '=')
}

/// Anything but punctuation: a key, a value, or the `in` / `notin` operators.
fn is_ident(token: &str) -> bool {
    !token.starts_with(is_special)
}

/// Splits a label selector into `,`, `(`, `)`, `!`, `=`, `==`, `!=` and identifiers. Never fails.
fn lex(input: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut rest = input.trim_start();
    while let Some(c) = rest.chars().next() {
        let len = match c {
            ',' | '(' | ')' => 1,
            // ASCII, so byte 1 is a char boundary.
            '!' | '=' if rest[1..].starts_with('=') => 2,
            '!' | '=' => 1,
            _ => rest.find(is_special).unwrap_or(rest.len()),
        };
        let (token, tail) = rest.split_at(len);
        tokens.push(token);
        rest = tail.trim_start();
    }
    tokens
}

fn unexpected(found: &str, expected: &'static str) -> SelectorError {
    SelectorError::UnexpectedToken { found: found.into(), expected }
}

struct Parser<'a> {
    tokens: Vec<&'a str>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.tokens.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<&'a str> {
        let token = self.peek();
        self.pos += usize::from(token.is_some());
        token
    }

    fn requirement(&mut self) -> Result<LabelRequirement, SelectorError> {
        use LabelRequirement::{DoesNotExist, Equals, Exists, In, NotEquals, NotIn};
        let key = match self.next() {
            None | Some(",") => return Err(SelectorError::EmptyRequirement),
            Some("!") => return Ok(DoesNotExist { key: self.key()? }),
            Some(t) if is_ident(t) => checked_key(t)?,
            Some(t) => return Err(unexpected(t, "a label key")),
        };
        let op = match self.peek() {
            None | Some(",") => return Ok(Exists { key }),
            Some(op) => op,
        };
        self.pos += 1;
        match op {
            "=" | "==" => self.value(&key).map(|value| Equals { key, value }),
            "!=" => self.value(&key).map(|value| NotEquals { key, value }),
            "in" => self.values(&key).map(|values| In { key, values }),
            "notin" => self.values(&key).map(|values| NotIn { key, values }),
            t => Err(unexpected(t, OPERATORS)),
        }
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        match self.next() {
            Some(t) if is_ident(t) => checked_key(t),
            Some(t) => Err(unexpected(t, "a label key")),
            None => Err(SelectorError::UnexpectedEnd),
        }
    }

    /// The value after `=`, `==` or `!=`; nothing (`,` or the end) is the empty value.
    fn value(&mut self, key: &str) -> Result<String, SelectorError> {
        match self.peek() {
            None | Some(",") => Ok(String::new()),
            Some(t) if is_ident(t) => {
                self.pos += 1;
                checked_value(key, t)
            }
            Some(t) => Err(unexpected(t, "a label value")),
        }
    }

    /// `( value [, value]* )` after `in` or `notin`.
    fn values(&mut self, key: &str) -> Result<Vec<String>, SelectorError> {
        match self.next() {
            Some("(") => {}
            Some(t) => return Err(unexpected(t, "'('")),
            None => return Err(SelectorError::UnexpectedEnd),
        }
        if self.peek() == Some(")") {
            return Err(SelectorError::EmptyValueList { key: key.into() });
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some("," | ")") => return Err(SelectorError::EmptyListValue { key: key.into() }),
                Some(t) if is_ident(t) => values.push(checked_value(key, t)?),
                Some(t) => return Err(unexpected(t, "a label value")),
                None => return Err(SelectorError::UnexpectedEnd),
            }
            match self.next() {
                Some(",") => {}
                Some(")") => return Ok(values),
                Some(t) => return Err(unexpected(t, "',' or ')'")),
                None => return Err(SelectorError::UnexpectedEnd),
            }
        }
    }
}

fn checked_key(key: &str) -> Result<String, SelectorError> {
    let invalid = |reason| SelectorError::InvalidLabelKey { key: key.into(), reason };
    validate_label_key(key).map_err(invalid)?;
    Ok(key.to_owned())
}

fn checked_value(key: &str, value: &str) -> Result<String, SelectorError> {
    let invalid = |reason| SelectorError::InvalidLabelValue { key: key.into(), value: value.into(), reason };
    validate_label_value(value).map_err(invalid)?;
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::SelectorError::*;
    use super::*;

    const FIELDS: &[&str] = &["metadata.name", "metadata.namespace", "a", "b"];

    fn s(v: &str) -> String {
        v.to_owned()
    }

    /// Parses and prints the requirements back in canonical form, to keep expectations short.
    fn show(input: &str) -> String {
        LabelSelector::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}")).to_string()
    }

    fn err(input: &str) -> SelectorError {
        LabelSelector::parse(input).expect_err(input)
    }

    /// Like [`show`], for field selectors over [`FIELDS`].
    fn fields(input: &str) -> String {
        FieldSelector::parse(input, FIELDS).unwrap_or_else(|e| panic!("{e}")).to_string()
    }

    fn field_err(input: &str) -> SelectorError {
        FieldSelector::parse(input, FIELDS).expect_err(input)
    }

    fn matches(selector: &str, pairs: &[(&str, &str)]) -> bool {
        let labels = pairs.iter().map(|(k, v)| (s(k), s(v))).collect();
        LabelSelector::parse(selector).unwrap().matches(&labels)
    }

    #[test]
    fn empty_and_blank_inputs_are_the_empty_selector_which_matches_everything() {
        for input in ["", " ", "\t\n "] {
            assert_eq!(LabelSelector::parse(input), Ok(LabelSelector::default()));
            let fields = FieldSelector::parse(input, FIELDS);
            assert_eq!(fields, Ok(FieldSelector::default()));
        }
        assert!(matches("", &[]));
        assert!(matches(" ", &[("a", "b")]));
        assert!(FieldSelector::default().matches(|_| None));
    }

    #[test]
    fn every_label_operator_parses_into_the_ast() {
        let parsed = LabelSelector::parse("a=b,c==d,e!=f,g in (h,i),j notin (k),l,!m").unwrap();
        let expected = "[Equals { key: \"a\", value: \"b\" }, \
            Equals { key: \"c\", value: \"d\" }, NotEquals { key: \"e\", value: \"f\" }, \
            In { key: \"g\", values: [\"h\", \"i\"] }, NotIn { key: \"j\", values: [\"k\"] }, \
            Exists { key: \"l\" }, DoesNotExist { key: \"m\" }]";
        assert_eq!(format!("{:?}", parsed.requirements), expected);
        assert_eq!(parsed.requirements[6].key(), "m");
    }

    #[test]
    fn whitespace_around_tokens_is_allowed() {
        let canonical = "app=web,tier in (a,b),!legacy,team,env!=prod";
        assert_eq!(show(canonical), canonical);
        let spaced = "  app = web , tier  in(  a ,b ) ,! legacy,team ,env != prod  ";
        assert_eq!(show(spaced), canonical);
        assert_eq!(show("a\tin\n(b),c\u{3000}notin(d)"), "a in (b),c notin (d)");
    }

    #[test]
    fn empty_values_prefixed_keys_and_keywords_as_values_are_accepted() {
        assert_eq!(show("a="), "a=");
        assert_eq!(show("a==,b!="), "a=,b!=");
        assert_eq!(show("app.kubernetes.io/name=x"), "app.kubernetes.io/name=x");
        assert_eq!(show("a=in,b in (in,notin)"), "a=in,b in (in,notin)");
        assert_eq!(show("A_b.C-9=X.y_z-1"), "A_b.C-9=X.y_z-1");
    }

    #[test]
    fn malformed_selectors_are_rejected_with_specific_errors() {
        for input in ["a=b,,c=d", "a=b,", ",a=b", ",", "a, ,b"] {
            assert_eq!(err(input), EmptyRequirement, "{input}");
        }
        for input in ["a in (b", "a in (b,c", "a in", "a notin (", "!", "a,!"] {
            assert_eq!(err(input), UnexpectedEnd, "{input}");
        }
        assert_eq!(err("a in ()"), EmptyValueList { key: s("a") });
        assert_eq!(err("a notin ( )"), EmptyValueList { key: s("a") });
        for input in ["a in (b,)", "a in (,b)", "a in (b,,c)"] {
            assert_eq!(err(input), EmptyListValue { key: s("a") }, "{input}");
        }
        // `selector|token`, separated by two spaces: the error names the token after the bar.
        let cases = "a in b)|b  a in (b))|)  a in (b c)|c  a in (b)(c)|(  a b|b  a=b=c|=  a===b|=  \
            a=(b)|(  a=b c|c  !a=b|=  !!a|!  !=a|!=  =a|=  (a)|(  )|)  a)|)  a in (b),!c d|d";
        for case in cases.split("  ") {
            let (input, token) = case.split_once('|').unwrap();
            let found = matches!(err(input), UnexpectedToken { found, .. } if found == token);
            assert!(found, "{input}: {:?}", err(input));
        }
    }

    #[test]
    fn invalid_keys_and_values_are_rejected() {
        let (long_name, long_prefix) = ("a".repeat(64), format!("{}/a", "a".repeat(254)));
        let bad_keys = ["-a", "a-", "_a", ".a", "a/b/c", "/a", "a/", "a..b/x", "é", "a.-b/c"];
        let more = ["Example.com/a", "a_b.com/x", &*long_name, &*long_prefix];
        for key in bad_keys.into_iter().chain(more) {
            assert!(matches!(err(key), InvalidLabelKey { .. }), "{key}");
            assert!(validate_label_key(key).is_err(), "{key}");
        }
        for value in ["-b", "b-", "b/c", "bé", "b:c", long_name.as_str()] {
            let e = err(&format!("a={value}"));
            assert!(matches!(e, InvalidLabelValue { .. }), "{value}: {e:?}");
            let e = err(&format!("a in (b,{value})"));
            assert!(matches!(e, InvalidLabelValue { .. }), "{value}: {e:?}");
        }
        assert!(validate_label_key(&"a".repeat(63)).is_ok());
        assert!(validate_label_key(&format!("{}/{}", "a".repeat(253), "b".repeat(63))).is_ok());
        assert!(validate_label_key("x.example-1.com/My_Name.v2").is_ok());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value(&"z".repeat(63)).is_ok());
        assert!(validate_label_value(&"z".repeat(64)).is_err());
    }

    #[test]
    fn error_messages_are_lowercase_and_name_the_offending_token() {
        let expected = format!("invalid label key \"-a\": name part {NAME_RULE}");
        assert_eq!(err("-a").to_string(), expected);
        assert_eq!(err("a in (b").to_string(), "unexpected end of selector");
        let expected = format!("unexpected \"b\" in selector, expected {OPERATORS}");
        assert_eq!(err("a b").to_string(), expected);
        let message = err("a=-b").to_string();
        assert!(message.starts_with("invalid label value \"-b\" for key \"a\": "));
        let message = field_err("spec.foo=x").to_string();
        assert_eq!(message, "unsupported field selector \"spec.foo\"");
        let errors = [err("a=b,,c"), err("a in ()"), err("Ab/c"), field_err("a")];
        for message in errors.map(|e| e.to_string()) {
            assert!(message.starts_with(char::is_lowercase), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let alphabet = ['a', 'n', '=', '!', '(', ')', ',', ' ', 'é', '/', '\u{3000}'];
        let (mut inputs, mut level) = (Vec::new(), vec![String::new()]);
        for _ in 0..4 {
            let extend = |p: &String| alphabet.map(|c| format!("{p}{c}"));
            level = level.iter().flat_map(extend).collect();
            inputs.extend(level.iter().cloned());
        }
        inputs.extend(["in in (in)", "🦀=🦀", "a=\u{0}", "é/a=b"].map(s));
        for input in &inputs {
            if let Ok(selector) = LabelSelector::parse(input) {
                selector.matches(&BTreeMap::from([(s("a"), s("n"))]));
            }
            let _ = FieldSelector::parse(input, &["a", "é"]);
        }
    }

    #[test]
    fn equals_requires_the_key_with_that_exact_value() {
        assert!(matches("a=b", &[("a", "b"), ("c", "d")]));
        assert!(!matches("a=b", &[("a", "c")]));
        assert!(!matches("a=b", &[]));
        assert!(matches("a=", &[("a", "")]));
        assert!(!matches("a=", &[]));
    }

    #[test]
    fn not_equals_matches_objects_without_the_key() {
        assert!(matches("a!=b", &[]));
        assert!(matches("a!=b", &[("a", "c")]));
        assert!(!matches("a!=b", &[("a", "b")]));
    }

    #[test]
    fn in_requires_the_key_with_one_of_the_values() {
        assert!(matches("a in (b,c)", &[("a", "c")]));
        assert!(!matches("a in (b,c)", &[("a", "d")]));
        assert!(!matches("a in (b,c)", &[]));
    }

    #[test]
    fn notin_matches_objects_without_the_key() {
        assert!(matches("a notin (b,c)", &[]));
        assert!(matches("a notin (b,c)", &[("a", "d")]));
        assert!(!matches("a notin (b,c)", &[("a", "b")]));
    }

    #[test]
    fn exists_and_does_not_exist_look_only_at_the_key() {
        assert!(matches("a", &[("a", "")]));
        assert!(!matches("a", &[("b", "a")]));
        assert!(matches("!a", &[("b", "a")]));
        assert!(!matches("!a", &[("a", "x")]));
    }

    #[test]
    fn label_requirements_are_anded() {
        let all = "app=web,tier in (fe,be),!old";
        assert!(matches(all, &[("app", "web"), ("tier", "fe")]));
        let with_old = [("app", "web"), ("tier", "fe"), ("old", "")];
        assert!(!matches(all, &with_old));
        assert!(!matches(all, &[("app", "web"), ("tier", "db")]));
        assert!(!matches("a=b,a=c", &[("a", "b")]));
    }

    #[test]
    fn field_selector_parses_every_operator_with_whitespace_and_empty_values() {
        let parsed = fields(" a = x ,b==y, a!=,b=!z, a!=!w");
        assert_eq!(parsed, "a=x,b=y,a!=,b=!z,a!=!w");
        assert_eq!(fields("metadata.name=web"), "metadata.name=web");
        let parsed = FieldSelector::parse("a!=x", FIELDS).unwrap();
        let debug = format!("{:?}", parsed.requirements);
        assert_eq!(debug, "[NotEquals { field: \"a\", value: \"x\" }]");
    }

    #[test]
    fn field_selector_rejects_unsupported_fields_and_malformed_terms() {
        let field = s("spec.foo");
        let spec_foo = UnsupportedField { field };
        assert_eq!(field_err("spec.foo=x"), spec_foo);
        assert_eq!(field_err("a=x,spec.foo!=x"), spec_foo);
        assert!(matches!(field_err("namé=b"), UnsupportedField { .. }));
        for input in ["a=x,,b=y", ",a=x", "a=x,", " , "] {
            assert_eq!(field_err(input), EmptyRequirement, "{input}");
        }
        for (input, term) in [("a", "a"), ("=x", "=x"), (" != x", "!= x")] {
            let requirement = s(term);
            assert_eq!(field_err(input), InvalidFieldRequirement { requirement });
        }
        for input in ["a=x=y", "a===y", "a!==y"] {
            let e = field_err(input);
            assert!(matches!(e, InvalidFieldValue { .. }), "{e:?}");
        }
    }

    #[test]
    fn field_selector_matching_is_anded_and_treats_missing_fields_as_empty() {
        let input = "metadata.name=web,metadata.namespace!=kube-system";
        let selector = FieldSelector::parse(input, FIELDS).unwrap();
        let object = |name: &'static str, namespace: Option<&'static str>| {
            move |field: &str| match field {
                "metadata.name" => Some(s(name)),
                "metadata.namespace" => namespace.map(s),
                _ => None,
            }
        };
        assert!(selector.matches(object("web", Some("default"))));
        assert!(selector.matches(object("web", None)));
        assert!(!selector.matches(object("web", Some("kube-system"))));
        assert!(!selector.matches(object("api", Some("default"))));
        let empty = FieldSelector::parse("metadata.namespace=", FIELDS).unwrap();
        assert!(empty.matches(object("web", None)));
        assert!(!empty.matches(object("web", Some("default"))));
    }
}
