//! The `kube` crate (5.0) against the real CLS API: typed `Api<Cluster>` CRUD, patches, server-side apply,
//! finalizers, the `/status` subresource, errors, `kube::runtime::watcher`, a kube-runtime `Controller`, and
//! discovery. Every wait is bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cls_core::resources::{ControllerReport, Platform, Release};
use cls_core::{Cluster, ClusterSpec, Condition, ConditionStatus, Controller, ControllerSpec};
use common::TestApi;
use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use kube::runtime::controller::Action;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Upper bound of a whole test.
const TEST_LIMIT: Duration = Duration::from_secs(90);
/// Upper bound of one wait for something the server should do soon.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------------------------
// helpers

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_LIMIT, test).await.expect("the test finished in time");
}

fn client(api: &TestApi) -> Client {
    let mut config = kube::Config::new(api.base.parse().expect("the API base is a URI"));
    config.auth_info.token = Some(api.token.clone().into());
    Client::try_from(config).expect("a kube client")
}

fn clusters(api: &TestApi) -> Api<Cluster> {
    Api::default_namespaced(client(api))
}

fn cluster(name: &str, platform: &str) -> Cluster {
    Cluster::new(
        name,
        ClusterSpec { platform: Platform { type_: platform.into(), ..Platform::default() }, release: None },
    )
}

fn labelled(name: &str, labels: &[(&str, &str)]) -> Cluster {
    let mut object = cluster(name, "gcp");
    object.metadata.labels = Some(labels.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect());
    object
}

async fn create(api: &Api<Cluster>, object: &Cluster) -> Cluster {
    api.create(&PostParams::default(), object)
        .await
        .unwrap_or_else(|error| panic!("create {}: {error}", object.name_any()))
}

/// The `code` and `reason` of the `Status` of a failed request (panics on success or a non-API error).
fn api_error<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected a kube::Error::Api, got {other:?}"),
    }
}

fn rv(object: &impl ResourceExt) -> i64 {
    object.resource_version().expect("a resourceVersion").parse().expect("a numeric resourceVersion")
}

fn condition(object: &Cluster, type_: &str) -> Option<ConditionStatus> {
    let status = object.status.as_ref()?;
    status.conditions.iter().find(|condition| condition.type_ == type_).map(|condition| condition.status)
}

fn is_ready(object: &Cluster) -> bool {
    condition(object, "Ready") == Some(ConditionStatus::True)
}

/// Registers controller `name` for Clusters through the thin REST API.
async fn register(api: &TestApi, name: &str) {
    let (status, body) =
        api.put(&format!("/api/v1/controllers/{name}"), &json!({"spec": {"kinds": ["Cluster"]}})).await;
    assert!(status.is_success(), "registering {name}: {status} {body}");
}

fn report(controller: &str, generation: i64, available: &str) -> Value {
    json!({"controller": controller, "observedGeneration": generation,
           "conditions": [{"type": "Available", "status": available}]})
}

// ---------------------------------------------------------------------------------------------------------------
// CRUD

#[tokio::test]
async fn a_typed_api_creates_gets_and_lists_clusters_by_label() {
    bounded(async {
        let api = TestApi::start().await;
        let clusters = clusters(&api);
        let created = create(&clusters, &labelled("a", &[("team", "blue")])).await;
        create(&clusters, &labelled("b", &[("team", "red")])).await;
        create(&clusters, &labelled("c", &[("team", "blue")])).await;
        assert_eq!(created.namespace().as_deref(), Some("default"));
        assert!(created.uid().is_some(), "{created:?}");
        assert_eq!(created.metadata.generation, Some(1));

        let got = clusters.get("a").await.expect("get a");
        assert_eq!(got.spec, created.spec);
        assert_eq!(got.uid(), created.uid());
        assert_eq!(got.labels().get("team").map(String::as_str), Some("blue"));

        let blue = clusters.list(&ListParams::default().labels("team=blue")).await.expect("list team=blue");
        let names: Vec<String> = blue.items.iter().map(ResourceExt::name_any).collect();
        assert_eq!(names, ["a", "c"]);
        assert!(blue.metadata.resource_version.is_some_and(|version| !version.is_empty()));
        let all = clusters.list(&ListParams::default()).await.expect("list all");
        assert_eq!(all.items.len(), 3);
        let not_blue = clusters.list(&ListParams::default().labels("team!=blue")).await.expect("list team!=blue");
        assert_eq!(not_blue.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>(), ["b"]);
    })
    .await
}

