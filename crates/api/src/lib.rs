//! The CLS API server: object storage in PostgreSQL and the HTTP API.

pub mod auth;
pub mod http;
pub mod kube;
pub mod store;

pub use http::{AppState, router};
pub use store::{ScheduleConfig, Store};
