//! Validation of names, metadata, specs and reports. Every function returns every failing field, with its path in
//! the form Kubernetes uses (`spec.ports[1].port`), so that a 422 names all of them at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use crate::aggregate::AVAILABLE;
use crate::kind::Kind;
use crate::resources::{ClusterSpec, ControllerReport, ControllerSpec, HealthCheck, ServiceSpec};
use crate::selector::{validate_label_key, validate_label_value};

/// Annotations may hold at most this many bytes (keys and values together).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// Why a field failed, with the `reason` strings of Kubernetes' `StatusCause`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    TooLong,
    Forbidden,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Required => "FieldValueRequired",
            Reason::Invalid => "FieldValueInvalid",
            Reason::NotSupported => "FieldValueNotSupported",
            Reason::Duplicate => "FieldValueDuplicate",
            Reason::TooLong => "FieldValueTooLong",
            Reason::Forbidden => "FieldValueForbidden",
        }
    }
}

/// One failing field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: Reason,
    /// The detail as kubectl prints it after the field: `Invalid value: -1: must be >= 0`.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.field, self.message)
    }
}

impl FieldError {
    pub fn required(field: impl Into<String>) -> Self {
        FieldError { field: field.into(), reason: Reason::Required, message: "Required value".into() }
    }

    pub fn invalid(field: impl Into<String>, value: impl fmt::Display, detail: impl fmt::Display) -> Self {
        FieldError {
            field: field.into(),
            reason: Reason::Invalid,
            message: format!("Invalid value: {value}: {detail}"),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: impl fmt::Display, supported: &[&str]) -> Self {
        let supported = supported.iter().map(|value| format!("\"{value}\"")).collect::<Vec<_>>().join(", ");
        FieldError {
            field: field.into(),
            reason: Reason::NotSupported,
            message: format!("Unsupported value: \"{value}\": supported values: {supported}"),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: impl fmt::Display) -> Self {
        FieldError { field: field.into(), reason: Reason::Duplicate, message: format!("Duplicate value: \"{value}\"") }
    }

    pub fn too_long(field: impl Into<String>, limit: usize) -> Self {
        FieldError {
            field: field.into(),
            reason: Reason::TooLong,
            message: format!("Too long: must have at most {limit} bytes"),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl fmt::Display) -> Self {
        FieldError { field: field.into(), reason: Reason::Forbidden, message: format!("Forbidden: {detail}") }
    }

    pub fn immutable(field: impl Into<String>, value: impl fmt::Display) -> Self {
        FieldError::invalid(field, format!("\"{value}\""), "field is immutable")
    }
}

/// Errors that `validate_*` found; empty means valid.
pub type FieldErrors = Vec<FieldError>;

/// An RFC 1123 DNS label: what object names and namespaces must be.
pub fn dns_label_problem(value: &str) -> Option<&'static str> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Some("must not be empty");
    }
    if bytes.len() > 63 {
        return Some("must be no more than 63 characters");
    }
    let inner_ok = bytes.iter().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'-');
    let ends_ok = bytes[0].is_ascii_alphanumeric() && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if !inner_ok || !ends_ok {
        return Some(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        );
    }
    None
}

fn check_dns_label(errors: &mut FieldErrors, field: &str, value: &str) {
    if value.is_empty() {
        errors.push(FieldError::required(field));
    } else if let Some(problem) = dns_label_problem(value) {
        errors.push(FieldError::invalid(field, format!("\"{value}\""), problem));
    }
}

/// The metadata a client may set.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientMetadata<'a> {
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub finalizers: &'a [String],
}

/// Validates name, namespace (for namespaced kinds), labels, annotations and finalizers.
pub fn validate_metadata(kind: Kind, metadata: &ClientMetadata<'_>) -> FieldErrors {
    let mut errors = FieldErrors::new();
    check_dns_label(&mut errors, "metadata.name", metadata.name);
    if kind.namespaced() {
        check_dns_label(&mut errors, "metadata.namespace", metadata.namespace.unwrap_or_default());
    }
    for (key, value) in metadata.labels {
        if let Err(problem) = validate_label_key(key) {
            errors.push(FieldError::invalid("metadata.labels", format!("\"{key}\""), problem));
        }
        if let Err(problem) = validate_label_value(value) {
            errors.push(FieldError::invalid(format!("metadata.labels.{key}"), format!("\"{value}\""), problem));
        }
    }
    let mut annotation_bytes = 0;
    for (key, value) in metadata.annotations {
        if let Err(problem) = validate_label_key(key) {
            errors.push(FieldError::invalid("metadata.annotations", format!("\"{key}\""), problem));
        }
        annotation_bytes += key.len() + value.len();
    }
    if annotation_bytes > MAX_ANNOTATIONS_BYTES {
        errors.push(FieldError::too_long("metadata.annotations", MAX_ANNOTATIONS_BYTES));
    }
    let mut seen = BTreeSet::new();
    for (index, finalizer) in metadata.finalizers.iter().enumerate() {
        let field = format!("metadata.finalizers[{index}]");
        if let Err(problem) = validate_label_key(finalizer) {
            errors.push(FieldError::invalid(field, format!("\"{finalizer}\""), problem));
        } else if !seen.insert(finalizer.as_str()) {
            errors.push(FieldError::duplicate(field, finalizer));
        }
    }
    errors
}

