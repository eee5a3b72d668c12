//! Fault injection at the API level: controller reports delivered twice and out of order (a retried HTTP request, a
//! redelivered Pub/Sub message, two workers racing) end in the same aggregate as the same reports delivered once, in
//! order. A property test: random report histories of three required controllers on one object at generation 3
//! (each controller reporting some of generations 1..=3, in order), delivered in order to one Cluster and as a random
//! shuffle with random duplicates to another; every delivery must be answered 200 (stored or a no-op) or 409 (older
//! than what that controller already stored), exactly as a reference model says, and the two final `status` objects
//! must be equal apart from timestamps.
//!
//! `PROPTEST_CASES` changes the number of cases (32 by default).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{TestApi, generation, uid};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::StatusCode;
use serde_json::{Value, json};

const CONTROLLERS: [&str; 3] = ["order-a", "order-b", "order-c"];
const GENERATION: i64 = 3;

#[derive(Clone, Debug)]
struct Report {
    controller: &'static str,
    generation: i64,
    available: bool,
    degraded: bool,
    data: u8,
}

impl Report {
    fn body(&self) -> Value {
        let flag = |value: bool| if value { "True" } else { "False" };
        json!({
            "controller": self.controller,
            "observedGeneration": self.generation,
            "conditions": [
                {"type": "Available", "status": flag(self.available), "reason": "Probe", "message": format!("data {}", self.data)},
                {"type": "Degraded", "status": flag(self.degraded), "reason": "Probe", "message": "probe"},
            ],
            "data": {"value": self.data},
        })
    }
}

/// One controller's history: a report for each generation of a non-empty subset of 1..=3, in generation order.
fn history(controller: &'static str) -> impl Strategy<Value = Vec<Report>> {
    proptest::sample::subsequence(vec![1, 2, 3], 1..=3).prop_flat_map(move |generations| {
        let count = generations.len();
        proptest::collection::vec((any::<bool>(), proptest::bool::weighted(0.2), 0u8..4), count).prop_map(
            move |contents| {
                generations
                    .iter()
                    .zip(contents)
                    .map(|(&generation, (available, degraded, data))| Report {
                        controller,
                        generation,
                        available,
                        degraded,
                        data,
                    })
                    .collect()
            },
        )
    })
}

/// The in-order history of every controller, and a delivery of it: each report at least once, some twice, shuffled.
fn histories() -> impl Strategy<Value = (Vec<Report>, Vec<usize>)> {
    (history(CONTROLLERS[0]), history(CONTROLLERS[1]), history(CONTROLLERS[2]))
        .prop_map(|(a, b, c)| {
            let mut in_order: Vec<Report> = a.into_iter().chain(b).chain(c).collect();
            in_order.sort_by_key(|report| (report.generation, report.controller));
            in_order
        })
        .prop_flat_map(|in_order| {
            let count = in_order.len();
            let duplicates = proptest::collection::vec(0..count, 0..=count);
            (Just(in_order), duplicates)
        })
        .prop_flat_map(|(in_order, duplicates)| {
            let delivery: Vec<usize> = (0..in_order.len()).chain(duplicates).collect();
            (Just(in_order), Just(delivery).prop_shuffle())
        })
}

/// `status` without its timestamps, `controllers[]` sorted by name.
fn comparable(status: &Value) -> Value {
    fn strip(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(key, _)| !key.starts_with("last") || !key.ends_with("Time"))
                    .map(|(key, value)| (key.clone(), strip(value)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    let mut status = strip(status);
    if let Some(controllers) = status["controllers"].as_array_mut() {
        controllers.sort_by(|left, right| left["controller"].as_str().cmp(&right["controller"].as_str()));
    }
    status
}

/// A Cluster at generation 3 (two spec changes after the create).
async fn cluster_at_generation_3(api: &TestApi, name: &str) -> Result<String, String> {
    let created = api.create_cluster(name, "gcp").await;
    let path = format!("/api/v1/clusters/{}", uid(&created));
    let mut object = created;
    for region in ["one", "two"] {
        let (status, body) = api.merge(&path, &json!({"spec": {"platform": {"region": region}}})).await;
        if status != StatusCode::OK {
            return Err(format!("spec change: {status} {body}"));
        }
        object = body;
    }
    if generation(&object) != GENERATION {
        return Err(format!("expected generation {GENERATION}: {object}"));
    }
    Ok(uid(&object))
}

async fn run_case(api: &TestApi, case: usize, in_order: &[Report], delivery: &[usize]) -> Result<(), String> {
    let ordered = cluster_at_generation_3(api, &format!("order-{case}-in")).await?;
    let shuffled = cluster_at_generation_3(api, &format!("order-{case}-out")).await?;

    for report in in_order {
        let (status, body) = api.put(&format!("/api/v1/clusters/{ordered}/status"), &report.body()).await;
        if status != StatusCode::OK {
            return Err(format!("in-order {report:?}: {status} {body}"));
        }
    }
    // the model: a controller's report is stored unless that controller already stored a higher generation
    let mut stored: BTreeMap<&str, i64> = BTreeMap::new();
    for &index in delivery {
        let report = &in_order[index];
        let (status, body) = api.put(&format!("/api/v1/clusters/{shuffled}/status"), &report.body()).await;
        let newest = stored.get(report.controller).copied().unwrap_or(0);
        let expected = if report.generation >= newest { StatusCode::OK } else { StatusCode::CONFLICT };
        if status != expected {
            return Err(format!("{report:?} after generation {newest}: expected {expected}, got {status} {body}"));
        }
        if status == StatusCode::OK {
            stored.insert(report.controller, report.generation);
        }
    }

    let (_, ordered_object) = api.get(&format!("/api/v1/clusters/{ordered}")).await;
    let (_, shuffled_object) = api.get(&format!("/api/v1/clusters/{shuffled}")).await;
    let (expected, actual) = (comparable(&ordered_object["status"]), comparable(&shuffled_object["status"]));
    if expected != actual {
        return Err(format!("in order:\n{expected:#}\nshuffled with duplicates:\n{actual:#}"));
    }
    Ok(())
}

#[test]
fn reports_delivered_twice_and_out_of_order_aggregate_like_the_same_reports_in_order() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let api = runtime.block_on(async {
        let api = TestApi::start().await;
        for controller in CONTROLLERS {
            api.register(controller, &["Cluster"], &[]).await;
        }
        api
    });
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(32);
    let mut runner =
        TestRunner::new(Config { cases, max_shrink_iters: 256, failure_persistence: None, ..Config::default() });
    // every run (shrinking included) gets names of its own
    let counter = AtomicUsize::new(0);
    let result = runner.run(&histories(), |(in_order, delivery)| {
        let case = counter.fetch_add(1, Ordering::Relaxed);
        runtime.block_on(run_case(&api, case, &in_order, &delivery)).map_err(TestCaseError::fail)
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
