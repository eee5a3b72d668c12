//! Manifests at the edge: a JSON document (`{apiVersion, kind, metadata, spec, status}`) becomes a typed, validated
//! [`Manifest`]. Server-owned metadata (uid, generation, timestamps) and `status` are ignored; `resourceVersion` is
//! kept as the client's precondition.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::kind::Kind;
use crate::resources::{ClusterSpec, ControllerSpec, ServiceSpec};
use crate::validation::{
    ClientMetadata, FieldError, FieldErrors, validate_cluster_spec, validate_controller_spec, validate_metadata,
    validate_service_spec,
};

/// A typed spec of one of the kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    Cluster(ClusterSpec),
    Service(ServiceSpec),
    Controller(ControllerSpec),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Cluster(_) => Kind::Cluster,
            Spec::Service(_) => Kind::Service,
            Spec::Controller(_) => Kind::Controller,
        }
    }

    /// The canonical stored form: defaults applied, unknown fields gone.
    pub fn to_value(&self) -> Value {
        let value = match self {
            Spec::Cluster(spec) => serde_json::to_value(spec),
            Spec::Service(spec) => serde_json::to_value(spec),
            Spec::Controller(spec) => serde_json::to_value(spec),
        };
        value.expect("specs serialize to JSON")
    }

    /// Parses a spec of `kind`; a value of the wrong type fails with its field path.
    pub fn from_value(kind: Kind, value: Value) -> Result<Spec, FieldError> {
        Ok(match kind {
            Kind::Cluster => Spec::Cluster(typed("spec", value)?),
            Kind::Service => Spec::Service(typed("spec", value)?),
            Kind::Controller => Spec::Controller(typed("spec", value)?),
        })
    }

    /// The platform this spec names (Clusters only; a Service's is its Cluster's).
    pub fn platform(&self) -> Option<&str> {
        match self {
            Spec::Cluster(spec) => Some(&spec.platform.type_),
            _ => None,
        }
    }

    fn validate(&self, name: &str) -> FieldErrors {
        match self {
            Spec::Cluster(spec) => validate_cluster_spec(spec),
            Spec::Service(spec) => validate_service_spec(spec, name),
            Spec::Controller(spec) => validate_controller_spec(spec),
        }
    }
}

/// Deserializes `value` into `T`, naming the failing field (`spec.ports[0].port`) on a type error.
pub fn typed<T: DeserializeOwned>(prefix: &str, value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { prefix.to_owned() } else { format!("{prefix}.{path}") };
        let detail = error.into_inner().to_string();
        FieldError::invalid(field.replace(".[", "["), "value", detail)
    })
}

/// The metadata fields a client may send.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataInput {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub finalizers: Option<Vec<String>>,
    #[serde(default)]
    pub owner_references: Option<Vec<Value>>,
    #[serde(default)]
    pub managed_fields: Option<Vec<Value>>,
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// A parsed and validated manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub name: String,
    /// `None` for cluster-scoped kinds; defaults to `default` for namespaced kinds when the manifest has none.
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub finalizers: Vec<String>,
    pub owner_references: Vec<Value>,
    /// `metadata.managedFields` when the request sets them (server-side apply does); `None` keeps the stored ones.
    pub managed_fields: Option<Vec<Value>>,
    /// The client's `metadata.resourceVersion`, a precondition for updates.
    pub resource_version: Option<i64>,
    pub spec: Spec,
}

impl Manifest {
    /// The manifest as a document that [`parse`] reads back to the same manifest: `{apiVersion, kind, metadata,
    /// spec}` with the spec in its canonical form and empty metadata fields left out.
    pub fn to_document(&self) -> Value {
        let mut metadata = serde_json::Map::new();
        metadata.insert("name".into(), self.name.clone().into());
        if let Some(namespace) = &self.namespace {
            metadata.insert("namespace".into(), namespace.clone().into());
        }
        if !self.labels.is_empty() {
            metadata.insert("labels".into(), json!(self.labels));
        }
        if !self.annotations.is_empty() {
            metadata.insert("annotations".into(), json!(self.annotations));
        }
        if !self.finalizers.is_empty() {
            metadata.insert("finalizers".into(), json!(self.finalizers));
        }
        if !self.owner_references.is_empty() {
            metadata.insert("ownerReferences".into(), json!(self.owner_references));
        }
        if let Some(managed_fields) = &self.managed_fields {
            metadata.insert("managedFields".into(), json!(managed_fields));
        }
        if let Some(version) = self.resource_version {
            metadata.insert("resourceVersion".into(), version.to_string().into());
        }
        json!({
            "apiVersion": crate::API_VERSION,
            "kind": self.spec.kind().as_str(),
            "metadata": metadata,
            "spec": self.spec.to_value(),
        })
    }
}