fn is_platform_name(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'-')
}

const PLATFORM_PROBLEM: &str = "must be a lowercase name: letters, digits and '-', starting with a letter";

pub fn validate_cluster_spec(spec: &ClusterSpec) -> FieldErrors {
    let mut errors = FieldErrors::new();
    let platform = &spec.platform.type_;
    if platform.is_empty() {
        errors.push(FieldError::required("spec.platform.type"));
    } else if !is_platform_name(platform) {
        errors.push(FieldError::invalid("spec.platform.type", format!("\"{platform}\""), PLATFORM_PROBLEM));
    }
    if let Some(config) = &spec.platform.config
        && !config.is_object()
    {
        errors.push(FieldError::invalid("spec.platform.config", short_json(config), "must be an object"));
    }
    errors
}

fn short_json(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 64 { format!("{}...", &text[..text.floor_char_boundary(64)]) } else { text }
}

fn check_port(errors: &mut FieldErrors, field: &str, port: i64, allow_zero: bool) {
    let lowest = if allow_zero { 0 } else { 1 };
    if !(lowest..=65535).contains(&port) {
        errors.push(FieldError::invalid(field, port, format!("must be between {lowest} and 65535, inclusive")));
    }
}

fn check_positive(errors: &mut FieldErrors, field: &str, value: Option<i64>) {
    if let Some(value) = value
        && value < 1
    {
        errors.push(FieldError::invalid(field, value, "must be greater than or equal to 1"));
    }
}

pub fn validate_service_spec(spec: &ServiceSpec, own_name: &str) -> FieldErrors {
    let mut errors = FieldErrors::new();
    check_dns_label(&mut errors, "spec.clusterRef.name", &spec.cluster_ref.name);
    match (&spec.run, &spec.image) {
        (None, None) => errors.push(FieldError::required("spec.run")),
        (Some(_), Some(_)) => errors.push(FieldError::forbidden("spec.image", "may not be set together with spec.run")),
        _ => {}
    }
    if let Some(run) = &spec.run {
        if run.command.is_empty() || run.command[0].is_empty() {
            errors.push(FieldError::required("spec.run.command"));
        }
        let mut names = BTreeSet::new();
        for (index, variable) in run.env.iter().enumerate() {
            let field = format!("spec.run.env[{index}].name");
            if variable.name.is_empty() {
                errors.push(FieldError::required(field));
            } else if variable.name.contains('=') || variable.name.contains('\0') {
                errors.push(FieldError::invalid(
                    field,
                    format!("\"{}\"", variable.name),
                    "must not contain '=' or NUL",
                ));
            } else if !names.insert(variable.name.as_str()) {
                errors.push(FieldError::duplicate(field, &variable.name));
            }
        }
    }
    if let Some(image) = &spec.image
        && image.trim().is_empty()
    {
        errors.push(FieldError::required("spec.image"));
    }
    if spec.replicas < 0 {
        errors.push(FieldError::invalid("spec.replicas", spec.replicas, "must be greater than or equal to 0"));
    }
    let mut port_names = BTreeSet::new();
    let mut port_numbers = BTreeSet::new();
    for (index, port) in spec.ports.iter().enumerate() {
        let prefix = format!("spec.ports[{index}]");
        if let Some(name) = &port.name {
            if let Some(problem) = dns_label_problem(name) {
                errors.push(FieldError::invalid(format!("{prefix}.name"), format!("\"{name}\""), problem));
            } else if !port_names.insert(name.as_str()) {
                errors.push(FieldError::duplicate(format!("{prefix}.name"), name));
            }
        }
        check_port(&mut errors, &format!("{prefix}.port"), port.port, true);
        if !["TCP", "UDP"].contains(&port.protocol.as_str()) {
            errors.push(FieldError::not_supported(format!("{prefix}.protocol"), &port.protocol, &["TCP", "UDP"]));
        }
        if port.port != 0 && !port_numbers.insert((port.port, port.protocol.as_str())) {
            errors.push(FieldError::duplicate(format!("{prefix}.port"), port.port));
        }
    }
    let mut dependencies = BTreeSet::new();
    for (index, dependency) in spec.depends_on.iter().enumerate() {
        let field = format!("spec.dependsOn[{index}]");
        if let Some(problem) = dns_label_problem(dependency) {
            errors.push(FieldError::invalid(field, format!("\"{dependency}\""), problem));
        } else if dependency == own_name {
            errors.push(FieldError::invalid(field, format!("\"{dependency}\""), "a Service cannot depend on itself"));
        } else if !dependencies.insert(dependency.as_str()) {
            errors.push(FieldError::duplicate(field, dependency));
        }
    }
    if let Some(check) = &spec.health_check {
        validate_health_check(&mut errors, check);
    }
    errors
}

