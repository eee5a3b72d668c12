//! `port-allocator` (Services, all platforms): assigns `port: 0`, detects two Services of one Cluster claiming one
//! port (and, on `local`, a port already bound on this host by something else), and reports every port of the
//! Service in its report's `data.ports` (`[{name, port, protocol}]`), which the runtime controllers read.
//!
//! Ownership of a contested port goes to the Service created first (then by name); the other one reports
//! `Available=False`, `Degraded=True` with reason `PortConflict`, a message naming the Service that holds the port
//! and a suggested free port, and re-checks every few seconds. An assigned port is kept across reconciles (it is read
//! back from this controller's previous report) unless it became contested.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::time::Duration;

use cls_core::resources::ServicePort;
use cls_core::{Condition, ConditionStatus, Kind};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::Object;
use crate::sdk::{ControllerConfig, Outcome, Reconcile, ReconcileError, Request};

pub const NAME: &str = "port-allocator";
/// Ports handed out on platforms other than `local` (the Kubernetes NodePort range).
const RANGE: std::ops::RangeInclusive<i64> = 30000..=32767;
/// How often a Service in conflict checks again.
const CONFLICT_RECHECK: Duration = Duration::from_secs(5);

pub fn config() -> ControllerConfig {
    ControllerConfig::new(NAME, &[Kind::Service]).description("assigns port 0 and detects port conflicts")
}

/// One port as reported in `data.ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedPort {
    pub name: String,
    pub port: i64,
    #[serde(default = "tcp")]
    pub protocol: String,
}

fn tcp() -> String {
    "TCP".to_owned()
}

/// The ports a controller reported in its `data.ports`.
pub fn reported_ports(object: &Object, controller: &str) -> Vec<AssignedPort> {
    object
        .report_of(controller)
        .and_then(|report| report.data.as_ref())
        .and_then(|data| serde_json::from_value(data["ports"].clone()).ok())
        .unwrap_or_default()
}

/// The name a port goes by in reports: its name, or `port-<index>`.
pub fn port_name(port: &ServicePort, index: usize) -> String {
    port.name.clone().unwrap_or_else(|| format!("port-{index}"))
}

/// A Service as the allocation sees it.
#[derive(Clone, Debug)]
pub struct Claimant {
    pub name: String,
    /// `(creationTimestamp, name)`: the lower owns a contested port.
    pub seniority: (String, String),
    pub ports: Vec<ServicePort>,
    /// What this controller assigned it before.
    pub assigned: Vec<AssignedPort>,
}

impl Claimant {
    pub fn from_object(object: &Object) -> Claimant {
        let created = object.document["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_owned();
        Claimant {
            name: object.name.clone(),
            seniority: (created, object.name.clone()),
            ports: object.service_spec().map(|spec| spec.ports).unwrap_or_default(),
            assigned: reported_ports(object, NAME),
        }
    }

    /// The ports it holds: fixed ports, and assigned ones for `port: 0`.
    fn claims(&self) -> Vec<(i64, String)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(index, port)| {
                if port.port != 0 {
                    return Some((port.port, port.protocol.clone()));
                }
                let name = port_name(port, index);
                self.assigned.iter().find(|assigned| assigned.name == name).map(|a| (a.port, port.protocol.clone()))
            })
            .collect()
    }
}

/// A port of this Service that another holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub port: i64,
    pub protocol: String,
    /// `Service default/web`, or `another process on this host`.
    pub holder: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub ports: Vec<AssignedPort>,
    pub conflicts: Vec<Conflict>,
}

/// Assigns and checks the ports of `this` against the senior Services of its Cluster. `free` picks a port outside
/// the given claims. Pure apart from `free`.
pub fn plan(
    this: &Claimant,
    namespace: &str,
    others: &[Claimant],
    mut free: impl FnMut(&BTreeSet<(i64, String)>) -> i64,
) -> Plan {
    let senior: Vec<&Claimant> = others.iter().filter(|other| other.seniority < this.seniority).collect();
    let mut taken: BTreeSet<(i64, String)> = others.iter().flat_map(Claimant::claims).collect();
    let holder = |port: i64, protocol: &str| {
        senior.iter().find(|other| other.claims().iter().any(|(p, proto)| *p == port && proto == protocol))
    };
    let mut plan = Plan { ports: Vec::new(), conflicts: Vec::new() };
    for (index, port) in this.ports.iter().enumerate() {
        let name = port_name(port, index);
        let protocol = port.protocol.clone();
        let number = if port.port != 0 {
            if let Some(other) = holder(port.port, &protocol) {
                plan.conflicts.push(Conflict {
                    port: port.port,
                    protocol: protocol.clone(),
                    holder: format!("Service {namespace}/{}", other.name),
                });
            }
            port.port
        } else {
            let previous = this.assigned.iter().find(|assigned| assigned.name == name).map(|assigned| assigned.port);
            match previous {
                Some(previous) if !taken.contains(&(previous, protocol.clone())) => previous,
                _ => free(&taken),
            }
        };
        taken.insert((number, protocol.clone()));
        plan.ports.push(AssignedPort { name, port: number, protocol });
    }
    plan
}

/// Whether something on this host holds `port` (binding it fails).
fn bound_on_host(port: i64, protocol: &str) -> bool {
    let Ok(port) = u16::try_from(port) else { return false };
    if protocol == "UDP" {
        UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err()
    } else {
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err()
    }
}

/// A port the host's kernel says is free, outside `taken`.
fn free_on_host(taken: &BTreeSet<(i64, String)>) -> i64 {
    for _ in 0..64 {
        if let Ok(port) = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|listener| listener.local_addr()) {
            let port = i64::from(port.port());
            if !taken.iter().any(|(claimed, _)| *claimed == port) {
                return port;
            }
        }
    }
    *RANGE.start()
}