#[tokio::test]
async fn replace_changes_the_spec_and_a_replace_with_a_stale_resource_version_is_a_409_conflict() {
    bounded(async {
        let api = TestApi::start().await;
        let clusters = clusters(&api);
        let original = create(&clusters, &cluster("r", "gcp")).await;

        let mut changed = original.clone();
        changed.spec.platform.region = Some("europe-west1".into());
        let replaced = clusters.replace("r", &PostParams::default(), &changed).await.expect("replace");
        assert_eq!(replaced.spec.platform.region.as_deref(), Some("europe-west1"));
        assert_eq!(replaced.metadata.generation, Some(2));
        assert!(rv(&replaced) > rv(&original));

        let mut stale = original.clone();
        stale.spec.platform.region = Some("us-east1".into());
        let (code, reason) = api_error(clusters.replace("r", &PostParams::default(), &stale).await);
        assert_eq!((code, reason.as_str()), (409, "Conflict"));
        let after = clusters.get("r").await.expect("get");
        assert_eq!(after.spec.platform.region.as_deref(), Some("europe-west1"), "the stale replace changed nothing");
    })
    .await
}

#[tokio::test]
async fn merge_and_json_patches_change_labels_and_spec() {
    bounded(async {
        let api = TestApi::start().await;
        let clusters = clusters(&api);
        create(&clusters, &cluster("p", "gcp")).await;

        let merge = json!({"metadata": {"labels": {"tier": "gold"}}, "spec": {"platform": {"region": "eu"}}});
        let merged = clusters.patch("p", &PatchParams::default(), &Patch::Merge(&merge)).await.expect("merge patch");
        assert_eq!(merged.labels().get("tier").map(String::as_str), Some("gold"));
        assert_eq!(merged.spec.platform.region.as_deref(), Some("eu"));
        assert_eq!(merged.metadata.generation, Some(2));

        let operations = serde_json::from_value(json!([
            {"op": "test", "path": "/spec/platform/region", "value": "eu"},
            {"op": "replace", "path": "/spec/platform/region", "value": "us"},
            {"op": "add", "path": "/metadata/labels/extra", "value": "yes"},
        ]))
        .expect("a JSON patch");
        let patched =
            clusters.patch("p", &PatchParams::default(), &Patch::<()>::Json(operations)).await.expect("json patch");
        assert_eq!(patched.spec.platform.region.as_deref(), Some("us"));
        assert_eq!(patched.labels().get("extra").map(String::as_str), Some("yes"));
        assert_eq!(patched.labels().get("tier").map(String::as_str), Some("gold"));
        assert_eq!(clusters.get("p").await.expect("get").spec, patched.spec);
    })
    .await
}

#[tokio::test]
async fn server_side_apply_twice_removes_the_fields_the_manager_dropped_and_keeps_the_others() {
    bounded(async {
        let api = TestApi::start().await;
        let clusters = clusters(&api);
        let params = PatchParams::apply("cls-test");
        let first = json!({
            "apiVersion": "cls.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "ssa", "labels": {"keep": "1", "drop": "2"}},
            "spec": {"platform": {"type": "gcp", "region": "eu"}, "release": {"version": "1.0"}},
        });
        let created = clusters.patch("ssa", &params, &Patch::Apply(&first)).await.expect("first apply creates");
        assert_eq!(created.spec.release, Some(Release { version: Some("1.0".into()), channel: None }));
        assert!(
            created.metadata.managed_fields.iter().flatten().any(|entry| entry.manager.as_deref() == Some("cls-test")),
            "managedFields name the manager: {:?}",
            created.metadata.managed_fields
        );
        // another writer's label is not the manager's to remove
        let other = json!({"metadata": {"labels": {"other": "3"}}});
        clusters.patch("ssa", &PatchParams::default(), &Patch::Merge(&other)).await.expect("merge patch");

        let second = json!({
            "apiVersion": "cls.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "ssa", "labels": {"keep": "1"}},
            "spec": {"platform": {"type": "gcp"}},
        });
        let applied = clusters.patch("ssa", &params, &Patch::Apply(&second)).await.expect("second apply");
        assert_eq!(applied.spec.platform.region, None, "the dropped spec.platform.region is gone");
        let labels: BTreeMap<String, String> = applied.labels().clone();
        assert_eq!(labels, BTreeMap::from([("keep".into(), "1".into()), ("other".into(), "3".into())]));
        assert_eq!(clusters.get("ssa").await.expect("get").spec, applied.spec);
        assert_eq!(applied.spec.release, None, "the dropped spec.release is gone: {:?}", applied.spec);
    })
    .await
}