fn validate_health_check(errors: &mut FieldErrors, check: &HealthCheck) {
    let kinds =
        [check.http.is_some(), check.tcp.is_some(), check.exec.is_some()].into_iter().filter(|set| *set).count();
    if kinds == 0 {
        errors.push(FieldError::required("spec.healthCheck.http"));
    } else if kinds > 1 {
        errors.push(FieldError::forbidden("spec.healthCheck", "exactly one of http, tcp or exec may be set"));
    }
    if let Some(http) = &check.http {
        check_port(errors, "spec.healthCheck.http.port", http.port, false);
        if !http.path.starts_with('/') {
            errors.push(FieldError::invalid(
                "spec.healthCheck.http.path",
                format!("\"{}\"", http.path),
                "must start with '/'",
            ));
        }
    }
    if let Some(tcp) = &check.tcp {
        check_port(errors, "spec.healthCheck.tcp.port", tcp.port, false);
    }
    if let Some(exec) = &check.exec
        && (exec.command.is_empty() || exec.command[0].is_empty())
    {
        errors.push(FieldError::required("spec.healthCheck.exec.command"));
    }
    check_positive(errors, "spec.healthCheck.periodSeconds", check.period_seconds);
    check_positive(errors, "spec.healthCheck.timeoutSeconds", check.timeout_seconds);
    check_positive(errors, "spec.healthCheck.failureThreshold", check.failure_threshold);
}

pub fn validate_controller_spec(spec: &ControllerSpec) -> FieldErrors {
    let mut errors = FieldErrors::new();
    if spec.kinds.is_empty() {
        errors.push(FieldError::required("spec.kinds"));
    }
    for (index, kind) in spec.kinds.iter().enumerate() {
        if !matches!(Kind::from_kind_name(kind), Some(kind) if kind.reconciled()) {
            errors.push(FieldError::not_supported(format!("spec.kinds[{index}]"), kind, &["Cluster", "Service"]));
        }
    }
    for (index, platform) in spec.platforms.iter().enumerate() {
        if !is_platform_name(platform) {
            errors.push(FieldError::invalid(
                format!("spec.platforms[{index}]"),
                format!("\"{platform}\""),
                PLATFORM_PROBLEM,
            ));
        }
    }
    errors
}

