//! A state-machine property test: random sequences of create, replace (PUT, with no, the current or a stale
//! `resourceVersion`), merge patch, controller report, delete (plain or forced) and finalizer removal on three Cluster
//! names, run through the thin REST API against a real PostgreSQL and checked after every step against a small
//! reference model: which names exist (by uid and by a field-selected list), generation, resourceVersion (bumped
//! past every earlier one on a change, unchanged otherwise), finalizers, labels, spec, deletionTimestamp (set once,
//! then kept) and the reports (controller, observedGeneration, availability, data).
//!
//! `PROPTEST_CASES` changes the number of cases (32 by default, each of 1 to 20 steps).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::TestApi;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SLOTS: usize = 3;
const FINALIZERS: [&str; 2] = ["example.com/a", "example.com/b"];
const CONTROLLERS: [&str; 2] = ["ctl-a", "ctl-b"];
const REGIONS: [Option<&str>; 3] = [None, Some("eu"), Some("us")];
const TEAMS: [Option<&str>; 3] = [None, Some("red"), Some("blue")];

/// Which `metadata.resourceVersion` a PUT carries.
#[derive(Clone, Copy, Debug)]
enum Version {
    Absent,
    Current,
    Stale,
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        slot: usize,
        finalizers: Vec<&'static str>,
        region: Option<&'static str>,
    },
    Replace {
        slot: usize,
        team: Option<&'static str>,
        finalizers: Vec<&'static str>,
        region: Option<&'static str>,
        version: Version,
    },
    PatchRegion {
        slot: usize,
        region: Option<&'static str>,
    },
    PatchTeam {
        slot: usize,
        team: Option<&'static str>,
    },
    /// A report at `generation - behind` (`behind` = -1 is ahead of the object).
    Report {
        slot: usize,
        controller: &'static str,
        behind: i64,
        available: bool,
        data: u8,
    },
    Delete {
        slot: usize,
        force: bool,
    },
    RemoveFinalizer {
        slot: usize,
        finalizer: &'static str,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let slot = || 0..SLOTS;
    let finalizers = || proptest::sample::subsequence(FINALIZERS.to_vec(), 0..=FINALIZERS.len());
    let region = || proptest::sample::select(REGIONS.to_vec());
    let team = || proptest::sample::select(TEAMS.to_vec());
    let version = prop_oneof![Just(Version::Absent), Just(Version::Current), Just(Version::Stale)];
    prop_oneof![
        3 => (slot(), finalizers(), region()).prop_map(|(slot, finalizers, region)| Op::Create { slot, finalizers, region }),
        3 => (slot(), team(), finalizers(), region(), version).prop_map(|(slot, team, finalizers, region, version)| {
            Op::Replace { slot, team, finalizers, region, version }
        }),
        1 => (slot(), region()).prop_map(|(slot, region)| Op::PatchRegion { slot, region }),
        1 => (slot(), team()).prop_map(|(slot, team)| Op::PatchTeam { slot, team }),
        3 => (slot(), proptest::sample::select(CONTROLLERS.to_vec()), -1i64..=2, any::<bool>(), 0u8..2).prop_map(
            |(slot, controller, behind, available, data)| Op::Report { slot, controller, behind, available, data }
        ),
        2 => (slot(), proptest::bool::weighted(0.25)).prop_map(|(slot, force)| Op::Delete { slot, force }),
        2 => (slot(), proptest::sample::select(FINALIZERS.to_vec()))
            .prop_map(|(slot, finalizer)| Op::RemoveFinalizer { slot, finalizer }),
    ]
}

/// What the model knows of one stored Cluster.
#[derive(Clone, Debug)]
struct Object {
    uid: String,
    generation: i64,
    resource_version: i64,
    finalizers: Vec<String>,
    labels: BTreeMap<String, String>,
    region: Option<String>,
    /// `None` until deleted; the timestamp as first seen after that.
    deletion: Option<Option<String>>,
    /// controller -> (observedGeneration, available, data)
    reports: BTreeMap<String, (i64, bool, u8)>,
}

