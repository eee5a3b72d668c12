//! The Kubernetes-compatible API: discovery, OpenAPI v3, and `/apis/cls.dev/v1alpha1` served the way
//! kube-apiserver serves a CRD group (list, watch, get, create, update, patch: merge, JSON and apply, delete, the
//! `/status` subresource, Tables, `fieldValidation`, `dryRun`, selectors, pagination). See KUBE-WIRE.md.

pub(crate) mod apply;
mod discovery;
mod fields;
mod handlers;
pub(crate) mod openapi;
mod params;
mod table;
mod watch;

pub use handlers::routes;