/// Validates a controller's report on its own terms; the generation checks need the stored object.
pub fn validate_report(report: &ControllerReport) -> FieldErrors {
    let mut errors = FieldErrors::new();
    if report.controller.is_empty() {
        errors.push(FieldError::required("controller"));
    } else if let Some(problem) = dns_label_problem(&report.controller) {
        errors.push(FieldError::invalid("controller", format!("\"{}\"", report.controller), problem));
    }
    if report.observed_generation < 1 {
        errors.push(FieldError::invalid(
            "observedGeneration",
            report.observed_generation,
            "must be greater than or equal to 1",
        ));
    }
    let mut types = BTreeSet::new();
    for (index, condition) in report.conditions.iter().enumerate() {
        if condition.type_.is_empty() {
            errors.push(FieldError::required(format!("conditions[{index}].type")));
        } else if !types.insert(condition.type_.as_str()) {
            errors.push(FieldError::duplicate(format!("conditions[{index}].type"), &condition.type_));
        }
    }
    if !types.contains(AVAILABLE) {
        errors.push(FieldError {
            field: "conditions".into(),
            reason: Reason::Required,
            message: "Required value: a report must carry an Available condition".into(),
        });
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::condition::{Condition, ConditionStatus};
    use crate::resources::{ClusterRef, HttpCheck, RunSpec, ServicePort};

    fn fields(errors: &FieldErrors) -> Vec<&str> {
        errors.iter().map(|error| error.field.as_str()).collect()
    }

    #[test]
    fn dns_labels_are_checked() {
        assert_eq!(dns_label_problem("web-1"), None);
        assert!(dns_label_problem("Web").is_some());
        assert!(dns_label_problem("-web").is_some());
        assert!(dns_label_problem("web-").is_some());
        assert!(dns_label_problem(&"a".repeat(64)).is_some());
        assert!(dns_label_problem("").is_some());
    }

    #[test]
    fn metadata_errors_name_every_field() {
        let labels = BTreeMap::from([("ok".to_string(), "bad value!".to_string())]);
        let annotations = BTreeMap::from([("a".to_string(), "x".repeat(MAX_ANNOTATIONS_BYTES))]);
        let finalizers = vec!["cls.dev/x".to_string(), "cls.dev/x".to_string()];
        let metadata = ClientMetadata {
            name: "Bad_Name",
            namespace: Some(""),
            labels: &labels,
            annotations: &annotations,
            finalizers: &finalizers,
        };
        let errors = validate_metadata(Kind::Cluster, &metadata);
        assert_eq!(
            fields(&errors),
            vec![
                "metadata.name",
                "metadata.namespace",
                "metadata.labels.ok",
                "metadata.annotations",
                "metadata.finalizers[1]"
            ]
        );
    }

    #[test]
    fn controllers_have_no_namespace_to_check() {
        let empty = BTreeMap::new();
        let metadata =
            ClientMetadata { name: "gke", namespace: None, labels: &empty, annotations: &empty, finalizers: &[] };
        assert!(validate_metadata(Kind::Controller, &metadata).is_empty());
    }

    #[test]
    fn cluster_needs_a_lowercase_platform() {
        assert_eq!(fields(&validate_cluster_spec(&ClusterSpec::default())), vec!["spec.platform.type"]);
        let mut spec = ClusterSpec::default();
        spec.platform.type_ = "GCP".into();
        spec.platform.config = Some(Value::from(3));
        assert_eq!(fields(&validate_cluster_spec(&spec)), vec!["spec.platform.type", "spec.platform.config"]);
        spec.platform.type_ = "my-cloud2".into();
        spec.platform.config = Some(serde_json::json!({"project": "p"}));
        assert!(validate_cluster_spec(&spec).is_empty());
    }

    #[test]
    fn service_errors_name_every_failing_field() {
        let spec = ServiceSpec {
            cluster_ref: ClusterRef { name: String::new() },
            run: None,
            image: None,
            replicas: -1,
            ports: vec![
                ServicePort { name: Some("http".into()), port: 70000, protocol: "TCP".into() },
                ServicePort { name: Some("http".into()), port: 8080, protocol: "SCTP".into() },
            ],
            depends_on: vec!["api".into(), "api".into(), "self".into()],
            health_check: Some(HealthCheck {
                http: Some(HttpCheck { path: "x".into(), port: 0 }),
                ..Default::default()
            }),
        };
        assert_eq!(
            fields(&validate_service_spec(&spec, "self")),
            vec![
                "spec.clusterRef.name",
                "spec.run",
                "spec.replicas",
                "spec.ports[0].port",
                "spec.ports[1].name",
                "spec.ports[1].protocol",
                "spec.dependsOn[1]",
                "spec.dependsOn[2]",
                "spec.healthCheck.http.port",
                "spec.healthCheck.http.path",
            ]
        );
    }

    #[test]
    fn a_valid_service_passes() {
        let spec = ServiceSpec {
            cluster_ref: ClusterRef { name: "dev".into() },
            run: Some(RunSpec { command: vec!["python3".into()], ..Default::default() }),
            replicas: 0,
            ports: vec![ServicePort { name: None, port: 0, protocol: "TCP".into() }],
            ..Default::default()
        };
        assert!(validate_service_spec(&spec, "web").is_empty());
    }

    #[test]
    fn controller_kinds_must_be_reconciled_kinds() {
        let spec = ControllerSpec {
            kinds: vec!["Pod".into(), "Controller".into()],
            platforms: vec!["GCP".into()],
            ..Default::default()
        };
        assert_eq!(
            fields(&validate_controller_spec(&spec)),
            vec!["spec.kinds[0]", "spec.kinds[1]", "spec.platforms[0]"]
        );
        assert_eq!(fields(&validate_controller_spec(&ControllerSpec::default())), vec!["spec.kinds"]);
    }

    #[test]
    fn a_report_without_available_is_invalid() {
        let report = ControllerReport {
            controller: "gke".into(),
            observed_generation: 1,
            conditions: vec![Condition::new("Degraded", ConditionStatus::False, "Fine", "")],
            ..Default::default()
        };
        assert_eq!(fields(&validate_report(&report)), vec!["conditions"]);
        let empty = ControllerReport::default();
        assert_eq!(fields(&validate_report(&empty)), vec!["controller", "observedGeneration", "conditions"]);
    }
}