#[tokio::test]
async fn delete_removes_a_cluster_and_a_finalizer_keeps_it_with_a_deletion_timestamp_until_removed() {
    bounded(async {
        let api = TestApi::start().await;
        let clusters = clusters(&api);
        create(&clusters, &cluster("plain", "gcp")).await;
        clusters.delete("plain", &DeleteParams::default()).await.expect("delete plain");
        assert!(clusters.get_opt("plain").await.expect("get_opt").is_none());
        assert_eq!(api_error(clusters.get("plain").await).0, 404);

        let mut guarded = cluster("guarded", "gcp");
        guarded.metadata.finalizers = Some(vec!["cls.dev/test".into()]);
        create(&clusters, &guarded).await;
        clusters.delete("guarded", &DeleteParams::default()).await.expect("delete guarded");
        let deleting = clusters.get("guarded").await.expect("still there");
        assert!(deleting.metadata.deletion_timestamp.is_some(), "{:?}", deleting.metadata);
        assert_eq!(deleting.finalizers(), ["cls.dev/test"]);

        let release = json!({"metadata": {"finalizers": null}});
        clusters.patch("guarded", &PatchParams::default(), &Patch::Merge(&release)).await.expect("drop finalizer");
        assert!(clusters.get_opt("guarded").await.expect("get_opt").is_none(), "gone once the finalizer is");
    })
    .await
}

