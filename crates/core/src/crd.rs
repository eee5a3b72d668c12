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

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` is generated: regenerate it with `cargo run -p cls -- crds > crds/cls.dev.yaml`.
    #[test]
    fn the_committed_crds_match_the_rust_types() {
        let committed = include_str!("../../../crds/cls.dev.yaml");
        assert!(
            committed == crds_yaml(),
            "crds/cls.dev.yaml is stale: run `cargo run -p cls -- crds > crds/cls.dev.yaml`"
        );
    }

    #[test]
    fn every_kind_has_a_structural_schema_with_spec_and_status() {
        for kind in Kind::ALL {
            let schema = schema(kind);
            assert_eq!(schema["type"], "object", "{kind}");
            assert!(schema["properties"]["spec"].is_object(), "{kind}");
            assert!(schema["properties"]["status"].is_object(), "{kind}");
        }
    }
}