#[derive(Debug, Default)]
struct Model {
    objects: [Option<Object>; SLOTS],
    /// The uid each slot last had, for requests on a name that is gone.
    last_uid: [Option<String>; SLOTS],
    /// The highest resourceVersion seen in this case.
    max_version: i64,
}

type Check = Result<(), String>;

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Check {
    if condition { Ok(()) } else { Err(message()) }
}

fn version_of(object: &Value) -> Result<i64, String> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("no numeric resourceVersion in {object}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(|item| item.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn labels_of(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|labels| {
            labels.iter().filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned()))).collect()
        })
        .unwrap_or_default()
}

fn team_labels(team: Option<&str>) -> BTreeMap<String, String> {
    team.map(|team| BTreeMap::from([("team".to_owned(), team.to_owned())])).unwrap_or_default()
}

struct Case<'a> {
    api: &'a TestApi,
    prefix: String,
    model: Model,
}

impl Case<'_> {
    fn name(&self, slot: usize) -> String {
        format!("{}-{slot}", self.prefix)
    }

    /// The path of the slot's object, or of the uid it last had, or of a uid never used.
    fn path(&self, slot: usize) -> String {
        let uid = self.model.objects[slot]
            .as_ref()
            .map(|object| object.uid.clone())
            .or_else(|| self.model.last_uid[slot].clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        format!("/api/v1/clusters/{uid}")
    }

    fn manifest(&self, slot: usize, team: Option<&str>, finalizers: &[&str], region: Option<&str>) -> Value {
        let mut platform = json!({"type": "local"});
        if let Some(region) = region {
            platform["region"] = json!(region);
        }
        let mut metadata = json!({"name": self.name(slot), "finalizers": finalizers});
        if let Some(team) = team {
            metadata["labels"] = json!({"team": team});
        }
        json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Cluster", "metadata": metadata, "spec": {"platform": platform}})
    }

    /// Checks a write's answer: its status, and for a success the generation it reports and a resourceVersion that
    /// moved past every earlier one when `changed`, or stayed put otherwise. Records the new version in the model.
    fn check_write(
        &mut self,
        slot: usize,
        what: &str,
        (status, body): (StatusCode, Value),
        expected: StatusCode,
        changed: bool,
    ) -> Check {
        ensure(status == expected, || format!("{what}: expected {expected}, got {status}: {body}"))?;
        if !status.is_success() {
            ensure(body["kind"] == "Status", || format!("{what}: not a Status: {body}"))?;
            return Ok(());
        }
        let version = version_of(&body)?;
        if let Some(object) = &mut self.model.objects[slot] {
            ensure(body["metadata"]["uid"] == object.uid.as_str(), || format!("{what}: another uid: {body}"))?;
            ensure(body["metadata"]["generation"] == object.generation, || {
                format!("{what}: expected generation {}: {body}", object.generation)
            })?;
            if changed {
                ensure(version > self.model.max_version, || {
                    format!("{what}: resourceVersion {version} not past {}", self.model.max_version)
                })?;
                object.resource_version = version;
                self.model.max_version = version;
            } else {
                ensure(version == object.resource_version, || {
                    format!("{what}: a no-op moved resourceVersion {} to {version}", object.resource_version)
                })?;
            }
        }
        Ok(())
    }

    /// Removes the slot's object from the model (it was finalized or force-deleted).
    fn forget(&mut self, slot: usize) {
        if let Some(object) = self.model.objects[slot].take() {
            self.model.last_uid[slot] = Some(object.uid);
        }
    }

    async fn step(&mut self, op: &Op) -> Check {
        let api = self.api;
        let what = format!("{op:?}");
        match op {
            Op::Create { slot, finalizers, region } => {
                let slot = *slot;
                let answer = api.post("/api/v1/clusters", &self.manifest(slot, None, finalizers, *region)).await;
                if self.model.objects[slot].is_some() {
                    return self.check_write(slot, &what, answer, StatusCode::CONFLICT, false);
                }
                let (status, body) = answer;
                ensure(status == StatusCode::CREATED, || format!("{what}: expected 201, got {status}: {body}"))?;
                let version = version_of(&body)?;
                ensure(version > self.model.max_version, || format!("{what}: resourceVersion {version} not new"))?;
                ensure(body["metadata"]["generation"] == 1, || format!("{what}: generation not 1: {body}"))?;
                self.model.max_version = version;
                self.model.objects[slot] = Some(Object {
                    uid: body["metadata"]["uid"].as_str().ok_or("created without uid")?.to_owned(),
                    generation: 1,
                    resource_version: version,
                    finalizers: finalizers.iter().map(|finalizer| (*finalizer).to_owned()).collect(),
                    labels: BTreeMap::new(),
                    region: region.map(str::to_owned),
                    deletion: None,
                    reports: BTreeMap::new(),
                });
                Ok(())
            }
            Op::Replace { slot, team, finalizers, region, version } => {
                let slot = *slot;
                let mut manifest = self.manifest(slot, *team, finalizers, *region);
                let current = self.model.objects[slot].clone();
                let stored_version = current.as_ref().map_or(1, |object| object.resource_version);
                match version {
                    Version::Absent => {}
                    Version::Current => manifest["metadata"]["resourceVersion"] = json!(stored_version.to_string()),
                    Version::Stale => manifest["metadata"]["resourceVersion"] = json!((stored_version - 1).to_string()),
                }
                let answer = api.put(&self.path(slot), &manifest).await;
                let Some(current) = current else {
                    return self.check_write(slot, &what, answer, StatusCode::NOT_FOUND, false);
                };
                if matches!(version, Version::Stale) {
                    return self.check_write(slot, &what, answer, StatusCode::CONFLICT, false);
                }
                let finalizers: Vec<String> = finalizers.iter().map(|finalizer| (*finalizer).to_owned()).collect();
                let deleting = current.deletion.is_some();
                if deleting && finalizers.iter().any(|finalizer| !current.finalizers.contains(finalizer)) {
                    return self.check_write(slot, &what, answer, StatusCode::UNPROCESSABLE_ENTITY, false);
                }
                let labels = team_labels(*team);
                let region = region.map(str::to_owned);
                let spec_changed = region != current.region;
                let changed = spec_changed || labels != current.labels || finalizers != current.finalizers;
                let object = self.model.objects[slot].as_mut().expect("present");
                object.generation += i64::from(spec_changed);
                object.labels = labels;
                object.region = region;
                object.finalizers = finalizers;
                let gone = deleting && object.finalizers.is_empty();
                self.check_write(slot, &what, answer, StatusCode::OK, changed)?;
                if gone {
                    self.forget(slot);
                }
                Ok(())
            }
            Op::PatchRegion { slot, region } => {
                let slot = *slot;
                let answer = api.merge(&self.path(slot), &json!({"spec": {"platform": {"region": region}}})).await;
                let Some(object) = self.model.objects[slot].as_mut() else {
                    return self.check_write(slot, &what, answer, StatusCode::NOT_FOUND, false);
                };
                let region = region.map(str::to_owned);
                let changed = region != object.region;
                object.generation += i64::from(changed);
                object.region = region;
                self.check_write(slot, &what, answer, StatusCode::OK, changed)
            }
            Op::PatchTeam { slot, team } => {
                let slot = *slot;
                let answer = api.merge(&self.path(slot), &json!({"metadata": {"labels": {"team": team}}})).await;
                let Some(object) = self.model.objects[slot].as_mut() else {
                    return self.check_write(slot, &what, answer, StatusCode::NOT_FOUND, false);
                };
                let labels = team_labels(*team);
                let changed = labels != object.labels;
                object.labels = labels;
                self.check_write(slot, &what, answer, StatusCode::OK, changed)
            }
            Op::Report { slot, controller, behind, available, data } => {
                let slot = *slot;
                let generation = self.model.objects[slot].as_ref().map_or(1, |object| object.generation);
                let observed = generation - behind;
                let condition = if *available { "True" } else { "False" };
                let report = json!({"controller": controller, "observedGeneration": observed,
                    "conditions": [{"type": "Available", "status": condition, "reason": "Model"}], "data": {"n": data}});
                let answer = api.put(&format!("{}/status", self.path(slot)), &report).await;
                if observed < 1 {
                    return self.check_write(slot, &what, answer, StatusCode::UNPROCESSABLE_ENTITY, false);
                }
                let Some(object) = self.model.objects[slot].as_mut() else {
                    return self.check_write(slot, &what, answer, StatusCode::NOT_FOUND, false);
                };
                if observed > object.generation {
                    return self.check_write(slot, &what, answer, StatusCode::UNPROCESSABLE_ENTITY, false);
                }
                let stored = object.reports.get(*controller).copied();
                if stored.is_some_and(|(stored, _, _)| stored > observed) {
                    return self.check_write(slot, &what, answer, StatusCode::CONFLICT, false);
                }
                let incoming = (observed, *available, *data);
                let changed = stored != Some(incoming);
                object.reports.insert((*controller).to_owned(), incoming);
                self.check_write(slot, &what, answer, StatusCode::OK, changed)
            }
            Op::Delete { slot, force } => {
                let slot = *slot;
                let path = if *force { format!("{}?force=true", self.path(slot)) } else { self.path(slot) };
                let answer = api.delete(&path).await;
                let Some(object) = self.model.objects[slot].as_mut() else {
                    return self.check_write(slot, &what, answer, StatusCode::NOT_FOUND, false);
                };
                if *force {
                    self.check_write(slot, &what, answer, StatusCode::OK, false)?;
                    self.forget(slot);
                    return Ok(());
                }
                let marks = object.deletion.is_none();
                if marks {
                    object.generation += 1;
                    object.deletion = Some(None);
                }
                let gone = object.finalizers.is_empty();
                self.check_write(slot, &what, answer, StatusCode::OK, marks)?;
                if gone {
                    self.forget(slot);
                }
                Ok(())
            }
            Op::RemoveFinalizer { slot, finalizer } => {
                let slot = *slot;
                let remaining: Vec<String> = self.model.objects[slot]
                    .as_ref()
                    .map(|object| object.finalizers.iter().filter(|kept| kept != finalizer).cloned().collect())
                    .unwrap_or_default();
                let value = if remaining.is_empty() { Value::Null } else { json!(remaining) };
                let answer = api.merge(&self.path(slot), &json!({"metadata": {"finalizers": value}})).await;
                let Some(object) = self.model.objects[slot].as_mut() else {
                    return self.check_write(slot, &what, answer, StatusCode::NOT_FOUND, false);
                };
                let changed = remaining != object.finalizers;
                object.finalizers = remaining;
                let gone = changed && object.deletion.is_some() && object.finalizers.is_empty();
                self.check_write(slot, &what, answer, StatusCode::OK, changed)?;
                if gone {
                    self.forget(slot);
                }
                Ok(())
            }
        }
    }

    /// Reads every slot back (by uid and by a list on its name) and compares it with the model.
    async fn verify(&mut self, after: &str) -> Check {
        for slot in 0..SLOTS {
            let name = self.name(slot);
            let (status, list) = self.api.get(&format!("/api/v1/clusters?fieldSelector=metadata.name%3D{name}")).await;
            ensure(status == StatusCode::OK, || format!("after {after}: list {name}: {status} {list}"))?;
            let listed: Vec<&Value> = list["items"].as_array().map(|items| items.iter().collect()).unwrap_or_default();
            let path = self.path(slot);
            let (status, body) = self.api.get(&path).await;
            let Some(object) = self.model.objects[slot].as_mut() else {
                ensure(listed.is_empty(), || format!("after {after}: {name} should be gone but is listed: {list}"))?;
                ensure(status == StatusCode::NOT_FOUND, || format!("after {after}: {name} should be gone: {body}"))?;
                continue;
            };
            let described = format!("after {after}: {name} (model {object:?})");
            let context = || described.clone();
            ensure(listed.len() == 1 && listed[0]["metadata"]["uid"] == object.uid.as_str(), || {
                format!("{}: listed as {list}", context())
            })?;
            ensure(status == StatusCode::OK, || format!("{}: GET {status} {body}", context()))?;
            let metadata = &body["metadata"];
            ensure(metadata["generation"] == object.generation, || format!("{}: generation in {body}", context()))?;
            ensure(version_of(&body)? == object.resource_version, || {
                format!("{}: resourceVersion in {body}", context())
            })?;
            ensure(strings(&metadata["finalizers"]) == object.finalizers, || {
                format!("{}: finalizers in {body}", context())
            })?;
            ensure(labels_of(&metadata["labels"]) == object.labels, || format!("{}: labels in {body}", context()))?;
            ensure(body["spec"]["platform"]["region"].as_str() == object.region.as_deref(), || {
                format!("{}: region in {body}", context())
            })?;
            let deletion = metadata["deletionTimestamp"].as_str().map(str::to_owned);
            match &object.deletion {
                None => ensure(deletion.is_none(), || format!("{}: deletionTimestamp in {body}", context()))?,
                Some(None) => {
                    ensure(deletion.is_some(), || format!("{}: no deletionTimestamp in {body}", context()))?;
                    object.deletion = Some(deletion);
                }
                Some(Some(first)) => ensure(deletion.as_ref() == Some(first), || {
                    format!("{}: deletionTimestamp moved from {first}: {body}", context())
                })?,
            }
            let reports: BTreeMap<String, (i64, bool, u8)> = body["status"]["controllers"]
                .as_array()
                .map(|reports| {
                    reports
                        .iter()
                        .map(|report| {
                            let available = report["conditions"]
                                .as_array()
                                .and_then(|conditions| {
                                    conditions.iter().find(|condition| condition["type"] == "Available")
                                })
                                .is_some_and(|condition| condition["status"] == "True");
                            let data =
                                report["data"]["n"].as_u64().and_then(|n| u8::try_from(n).ok()).unwrap_or(u8::MAX);
                            let controller = report["controller"].as_str().unwrap_or_default().to_owned();
                            (controller, (report["observedGeneration"].as_i64().unwrap_or_default(), available, data))
                        })
                        .collect()
                })
                .unwrap_or_default();
            ensure(reports == object.reports, || format!("{}: reports {reports:?} in {body}", context()))?;
        }
        Ok(())
    }
}

async fn run_case(api: &TestApi, case: usize, ops: &[Op]) -> Check {
    let mut case = Case { api, prefix: format!("m{case}"), model: Model::default() };
    for (index, op) in ops.iter().enumerate() {
        case.step(op).await.map_err(|error| format!("step {index}: {error}"))?;
        case.verify(&format!("step {index} {op:?}")).await?;
    }
    Ok(())
}

#[test]
fn random_sequences_of_writes_agree_with_the_reference_model() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let api = runtime.block_on(TestApi::start());
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(32);
    let mut runner =
        TestRunner::new(Config { cases, max_shrink_iters: 512, failure_persistence: None, ..Config::default() });
    // every run (shrinking included) gets names of its own in the shared database
    let counter = AtomicUsize::new(0);
    let result = runner.run(&proptest::collection::vec(op(), 1..=20), |ops| {
        let case = counter.fetch_add(1, Ordering::Relaxed);
        runtime.block_on(run_case(&api, case, &ops)).map_err(TestCaseError::fail)
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
