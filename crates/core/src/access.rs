//! Who may do what: roles, identities and the authorization rules, as pure functions.
//!
//! The API authenticates a request into an [`Identity`] (a bearer token, an OIDC token or trusted gateway
//! headers) and asks these functions before it acts. The rules:
//! - `viewer` reads every kind in its namespaces;
//! - `editor` also creates, updates and deletes Clusters and Services there (not Controllers, not reports);
//! - `controller:<name>` reads every kind in its namespaces (a Service's controller needs its Cluster and the other
//!   controllers' reports), registers and heartbeats its own `Controller` object, writes its own report and adds or
//!   removes its own finalizer (`cls.dev/<name>`), nothing else;
//! - `admin` does all, including force deletion, tokens and the audit log.
//!
//! A namespace list limits every role but admin-without-list. Objects outside it are invisible: reads answer 404
//! and lists and watches leave them out. Cluster-scoped objects (Controllers) are visible to every identity.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::Kind;

/// The finalizer a controller owns.
pub fn finalizer_of(controller: &str) -> String {
    format!("{}/{controller}", crate::GROUP)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Admin,
    Editor,
    Viewer,
    Controller(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected admin, editor, viewer or controller:<name>")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Role, UnknownRole> {
        match text {
            "admin" => Ok(Role::Admin),
            "editor" => Ok(Role::Editor),
            "viewer" => Ok(Role::Viewer),
            _ => match text.strip_prefix("controller:") {
                Some(name) if crate::validation::dns_label_problem(name).is_none() => {
                    Ok(Role::Controller(name.to_owned()))
                }
                _ => Err(UnknownRole(text.to_owned())),
            },
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Admin => formatter.write_str("admin"),
            Role::Editor => formatter.write_str("editor"),
            Role::Viewer => formatter.write_str("viewer"),
            Role::Controller(name) => write!(formatter, "controller:{name}"),
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The name audit records carry: a token's name, a JWT's user claim, the gateway's user header.
    pub user: String,
    pub role: Role,
    /// The namespaces the caller may see; `None` for all.
    pub namespaces: Option<BTreeSet<String>>,
}

/// Why a write is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The object is outside the caller's namespaces: answer as if it did not exist.
    Hidden,
    /// The caller sees the object (or names the namespace itself) but may not do this: 403 with the reason.
    Forbidden(String),
}

pub type Decision = Result<(), Denial>;

impl Identity {
    pub fn new(user: impl Into<String>, role: Role, namespaces: Option<BTreeSet<String>>) -> Identity {
        Identity { user: user.into(), role, namespaces }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The controller this identity speaks for, if it is one.
    pub fn controller(&self) -> Option<&str> {
        match &self.role {
            Role::Controller(name) => Some(name),
            _ => None,
        }
    }

    /// Whether objects of `kind` in `namespace` are visible (cluster-scoped kinds always are).
    pub fn sees(&self, kind: Kind, namespace: &str) -> bool {
        !kind.namespaced() || self.namespaces.as_ref().is_none_or(|namespaces| namespaces.contains(namespace))
    }

    /// The namespaces a list or watch of `kind` is limited to; `None` for no limit.
    pub fn visible_namespaces(&self, kind: Kind) -> Option<&BTreeSet<String>> {
        if kind.namespaced() { self.namespaces.as_ref() } else { None }
    }

    fn forbidden(&self, what: impl fmt::Display) -> Denial {
        Denial::Forbidden(format!("{} ({}) cannot {what}", self.user, self.role))
    }

    /// Creating an object of `kind` in `namespace` (the namespace is the caller's own choice, so no hiding).
    pub fn may_create(&self, kind: Kind, namespace: &str) -> Decision {
        let what = || format!("create {} in namespace {namespace:?}", kind.plural());
        if !self.sees(kind, namespace) {
            return Err(self.forbidden(what()));
        }
        match (&self.role, kind) {
            (Role::Admin, _) => Ok(()),
            (Role::Editor, Kind::Cluster | Kind::Service) => Ok(()),
            _ => Err(self.forbidden(what())),
        }
    }

    /// Changing an existing object's spec or metadata from `current_finalizers` to `desired_finalizers` (everything
    /// else `spec_or_metadata_changed` says whether it changes).
    pub fn may_update(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        spec_or_metadata_changed: bool,
        current_finalizers: &[String],
        desired_finalizers: &[String],
    ) -> Decision {
        if !self.sees(kind, namespace) {
            return Err(Denial::Hidden);
        }
        let what = || format!("update {} {}", kind.as_str(), qualified(namespace, name));
        match (&self.role, kind) {
            (Role::Admin, _) => Ok(()),
            (Role::Editor, Kind::Cluster | Kind::Service) => Ok(()),
            (Role::Controller(controller), Kind::Controller) if controller == name => Ok(()),
            (Role::Controller(controller), Kind::Cluster | Kind::Service) => {
                let own = finalizer_of(controller);
                let others = |finalizers: &[String]| -> BTreeSet<String> {
                    finalizers.iter().filter(|finalizer| **finalizer != own).cloned().collect()
                };
                if spec_or_metadata_changed || others(current_finalizers) != others(desired_finalizers) {
                    return Err(self.forbidden(format!("{}: a controller changes only its finalizer {own}", what())));
                }
                Ok(())
            }
            _ => Err(self.forbidden(what())),
        }
    }

    /// Registering (or heartbeating) the controller `name`.
    pub fn may_register(&self, name: &str) -> Decision {
        match &self.role {
            Role::Admin => Ok(()),
            Role::Controller(controller) if controller == name => Ok(()),
            _ => Err(self.forbidden(format!("register controller {name}"))),
        }
    }

    /// Deleting an object; `force` skips its finalizers.
    pub fn may_delete(&self, kind: Kind, namespace: &str, name: &str, force: bool) -> Decision {
        if !self.sees(kind, namespace) {
            return Err(Denial::Hidden);
        }
        let what = || format!("delete {} {}", kind.as_str(), qualified(namespace, name));
        match (&self.role, kind) {
            (Role::Admin, _) => Ok(()),
            (Role::Editor, Kind::Cluster | Kind::Service) if !force => Ok(()),
            (Role::Editor, Kind::Cluster | Kind::Service) => {
                Err(self.forbidden(format!("{} with force: only admins may", what())))
            }
            _ => Err(self.forbidden(what())),
        }
    }

    /// Writing `controller`'s report on an object of `kind` in `namespace`.
    pub fn may_report(&self, kind: Kind, namespace: &str, name: &str, controller: &str) -> Decision {
        if !self.sees(kind, namespace) {
            return Err(Denial::Hidden);
        }
        match &self.role {
            Role::Admin => Ok(()),
            Role::Controller(own) if own == controller => Ok(()),
            _ => Err(self.forbidden(format!(
                "write the report of {controller} on {} {}",
                kind.as_str(),
                qualified(namespace, name)
            ))),
        }
    }

    /// Tokens and the audit log.
    pub fn may_administer(&self, what: &str) -> Decision {
        if self.is_admin() { Ok(()) } else { Err(self.forbidden(what)) }
    }
}

fn qualified(namespace: &str, name: &str) -> String {
    if namespace.is_empty() { name.to_owned() } else { format!("{namespace}/{name}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(role: &str, namespaces: &[&str]) -> Identity {
        let namespaces = (!namespaces.is_empty()).then(|| namespaces.iter().map(|n| n.to_string()).collect());
        Identity::new("someone", role.parse().expect("role"), namespaces)
    }

    fn finalizers(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn roles_parse_and_print_the_same() {
        for text in ["admin", "editor", "viewer", "controller:local-process"] {
            assert_eq!(text.parse::<Role>().expect("parses").to_string(), text);
        }
        for bad in ["", "root", "controller:", "controller:Bad_Name", "Admin"] {
            assert!(bad.parse::<Role>().is_err(), "{bad}");
        }
    }

    #[test]
    fn objects_outside_the_namespaces_are_hidden_not_forbidden() {
        let editor = identity("editor", &["team-a"]);
        assert!(editor.sees(Kind::Cluster, "team-a"));
        assert!(!editor.sees(Kind::Cluster, "team-b"));
        assert!(editor.sees(Kind::Controller, ""), "cluster-scoped objects are visible to all");
        assert_eq!(editor.may_update(Kind::Cluster, "team-b", "x", true, &[], &[]), Err(Denial::Hidden));
        assert_eq!(editor.may_delete(Kind::Cluster, "team-b", "x", false), Err(Denial::Hidden));
        assert!(matches!(editor.may_create(Kind::Cluster, "team-b"), Err(Denial::Forbidden(_))));
        assert_eq!(editor.may_create(Kind::Service, "team-a"), Ok(()));
    }

    #[test]
    fn viewers_write_nothing() {
        let viewer = identity("viewer", &[]);
        assert!(matches!(viewer.may_create(Kind::Cluster, "default"), Err(Denial::Forbidden(_))));
        assert!(matches!(viewer.may_update(Kind::Cluster, "default", "x", true, &[], &[]), Err(Denial::Forbidden(_))));
        assert!(matches!(viewer.may_delete(Kind::Service, "default", "x", false), Err(Denial::Forbidden(_))));
        assert!(matches!(viewer.may_report(Kind::Service, "default", "x", "c"), Err(Denial::Forbidden(_))));
        assert!(matches!(viewer.may_register("c"), Err(Denial::Forbidden(_))));
    }

    #[test]
    fn editors_cannot_force_delete_register_or_report() {
        let editor = identity("editor", &[]);
        assert_eq!(editor.may_delete(Kind::Cluster, "default", "x", false), Ok(()));
        assert!(matches!(editor.may_delete(Kind::Cluster, "default", "x", true), Err(Denial::Forbidden(_))));
        assert!(matches!(editor.may_register("c"), Err(Denial::Forbidden(_))));
        assert!(matches!(editor.may_report(Kind::Cluster, "default", "x", "c"), Err(Denial::Forbidden(_))));
        assert!(matches!(editor.may_create(Kind::Controller, ""), Err(Denial::Forbidden(_))));
        assert!(matches!(editor.may_administer("list tokens"), Err(Denial::Forbidden(_))));
    }

    #[test]
    fn a_controller_writes_only_its_report_its_registration_and_its_finalizer() {
        let controller = identity("controller:alpha", &[]);
        assert_eq!(controller.may_report(Kind::Service, "default", "x", "alpha"), Ok(()));
        assert!(matches!(controller.may_report(Kind::Service, "default", "x", "beta"), Err(Denial::Forbidden(_))));
        assert_eq!(controller.may_register("alpha"), Ok(()));
        assert!(matches!(controller.may_register("beta"), Err(Denial::Forbidden(_))));
        let before = finalizers(&["cls.dev/beta"]);
        let with_own = finalizers(&["cls.dev/beta", "cls.dev/alpha"]);
        assert_eq!(controller.may_update(Kind::Service, "default", "x", false, &before, &with_own), Ok(()));
        assert_eq!(controller.may_update(Kind::Service, "default", "x", false, &with_own, &before), Ok(()));
        let without_other = finalizers(&["cls.dev/alpha"]);
        assert!(matches!(
            controller.may_update(Kind::Service, "default", "x", false, &with_own, &without_other),
            Err(Denial::Forbidden(_))
        ));
        assert!(matches!(
            controller.may_update(Kind::Service, "default", "x", true, &before, &with_own),
            Err(Denial::Forbidden(_))
        ));
        assert!(matches!(controller.may_create(Kind::Cluster, "default"), Err(Denial::Forbidden(_))));
        assert!(matches!(controller.may_delete(Kind::Cluster, "default", "x", false), Err(Denial::Forbidden(_))));
        assert_eq!(controller.may_update(Kind::Controller, "", "alpha", true, &[], &[]), Ok(()));
        assert!(matches!(
            controller.may_update(Kind::Controller, "", "beta", true, &[], &[]),
            Err(Denial::Forbidden(_))
        ));
    }

    #[test]
    fn admins_do_all() {
        let admin = identity("admin", &[]);
        assert_eq!(admin.may_delete(Kind::Cluster, "any", "x", true), Ok(()));
        assert_eq!(admin.may_report(Kind::Cluster, "any", "x", "whoever"), Ok(()));
        assert_eq!(admin.may_administer("tokens"), Ok(()));
        assert_eq!(admin.may_create(Kind::Controller, ""), Ok(()));
    }
}
