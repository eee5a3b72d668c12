//! The resources of the `cls.dev/v1alpha1` group: `Cluster`, `Service` (namespaced) and `Controller` (cluster-scoped).
//!
//! The structs are the wire form and the stored form at once: the server deserializes a manifest's `spec` into them
//! (unknown fields are dropped), applies defaults, validates them (`crate::validation`) and stores them serialized
//! back, so that stored specs are canonical and "did the spec change" is a plain comparison.
//! Numbers are `i64` on purpose: out-of-range values reach validation, which names every failing field, instead of
//! failing deserialization at the first one.

use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::condition::Condition;

/// A cluster: where Services run. `platform.type` selects the controllers that act on it.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cls.dev",
    version = "v1alpha1",
    kind = "Cluster",
    plural = "clusters",
    namespaced,
    status = "ObjectStatus",
    shortname = "cl"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["platform"]))]
pub struct ClusterSpec {
    #[serde(default)]
    #[schemars(extend("default" = null))]
    pub platform: Platform,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["type"]))]
pub struct Platform {
    /// Lowercase platform name (`gcp`, `aws`, `azure`, `local`, `kubernetes`, or any other). Immutable.
    #[serde(rename = "type", default)]
    #[schemars(extend("default" = null))]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Free-form settings for the platform's controllers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub config: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// A service of a cluster: supervised processes (`run`, platform `local`) or a container image.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cls.dev",
    version = "v1alpha1",
    kind = "Service",
    plural = "services",
    namespaced,
    status = "ObjectStatus",
    shortname = "cs"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["clusterRef"]))]
pub struct ServiceSpec {
    /// The Cluster (same namespace) this Service belongs to. Immutable.
    #[serde(default)]
    #[schemars(extend("default" = null))]
    pub cluster_ref: ClusterRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Number of processes or containers; 0 stops the Service. Defaults to 1.
    #[serde(default = "default_replicas")]
    pub replicas: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Names of Services of the same cluster that must be Ready first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// A free-form object: kept verbatim, described by no schema.
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "nullable": true, "x-kubernetes-preserve-unknown-fields": true})
}

fn default_replicas() -> i64 {
    1
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["name"]))]
pub struct ClusterRef {
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSpec {
    /// argv[0..]: the program and its first arguments.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnvVar {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// 1..=65535, or 0 to have the port-allocator assign one.
    #[serde(default)]
    pub port: i64,
    /// `TCP` (default) or `UDP`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "TCP".to_owned()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HttpCheck {
    #[serde(default = "default_http_path")]
    pub path: String,
    #[serde(default)]
    pub port: i64,
}

fn default_http_path() -> String {
    "/".to_owned()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TcpCheck {
    #[serde(default)]
    pub port: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecCheck {
    #[serde(default)]
    pub command: Vec<String>,
}

/// A controller's registration, written by the controller itself at start and on every heartbeat.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cls.dev",
    version = "v1alpha1",
    kind = "Controller",
    plural = "controllers",
    status = "ControllerStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct ControllerSpec {
    /// Kinds it reconciles (`Cluster`, `Service`).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Platforms it acts on; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// Whether objects it acts on wait for its `Available=True` to be Ready. Defaults to true.
    #[serde(default = "default_required")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn default_required() -> bool {
    true
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControllerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_heartbeat_time: Option<Timestamp>,
}

/// The aggregated status of a Cluster or Service; see `crate::aggregate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ready_generation: Option<i64>,
    #[serde(default)]
    pub controllers: Vec<ControllerReport>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    Pending,
    Progressing,
    Ready,
    Failed,
    Deleting,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
            Phase::Deleting => "Deleting",
        }
    }
}

/// One controller's report on one object: the body of `PUT /api/v1/{plural}/{uid}/status` and an entry of
/// `status.controllers`. `lastReportTime` is set by the server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControllerReport {
    #[serde(default)]
    pub controller: String,
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_report_time: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_spec_gets_its_defaults() {
        let spec: ServiceSpec = serde_json::from_value(json!({
            "clusterRef": {"name": "dev"},
            "image": "nginx",
            "ports": [{"port": 80}]
        }))
        .unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.ports[0].protocol, "TCP");
        let canonical = serde_json::to_value(&spec).unwrap();
        assert_eq!(canonical["replicas"], 1);
    }

    #[test]
    fn unknown_spec_fields_are_dropped() {
        let spec: ClusterSpec = serde_json::from_value(json!({"platform": {"type": "gcp"}, "colour": "blue"})).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), json!({"platform": {"type": "gcp"}}));
    }

    #[test]
    fn controllers_are_required_by_default() {
        let spec: ControllerSpec = serde_json::from_value(json!({"kinds": ["Cluster"]})).unwrap();
        assert!(spec.required);
    }
}
