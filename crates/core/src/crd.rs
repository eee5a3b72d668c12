//! The CustomResourceDefinitions of the group, generated from the Rust types: the same schemas serve `cls crds`,
//! `crds/`, the OpenAPI documents and field validation.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::kind::Kind;
use crate::resources::{Cluster, Controller, Service};

/// The CRD of `kind`.
pub fn crd(kind: Kind) -> CustomResourceDefinition {
    match kind {
        Kind::Cluster => Cluster::crd(),
        Kind::Service => Service::crd(),
        Kind::Controller => Controller::crd(),
    }
}

/// The structural OpenAPI v3 schema of a whole object of `kind` (`openAPIV3Schema` of its CRD).
pub fn schema(kind: Kind) -> Value {
    let crd = crd(kind);
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|validation| validation.open_api_v3_schema.as_ref());
    serde_json::to_value(schema).expect("schema serializes")
}

/// All CRDs as one multi-document YAML stream, as `cls crds` prints and `crds/` holds.
pub fn crds_yaml() -> String {
    Kind::ALL
        .into_iter()
        .map(|kind| {
            let document = serde_json::to_value(crd(kind)).expect("crd serializes");
            format!("---\n{}", serde_norway::to_string(&document).expect("crd as yaml"))
        })
        .collect()
}