#[tokio::test]
async fn controllers_are_cluster_scoped_and_created_and_listed_through_api_all() {
    bounded(async {
        let api = TestApi::start().await;
        let controllers: Api<Controller> = Api::all(client(&api));
        let spec = ControllerSpec {
            kinds: vec!["Cluster".into()],
            platforms: vec!["gcp".into()],
            required: true,
            description: Some("from kube-rs".into()),
        };
        let created = controllers
            .create(&PostParams::default(), &Controller::new("builder", spec.clone()))
            .await
            .expect("create");
        assert_eq!(created.namespace(), None);
        assert_eq!(created.spec, spec);
        let listed = controllers.list(&ListParams::default()).await.expect("list");
        assert_eq!(listed.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>(), ["builder"]);
        assert_eq!(controllers.get("builder").await.expect("get").spec, spec);
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// status

#[tokio::test]
async fn patch_status_with_a_controller_report_makes_the_cluster_ready_and_ignores_client_aggregates() {
    bounded(async {
        let api = TestApi::start().await;
        register(&api, "x").await;
        let clusters = clusters(&api);
        let created = create(&clusters, &cluster("s", "gcp")).await;
        assert_eq!(condition(&created, "Ready"), Some(ConditionStatus::False));

        let patch = json!({"status": {
            "phase": "Failed", "observedGeneration": 42,
            "conditions": [{"type": "Ready", "status": "False", "reason": "FromClient"}],
            "controllers": [{"controller": "x", "observedGeneration": 1,
                             "conditions": [{"type": "Available", "status": "True"}]}],
        }});
        let patched = clusters.patch_status("s", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
        assert!(is_ready(&patched), "{:?}", patched.status);
        let status = patched.status.clone().expect("status");
        assert_eq!(status.phase.map(|phase| phase.as_str()), Some("Ready"));
        assert_eq!(status.observed_generation, Some(1), "the client's observedGeneration is ignored");
        assert!(status.conditions.iter().all(|condition| condition.reason.as_deref() != Some("FromClient")));
        assert_eq!(status.controllers.len(), 1);
        assert_eq!(status.controllers[0].controller, "x");
        assert!(rv(&patched) > rv(&created));
        assert_eq!(patched.spec, created.spec, "a status write leaves the spec alone");
        assert_eq!(patched.metadata.generation, Some(1));

        let read = clusters.get_status("s").await.expect("get_status");
        assert!(is_ready(&read));
        assert_eq!(rv(&read), rv(&patched));
    })
    .await
}

#[tokio::test]
async fn the_same_status_patch_twice_is_a_no_op_that_keeps_the_resource_version() {
    bounded(async {
        let api = TestApi::start().await;
        register(&api, "x").await;
        let clusters = clusters(&api);
        create(&clusters, &cluster("noop", "gcp")).await;
        let patch = json!({"status": {"controllers": [report("x", 1, "True")]}});
        let first = clusters.patch_status("noop", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("1st");
        let second = clusters.patch_status("noop", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("2nd");
        assert_eq!(rv(&second), rv(&first), "an unchanged report must not change the resourceVersion");
    })
    .await
}

#[tokio::test]
async fn replace_status_records_a_report_and_refuses_a_stale_resource_version() {
    bounded(async {
        let api = TestApi::start().await;
        register(&api, "x").await;
        register(&api, "y").await;
        let clusters = clusters(&api);
        create(&clusters, &cluster("rs", "gcp")).await;
        let patch = json!({"status": {"controllers": [report("x", 1, "True")]}});
        let half = clusters.patch_status("rs", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
        assert!(!is_ready(&half), "y has not reported: {:?}", half.status);

        let mut full = half.clone();
        full.status.as_mut().expect("status").controllers.push(ControllerReport {
            controller: "y".into(),
            observed_generation: 1,
            conditions: vec![Condition::new("Available", ConditionStatus::True, "Test", "up")],
            ..ControllerReport::default()
        });
        let replaced = clusters.replace_status("rs", &PostParams::default(), &full).await.expect("replace_status");
        assert!(is_ready(&replaced), "{:?}", replaced.status);
        let names: BTreeSet<String> =
            replaced.status.iter().flat_map(|status| &status.controllers).map(|r| r.controller.clone()).collect();
        assert_eq!(names, BTreeSet::from(["x".to_owned(), "y".to_owned()]));

        let mut stale = half.clone();
        stale.status.as_mut().expect("status").controllers[0].conditions[0].status = ConditionStatus::False;
        let (code, _) = api_error(clusters.replace_status("rs", &PostParams::default(), &stale).await);
        assert_eq!(code, 409, "a replace_status with a stale resourceVersion");
        assert!(is_ready(&clusters.get("rs").await.expect("get")));
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// errors

#[tokio::test]
async fn errors_arrive_as_kube_api_errors_with_404_409_and_422() {
    bounded(async {
        let api = TestApi::start().await;
        let clusters = clusters(&api);
        assert_eq!(api_error(clusters.get("missing").await), (404, "NotFound".into()));
        create(&clusters, &cluster("twice", "gcp")).await;
        assert_eq!(
            api_error(clusters.create(&PostParams::default(), &cluster("twice", "gcp")).await),
            (409, "AlreadyExists".into())
        );
        assert_eq!(
            api_error(clusters.create(&PostParams::default(), &cluster("bad", "Not A Platform")).await),
            (422, "Invalid".into())
        );
        assert_eq!(api_error(clusters.create(&PostParams::default(), &cluster("empty", "")).await).0, 422);
        let patch = json!({"spec": {"platform": {"type": "aws"}}});
        let (code, _) = api_error(clusters.patch("twice", &PatchParams::default(), &Patch::Merge(&patch)).await);
        assert_eq!(code, 422, "spec.platform.type is immutable");
        assert!(clusters.get_opt("bad").await.expect("get_opt").is_none());
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// watcher

/// Forwards the items of a watcher stream from a task; errors are retried by the watcher's backoff.
fn forward<T: Send + 'static>(
    stream: impl futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
) -> (mpsc::UnboundedReceiver<T>, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Ok(item) = item
                && sender.send(item).is_err()
            {
                return;
            }
        }
    });
    (receiver, task)
}

async fn next<T>(items: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, items.recv()).await.expect("a watcher item in time").expect("the watcher runs")
}

/// Creates, modifies twice and deletes three Clusters and deletes a pre-existing one, and checks that the watcher
/// reported each change once, in order, and that `applied_objects()` saw every applied state.
async fn watcher_sees_every_change(config: watcher::Config) {
    let api = TestApi::start().await;
    let clusters = clusters(&api);
    let pre = create(&clusters, &cluster("pre", "gcp")).await;
    // a list right after a write may claim an older resourceVersion (see watch.rs); start once it has caught up
    let settled = async {
        loop {
            let version = clusters.list(&ListParams::default()).await.expect("list").metadata.resource_version;
            if version.and_then(|version| version.parse::<i64>().ok()) >= Some(rv(&pre)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, settled).await.expect("the list caught up");
    let (mut events, task) = forward(watcher(clusters.clone(), config.clone()).default_backoff());
    let (mut applied, applied_task) = forward(watcher(clusters.clone(), config).default_backoff().applied_objects());

    assert!(matches!(next(&mut events).await, watcher::Event::Init));
    let mut initial = Vec::new();
    loop {
        match next(&mut events).await {
            watcher::Event::InitApply(object) => initial.push(object.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected event during the initial list: {other:?}"),
        }
    }
    assert_eq!(initial, ["pre"]);

    let names = ["w-0", "w-1", "w-2"];
    for name in names {
        create(&clusters, &cluster(name, "gcp")).await;
    }
    for step in ["1", "2"] {
        for name in names {
            let patch = json!({"metadata": {"labels": {"step": step}}});
            clusters.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
        }
    }
    for name in names.iter().chain(&["pre"]) {
        clusters.delete(name, &DeleteParams::default()).await.expect("delete");
    }

    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut versions = Vec::new();
    while seen.values().flatten().filter(|event| event.starts_with("delete")).count() < 4 {
        let (name, entry, version) = match next(&mut events).await {
            watcher::Event::Apply(object) if object.metadata.deletion_timestamp.is_some() => {
                (object.name_any(), "deleting".to_owned(), rv(&object))
            }
            watcher::Event::Apply(object) => {
                let step = object.labels().get("step").cloned().unwrap_or_default();
                (object.name_any(), format!("apply {step}"), rv(&object))
            }
            watcher::Event::Delete(object) => (object.name_any(), "delete".to_owned(), rv(&object)),
            other => panic!("unexpected event after the initial list: {other:?}"),
        };
        seen.entry(name).or_default().push(entry);
        versions.push(version);
    }
    // CLS (unlike kube-apiserver) logs the deletionTimestamp as a MODIFIED just before the DELETED even without
    // finalizers; tolerated here, but only there.
    let without_deleting = |name: &str| -> Vec<String> {
        let events = &seen[name];
        let deleting = events.iter().filter(|event| *event == "deleting").count();
        assert!(deleting <= 1, "events of {name}: {events:?}");
        if deleting == 1 {
            assert_eq!(events[events.len() - 2], "deleting", "events of {name}: {events:?}");
        }
        events.iter().filter(|event| *event != "deleting").cloned().collect()
    };
    for name in names {
        assert_eq!(without_deleting(name), ["apply ", "apply 1", "apply 2", "delete"], "events of {name}");
    }
    assert_eq!(without_deleting("pre"), ["delete"], "the listed object is not replayed; its deletion is seen");
    assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "resourceVersions increase: {versions:?}");

    let mut applied_states = BTreeSet::new();
    while !names.iter().all(|name| applied_states.contains(&(name.to_string(), "2".to_owned()))) {
        let object = next(&mut applied).await;
        applied_states.insert((object.name_any(), object.labels().get("step").cloned().unwrap_or_default()));
    }
    for name in names {
        for step in ["", "1", "2"] {
            assert!(applied_states.contains(&(name.to_owned(), step.to_owned())), "{name} at step {step:?}");
        }
    }
    task.abort();
    applied_task.abort();
}

#[tokio::test]
async fn the_kube_runtime_watcher_sees_every_create_modify_and_delete() {
    bounded(watcher_sees_every_change(watcher::Config::default())).await
}

#[tokio::test]
async fn the_kube_runtime_watcher_with_streaming_lists_sees_every_create_modify_and_delete() {
    bounded(watcher_sees_every_change(watcher::Config::default().streaming_lists())).await
}

// ---------------------------------------------------------------------------------------------------------------
// a kube-runtime Controller

struct Reconciler {
    client: Client,
    name: String,
}

/// Reports `Available=True` at the Cluster's generation unless it already did.
async fn reconcile(object: Arc<Cluster>, context: Arc<Reconciler>) -> Result<Action, kube::Error> {
    let generation = object.metadata.generation.unwrap_or_default();
    let reported = object.status.iter().flat_map(|status| &status.controllers).any(|report| {
        report.controller == context.name
            && report.observed_generation == generation
            && report.conditions.iter().any(|c| c.type_ == "Available" && c.status == ConditionStatus::True)
    });
    if !reported {
        let namespace = object.namespace().unwrap_or_default();
        let api: Api<Cluster> = Api::namespaced(context.client.clone(), &namespace);
        let patch = json!({"status": {"controllers": [report(&context.name, generation, "True")]}});
        api.patch_status(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    Ok(Action::await_change())
}

fn retry(_: Arc<Cluster>, _: &kube::Error, _: Arc<Reconciler>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

#[tokio::test]
async fn a_kube_runtime_controller_reporting_through_patch_status_makes_every_cluster_ready_and_stops() {
    bounded(async {
        let api = TestApi::start().await;
        register(&api, "kube-rs").await;
        let client = client(&api);
        let mut expected = BTreeSet::new();
        for (namespace, name) in [("default", "a"), ("default", "b"), ("team", "c"), ("team", "d")] {
            let namespaced: Api<Cluster> = Api::namespaced(client.clone(), namespace);
            create(&namespaced, &cluster(name, "gcp")).await;
            expected.insert(format!("{namespace}/{name}"));
        }

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let context = Arc::new(Reconciler { client: client.clone(), name: "kube-rs".into() });
        let all: Api<Cluster> = Api::all(client.clone());
        let controller = kube::runtime::Controller::new(all.clone(), watcher::Config::default())
            .graceful_shutdown_on(async move {
                let _ = stopped.await;
            })
            .run(reconcile, retry, context)
            .for_each(|_| async {});
        let running = tokio::spawn(controller);

        // one more, created while the controller runs
        create(&Api::namespaced(client.clone(), "team"), &cluster("late", "aws")).await;
        expected.insert("team/late".into());

        let all_ready = async {
            loop {
                let listed = all.list(&ListParams::default()).await.expect("list");
                let ready: BTreeSet<String> = listed
                    .items
                    .iter()
                    .filter(|object| is_ready(object))
                    .map(|object| format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any()))
                    .collect();
                if ready == expected {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(WAIT, all_ready).await.expect("every Cluster became Ready");

        stop.send(()).expect("the controller listens for shutdown");
        tokio::time::timeout(WAIT, running).await.expect("the controller stopped").expect("the controller task");
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// discovery

fn cls_kinds(discovery: &Discovery) -> Vec<(String, String, bool, bool)> {
    let group = discovery.get("cls.dev").expect("the cls.dev group is discovered");
    let mut kinds: Vec<(String, String, bool, bool)> = group
        .recommended_resources()
        .into_iter()
        .map(|(resource, capabilities)| {
            let status = capabilities.subresources.iter().any(|(sub, _)| sub.plural == "status");
            (resource.kind, resource.plural, capabilities.scope == Scope::Namespaced, status)
        })
        .collect();
    kinds.sort();
    kinds
}

#[tokio::test]
async fn discovery_finds_the_cls_group_with_its_three_kinds() {
    bounded(async {
        let api = TestApi::start().await;
        let expected = vec![
            ("Cluster".to_owned(), "clusters".to_owned(), true, true),
            ("Controller".to_owned(), "controllers".to_owned(), false, false),
            ("Service".to_owned(), "services".to_owned(), true, true),
        ];
        let discovery = Discovery::new(client(&api)).run().await.expect("discovery runs");
        assert!(discovery.has_group("cls.dev"));
        let version = discovery.get("cls.dev").expect("group").preferred_version_or_latest().to_owned();
        assert_eq!(version, "v1alpha1");
        assert_eq!(cls_kinds(&discovery), expected);
        let aggregated = Discovery::new(client(&api)).run_aggregated().await.expect("aggregated discovery runs");
        assert_eq!(cls_kinds(&aggregated), expected);
    })
    .await
}
