//! Watch: newline-delimited JSON events over a chunked response, fed by the process's change feed.
//!
//! `resourceVersion` empty or `0` (or `sendInitialEvents=true`) starts with a synthetic `ADDED` for every match,
//! then live events; `resourceVersion=N` replays every change after N from the feed's buffer, or answers an `ERROR`
//! event with a 410 `Expired` Status when N is older than the buffer. Bookmarks carry the last resourceVersion sent.
//! The stream ends after `timeoutSeconds`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use cls_core::Kind;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use super::params::KubeParams;
use super::table::{IncludeObject, table};
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::store::feed::Change;
use crate::store::{ListQuery, StoredObject};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `?watch=true`.
pub async fn watch(
    state: AppState,
    kind: Kind,
    query: ListQuery,
    params: KubeParams,
    as_table: bool,
) -> ApiResult<Response> {
    if !state.feed.is_running() {
        return Err(ApiError::unavailable("watch is not available yet: the change feed is starting"));
    }
    let timeout = match params.timeout_seconds.as_deref() {
        None | Some("") => DEFAULT_TIMEOUT,
        Some(text) => Duration::from_secs(
            text.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {text:?}")))?,
        ),
    };
    let bookmarks = KubeParams::flag(params.allow_watch_bookmarks.as_deref(), "allowWatchBookmarks")?;
    let send_initial = KubeParams::flag(params.send_initial_events.as_deref(), "sendInitialEvents")?;
    let requested = match params.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(text) => {
            Some(text.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {text:?}")))?)
        }
    };
    let include = IncludeObject::parse(params.include_object.as_deref());
    let filter = Filter { kind, query: query.clone() };
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let events = Events { sender, kind, as_table, include };

    let initial = send_initial || requested.is_none();
    // the initial objects and the point the live events start from come from one snapshot
    let (listed, start) = if initial {
        let all = ListQuery { all: true, continue_after: None, feed_cursor: state.feed_cursor(), ..query.clone() };
        let page = state.store.list(kind, &all).await?;
        (page.items, page.resource_version)
    } else {
        (Vec::new(), requested.unwrap_or_default())
    };
    let (backlog, live) = match state.feed.subscribe_from(start) {
        Ok(subscription) => (subscription.backlog, subscription.live),
        Err(expired) => {
            events.expired(start, expired.oldest).await;
            return Ok(stream_response(receiver));
        }
    };
    tokio::spawn(async move {
        let mut seen: HashMap<Uuid, i64> = HashMap::new();
        for object in &listed {
            seen.insert(object.uid, object.resource_version);
            if !events.send("ADDED", object.to_json()).await {
                return;
            }
        }
        let mut last = start;
        if send_initial && bookmarks {
            let annotations = json!({"k8s.io/initial-events-end": "true"});
            if !events.bookmark(start, Some(annotations)).await {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut live = live;
        let mut backlog = backlog.into_iter();
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            let change = if let Some(change) = backlog.next() {
                change
            } else {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = events.sender.closed() => return,
                    _ = ticker.tick() => {
                        if bookmarks && !events.bookmark(last, None).await {
                            return;
                        }
                        continue;
                    }
                    received = live.recv() => match received {
                        Ok(change) => change,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            events.expired(last, last).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            };
            if change.resource_version <= start {
                continue;
            }
            last = change.resource_version;
            let Some(event_type) = filter.event_type(&change) else {
                continue;
            };
            if let Some(uid) = change.uid
                && seen.get(&uid).is_some_and(|listed_version| *listed_version >= change.resource_version)
            {
                continue;
            }
            let sent = if event_type == change.event_type {
                events.send_change(&change).await
            } else {
                events.send(event_type, change.object.clone()).await
            };
            if !sent {
                return;
            }
        }
    });
    Ok(stream_response(receiver))
}

fn stream_response(receiver: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Response {
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

struct Filter {
    kind: Kind,
    query: ListQuery,
}

impl Filter {
    /// The event this watcher sees for `change`, if any: an object whose labels leave the selection is DELETED for
    /// it, one whose labels enter it is ADDED, as kube-apiserver does.
    fn event_type<'a>(&self, change: &'a Change) -> Option<&'a str> {
        if !self.matches(change) {
            let previous = change.previous_labels.as_ref()?;
            return (change.event_type == "MODIFIED" && self.selects(change, previous)).then_some("DELETED");
        }
        match &change.previous_labels {
            Some(previous) if change.event_type == "MODIFIED" && !self.selects(change, previous) => Some("ADDED"),
            _ => Some(change.event_type.as_str()),
        }
    }

    /// Whether the object, with `labels` instead of its own, matches.
    fn selects(&self, change: &Change, labels: &BTreeMap<String, String>) -> bool {
        self.query.labels.matches(labels) && self.matches_fields(change)
    }

    fn matches(&self, change: &Change) -> bool {
        if !self.matches_fields(change) {
            return false;
        }
        let metadata = &change.object["metadata"];
        let labels: BTreeMap<String, String> = serde_json::from_value(metadata["labels"].clone()).unwrap_or_default();
        self.query.labels.matches(&labels)
    }

    /// Kind, namespace and field selector (all immutable for an object).
    fn matches_fields(&self, change: &Change) -> bool {
        if change.kind != self.kind.as_str() {
            return false;
        }
        if self.query.namespace.as_ref().is_some_and(|namespace| *namespace != change.namespace) {
            return false;
        }
        if self.query.visible_namespaces.as_ref().is_some_and(|visible| !visible.contains(&change.namespace)) {
            return false;
        }
        let metadata = &change.object["metadata"];
        self.query.fields.matches(|field| {
            let value = match field {
                "metadata.name" => &metadata["name"],
                "metadata.namespace" => &metadata["namespace"],
                "spec.platform.type" => &change.object["spec"]["platform"]["type"],
                "spec.clusterRef.name" => &change.object["spec"]["clusterRef"]["name"],
                _ => &Value::Null,
            };
            value.as_str().map(str::to_owned)
        })
    }
}

struct Events {
    sender: mpsc::Sender<Result<Bytes, std::io::Error>>,
    kind: Kind,
    as_table: bool,
    include: IncludeObject,
}

impl Events {
    async fn line(&self, event: Value) -> bool {
        let mut line = event.to_string();
        line.push('\n');
        self.sender.send(Ok(Bytes::from(line))).await.is_ok()
    }

    async fn send(&self, event_type: &str, object: Value) -> bool {
        let object = if self.as_table {
            match StoredObject::from_json(self.kind, &object) {
                Some(stored) => {
                    let metadata = json!({"resourceVersion": stored.resource_version.to_string()});
                    table(self.kind, &[stored], metadata, self.include)
                }
                None => object,
            }
        } else {
            object
        };
        self.line(json!({"type": event_type, "object": object})).await
    }

    async fn send_change(&self, change: &Change) -> bool {
        if self.as_table {
            return self.send(&change.event_type, change.object.clone()).await;
        }
        self.sender.send(Ok(change.line())).await.is_ok()
    }

    async fn bookmark(&self, resource_version: i64, annotations: Option<Value>) -> bool {
        let mut metadata = json!({"resourceVersion": resource_version.to_string()});
        if let Some(annotations) = annotations {
            metadata["annotations"] = annotations;
        }
        let object = json!({"kind": self.kind.as_str(), "apiVersion": cls_core::API_VERSION, "metadata": metadata});
        self.line(json!({"type": "BOOKMARK", "object": object})).await
    }

    async fn expired(&self, requested: i64, oldest: i64) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
            "message": format!("too old resource version: {requested} ({oldest})"),
        });
        self.line(json!({"type": "ERROR", "object": status})).await;
    }
}