/// Why a manifest was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ManifestError {
    /// Not an object, wrong apiVersion/kind: HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// Failing fields: HTTP 422.
    #[error("invalid manifest")]
    Invalid { name: String, errors: FieldErrors },
}

/// What the URL or the stored object says the manifest must be.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expect<'a> {
    /// The namespace of the URL, if any; a manifest naming another one is refused.
    pub namespace: Option<&'a str>,
    /// The name of the URL, if any; the manifest may omit its name then.
    pub name: Option<&'a str>,
}

/// Parses `document` as a manifest of `kind`.
pub fn parse(kind: Kind, document: Value, expect: Expect<'_>) -> Result<Manifest, ManifestError> {
    let Value::Object(mut document) = document else {
        return Err(ManifestError::BadRequest("the request body must be a JSON or YAML object".into()));
    };
    if let Some(api_version) = document.get("apiVersion")
        && api_version.as_str() != Some(crate::API_VERSION)
    {
        return Err(ManifestError::BadRequest(format!(
            "apiVersion {api_version} does not match the expected \"{}\"",
            crate::API_VERSION
        )));
    }
    if let Some(found) = document.get("kind")
        && found.as_str() != Some(kind.as_str())
    {
        return Err(ManifestError::BadRequest(format!("kind {found} does not match the expected \"{kind}\"")));
    }

    let mut errors = FieldErrors::new();
    let metadata: MetadataInput = match document.remove("metadata") {
        None | Some(Value::Null) => MetadataInput::default(),
        Some(value) => typed("metadata", value).unwrap_or_else(|error| {
            errors.push(error);
            MetadataInput::default()
        }),
    };
    let name = metadata.name.clone().filter(|name| !name.is_empty()).or(expect.name.map(str::to_owned));
    let name = name.unwrap_or_default();
    if let (Some(expected), Some(given)) = (expect.name, metadata.name.as_deref())
        && !given.is_empty()
        && given != expected
    {
        return Err(ManifestError::BadRequest(format!(
            "the name of the object ({given}) does not match the name on the URL ({expected})"
        )));
    }
    let namespace = if kind.namespaced() {
        let given = metadata.namespace.clone().filter(|namespace| !namespace.is_empty());
        if let (Some(expected), Some(given)) = (expect.namespace, given.as_deref())
            && given != expected
        {
            return Err(ManifestError::BadRequest(format!(
                "the namespace of the object ({given}) does not match the namespace on the request ({expected})"
            )));
        }
        Some(given.or(expect.namespace.map(str::to_owned)).unwrap_or_else(|| "default".to_owned()))
    } else {
        None
    };
    let resource_version = match metadata.resource_version.as_deref() {
        None | Some("") => None,
        Some(text) => match text.parse::<i64>() {
            Ok(version) if version >= 0 => Some(version),
            _ => {
                errors.push(FieldError::invalid(
                    "metadata.resourceVersion",
                    format!("\"{text}\""),
                    "must be a non-negative integer",
                ));
                None
            }
        },
    };
    let spec = match document.remove("spec") {
        None | Some(Value::Null) => {
            errors.push(FieldError::required("spec"));
            None
        }
        Some(value) => match Spec::from_value(kind, value) {
            Ok(spec) => Some(spec),
            Err(error) => {
                errors.push(error);
                None
            }
        },
    };

    let labels = metadata.labels.unwrap_or_default();
    let annotations = metadata.annotations.unwrap_or_default();
    let finalizers = metadata.finalizers.unwrap_or_default();
    errors.extend(validate_metadata(
        kind,
        &ClientMetadata {
            name: &name,
            namespace: namespace.as_deref(),
            labels: &labels,
            annotations: &annotations,
            finalizers: &finalizers,
        },
    ));
    if let Some(spec) = &spec {
        errors.extend(spec.validate(&name));
    }
    match spec {
        Some(spec) if errors.is_empty() => Ok(Manifest {
            name,
            namespace,
            labels,
            annotations,
            finalizers,
            owner_references: metadata.owner_references.unwrap_or_default(),
            managed_fields: metadata.managed_fields,
            resource_version,
            spec,
        }),
        _ => Err(ManifestError::Invalid { name, errors }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_fields(result: Result<Manifest, ManifestError>) -> Vec<String> {
        match result {
            Err(ManifestError::Invalid { errors, .. }) => errors.into_iter().map(|error| error.field).collect(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_cluster_manifest_parses_with_the_default_namespace() {
        let manifest = parse(
            Kind::Cluster,
            json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": "dev", "uid": "ignored"},
                   "spec": {"platform": {"type": "local"}}, "status": {"phase": "Ready"}}),
            Expect::default(),
        )
        .unwrap();
        assert_eq!(manifest.name, "dev");
        assert_eq!(manifest.namespace.as_deref(), Some("default"));
        assert_eq!(manifest.spec.platform(), Some("local"));
    }

    #[test]
    fn a_type_error_names_its_field_and_other_fields_are_still_checked() {
        let fields = invalid_fields(parse(
            Kind::Service,
            json!({"metadata": {"name": "Web"}, "spec": {"clusterRef": {"name": "dev"}, "image": "x", "ports": [{"port": "eighty"}]}}),
            Expect::default(),
        ));
        assert_eq!(fields, vec!["spec.ports[0].port", "metadata.name"]);
    }

    #[test]
    fn missing_spec_and_name_are_both_reported() {
        let fields = invalid_fields(parse(Kind::Cluster, json!({"metadata": {}}), Expect::default()));
        assert_eq!(fields, vec!["spec", "metadata.name"]);
    }

    #[test]
    fn wrong_kind_or_api_version_is_a_bad_request() {
        let result = parse(Kind::Cluster, json!({"kind": "Service", "spec": {}}), Expect::default());
        assert!(matches!(result, Err(ManifestError::BadRequest(_))));
        let result = parse(Kind::Cluster, json!({"apiVersion": "v1", "spec": {}}), Expect::default());
        assert!(matches!(result, Err(ManifestError::BadRequest(_))));
        assert!(matches!(parse(Kind::Cluster, json!([1]), Expect::default()), Err(ManifestError::BadRequest(_))));
    }

    #[test]
    fn the_url_name_and_namespace_must_agree_with_the_manifest() {
        let document = json!({"metadata": {"name": "a", "namespace": "x"}, "spec": {"platform": {"type": "gcp"}}});
        let by_name = parse(Kind::Cluster, document.clone(), Expect { name: Some("b"), namespace: None });
        assert!(matches!(by_name, Err(ManifestError::BadRequest(_))));
        let by_namespace = parse(Kind::Cluster, document, Expect { name: None, namespace: Some("y") });
        assert!(matches!(by_namespace, Err(ManifestError::BadRequest(_))));
    }

    #[test]
    fn resource_version_is_kept_as_a_precondition() {
        let manifest = parse(
            Kind::Controller,
            json!({"metadata": {"name": "gke", "namespace": "ignored", "resourceVersion": "42"}, "spec": {"kinds": ["Cluster"]}}),
            Expect::default(),
        )
        .unwrap();
        assert_eq!(manifest.resource_version, Some(42));
        assert_eq!(manifest.namespace, None);
    }

    #[test]
    fn a_manifest_reencodes_to_a_document_that_parses_to_the_same_manifest() {
        let document = json!({"metadata": {"name": "web", "labels": {"app": "web"}, "resourceVersion": "7",
                "finalizers": ["cls.dev/x"], "ownerReferences": [{"uid": "u"}]},
            "spec": {"clusterRef": {"name": "dev"}, "image": "nginx", "ports": [{"port": 80}]}});
        let manifest = parse(Kind::Service, document, Expect::default()).unwrap();
        let reencoded = manifest.to_document();
        assert_eq!(reencoded["spec"]["replicas"], 1, "defaults are applied: {reencoded}");
        assert_eq!(parse(Kind::Service, reencoded, Expect::default()), Ok(manifest));
    }
}
