//! The CLS API server: object storage in PostgreSQL and the HTTP API.

pub mod auth;
pub mod http;
pub mod kube;
pub mod store;

/// The pure request-decoding steps that are otherwise private, for the cargo-fuzz targets in `fuzz/`: patch
/// documents (merge and JSON patch) and the server-side apply merge. Body decoding is [`http::body`].
pub mod fuzzing {
    pub use crate::http::rest::Patch;
    pub use crate::kube::apply::apply as server_side_apply;
}

pub use http::{AppState, router};
pub use store::{ScheduleConfig, Store};
