//! The resource kinds CLS serves and their names on the wire.

use std::fmt;

/// A kind of resource in the `cls.dev` group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Cluster,
    Service,
    Controller,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Cluster, Kind::Service, Kind::Controller];

    /// The kind as written in manifests (`Cluster`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cluster => "Cluster",
            Kind::Service => "Service",
            Kind::Controller => "Controller",
        }
    }

    /// The list kind (`ClusterList`).
    pub fn list_kind(self) -> &'static str {
        match self {
            Kind::Cluster => "ClusterList",
            Kind::Service => "ServiceList",
            Kind::Controller => "ControllerList",
        }
    }

    /// The resource name in URLs (`clusters`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Cluster => "clusters",
            Kind::Service => "services",
            Kind::Controller => "controllers",
        }
    }

    /// The singular resource name (`cluster`); also the prefix of event types.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Service => "service",
            Kind::Controller => "controller",
        }
    }

    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Cluster => &["cl"],
            Kind::Service => &["cs"],
            Kind::Controller => &[],
        }
    }

    /// Whether objects of this kind live in a namespace (`Controller` is cluster-scoped).
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Controller)
    }

    /// Whether controllers reconcile this kind (reports, aggregation, schedule, events).
    pub fn reconciled(self) -> bool {
        !matches!(self, Kind::Controller)
    }

    pub fn from_plural(plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.plural() == plural)
    }

    pub fn from_kind_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_plural_and_name() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_plural(kind.plural()), Some(kind));
            assert_eq!(Kind::from_kind_name(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::from_plural("pods"), None);
    }
}
