//! CLS domain: the resource types of the `cls.dev/v1alpha1` group, their validation, label and field selectors,
//! status aggregation and the event envelope.
//!
//! Everything here is pure: no I/O, no clock reads (callers pass `now`). Transport (`cls-api`), storage and the bus
//! (`cls-reconciler`) depend on this crate and never on each other.

pub mod access;
pub mod aggregate;
pub mod condition;
pub mod crd;
pub mod event;
pub mod kind;
pub mod manifest;
pub mod resources;
pub mod selector;
pub mod validation;

pub use condition::{Condition, ConditionStatus};
pub use kind::Kind;
pub use resources::{
    Cluster, ClusterSpec, Controller, ControllerSpec, ControllerStatus, ObjectStatus, Service, ServiceSpec,
};

/// The API group of every CLS resource.
pub const GROUP: &str = "cls.dev";
/// The served version of the group.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every CLS object.
pub const API_VERSION: &str = "cls.dev/v1alpha1";