fn free_in_range(taken: &BTreeSet<(i64, String)>) -> i64 {
    RANGE.clone().find(|port| !taken.iter().any(|(claimed, _)| claimed == port)).unwrap_or(*RANGE.start())
}

pub struct PortAllocator;

impl Reconcile for PortAllocator {
    async fn reconcile(&self, request: &Request) -> Result<Outcome, ReconcileError> {
        let object = &request.object;
        let cluster = object.service_spec().map(|spec| spec.cluster_ref.name).unwrap_or_default();
        let siblings = request.api.services_of(&object.namespace, &cluster).await?;
        let others: Vec<Claimant> = siblings
            .iter()
            .filter(|sibling| sibling.uid != object.uid && !sibling.deleting)
            .map(Claimant::from_object)
            .collect();
        let this = Claimant::from_object(object);
        let local = request.platform == "local";
        let mut plan = if local {
            plan(&this, &object.namespace, &others, free_on_host)
        } else {
            plan(&this, &object.namespace, &others, free_in_range)
        };
        if local {
            // A port the Service's own processes hold is not a conflict: local-process reports what it runs on.
            let running = reported_ports(object, crate::local_process::NAME);
            for port in &this.ports {
                let own = running.iter().any(|r| r.port == port.port && r.protocol == port.protocol);
                let known = plan.conflicts.iter().any(|c| c.port == port.port && c.protocol == port.protocol);
                if port.port != 0 && !own && !known && bound_on_host(port.port, &port.protocol) {
                    plan.conflicts.push(Conflict {
                        port: port.port,
                        protocol: port.protocol.clone(),
                        holder: "another process on this host".to_owned(),
                    });
                }
            }
        }
        let data = json!({"ports": plan.ports});
        if plan.conflicts.is_empty() {
            let message =
                plan.ports.iter().map(|p| format!("{} {}/{}", p.name, p.port, p.protocol)).collect::<Vec<_>>();
            return Ok(Outcome::available("PortsAssigned", format!("ports: {}", message.join(", ")))
                .with_condition(Condition::new("Degraded", ConditionStatus::False, "NoConflicts", "no port conflicts"))
                .with_data(data));
        }
        let mut taken: BTreeSet<(i64, String)> = others.iter().flat_map(Claimant::claims).collect();
        taken.extend(plan.ports.iter().map(|p| (p.port, p.protocol.clone())));
        let messages: Vec<String> = plan
            .conflicts
            .iter()
            .map(|conflict| {
                let suggested = if local { free_on_host(&taken) } else { free_in_range(&taken) };
                taken.insert((suggested, conflict.protocol.clone()));
                format!(
                    "port {}/{} is already claimed by {}; suggested free port: {suggested}",
                    conflict.port, conflict.protocol, conflict.holder
                )
            })
            .collect();
        let message = messages.join("; ");
        Ok(Outcome::progressing("PortConflict", message.clone())
            .with_condition(Condition::new("Degraded", ConditionStatus::True, "PortConflict", message))
            .with_data(data)
            .requeue(CONFLICT_RECHECK))
    }

    async fn cleanup(&self, _request: &Request) -> Result<(), ReconcileError> {
        Ok(())
    }

    fn uses_finalizer(&self, _kind: Kind) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, number: i64) -> ServicePort {
        ServicePort { name: Some(name.into()), port: number, protocol: "TCP".into() }
    }

    fn claimant(name: &str, created: &str, ports: Vec<ServicePort>, assigned: Vec<AssignedPort>) -> Claimant {
        Claimant { name: name.into(), seniority: (created.into(), name.into()), ports, assigned }
    }

    fn assigned(name: &str, number: i64) -> AssignedPort {
        AssignedPort { name: name.into(), port: number, protocol: "TCP".into() }
    }

    #[test]
    fn port_zero_gets_a_port_nobody_in_the_cluster_holds() {
        let web = claimant("web", "1", vec![port("http", 30000)], vec![]);
        let api = claimant("api", "2", vec![port("http", 0)], vec![]);
        let plan = plan(&api, "default", &[web], free_in_range);
        assert_eq!(plan.ports, vec![assigned("http", 30001)]);
        assert!(plan.conflicts.is_empty());
    }

    #[test]
    fn an_assigned_port_is_kept_across_reconciles() {
        let api = claimant("api", "2", vec![port("http", 0)], vec![assigned("http", 31000)]);
        let plan = plan(&api, "default", &[], |_| panic!("no new port needed"));
        assert_eq!(plan.ports, vec![assigned("http", 31000)]);
    }

    #[test]
    fn the_younger_of_two_services_claiming_one_port_is_in_conflict() {
        let web = claimant("web", "1", vec![port("http", 8000)], vec![]);
        let api = claimant("api", "2", vec![port("http", 8000)], vec![]);
        let younger = plan(&api, "default", std::slice::from_ref(&web), free_in_range);
        assert_eq!(
            younger.conflicts,
            vec![Conflict { port: 8000, protocol: "TCP".into(), holder: "Service default/web".into() }]
        );
        let older = plan(&web, "default", &[api], free_in_range);
        assert!(older.conflicts.is_empty());
    }

    #[test]
    fn a_contested_assignment_is_replaced() {
        let web = claimant("web", "1", vec![port("http", 30000)], vec![]);
        let api = claimant("api", "2", vec![port("http", 0)], vec![assigned("http", 30000)]);
        let plan = plan(&api, "default", &[web], free_in_range);
        assert_eq!(plan.ports, vec![assigned("http", 30001)]);
    }
}
