//! Bad input: schemathesis (PyPI) against the `/openapi.json` of the real `cls api`, over a database of its own.
//! It generates requests from the document (valid and invalid bodies, paths and queries) and fails on any 5xx;
//! at least 5,000 cases in all, bounded in time. Item paths get the uids of seeded objects half of the time, so
//! the generated bodies reach the update, patch, report and delete paths and not only the 404 of an unknown uid.
//!
//! schemathesis is installed with `pip install --quiet schemathesis` when neither `st` nor `schemathesis` is found.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cls_testkit::TestDb;
use common::{Cls, run_with_limit};
use serde_json::{Value, json};

/// Cases to generate per operation in the fuzzing phase (21 operations in the first run, 3 DELETEs in the second;
/// the coverage phase adds its own). One run of this test makes about 12,000 cases in about 70 s. Schemathesis runs
/// with one worker: several trip a CPython 3.11 `ast` race inside hypothesis (a runtime error, not a finding).
const MAX_EXAMPLES: &str = "300";

/// [`MAX_EXAMPLES`], or `CLS_SCHEMATHESIS_EXAMPLES` when set.
fn max_examples() -> String {
    std::env::var("CLS_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| MAX_EXAMPLES.to_owned())
}

/// The least number of cases the whole test must have run.
const MIN_CASES: u64 = 5_000;
/// The wall-clock bound of each schemathesis run.
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// The schemathesis command line: `st` or `schemathesis` on the PATH, else next to the Python that installs it.
fn schemathesis() -> PathBuf {
    let works = |program: &Path| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for name in ["st", "schemathesis"] {
        if works(Path::new(name)) {
            return PathBuf::from(name);
        }
    }
    let python = ["python3", "python"]
        .into_iter()
        .find(|python| works(Path::new(python)))
        .expect("python3 to install schemathesis");
    let installed =
        Command::new(python).args(["-m", "pip", "install", "--quiet", "schemathesis"]).status().expect("pip runs");
    assert!(installed.success(), "pip install schemathesis failed: {installed}");
    let scripts = Command::new(python)
        .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
        .output()
        .expect("python runs");
    let scripts = PathBuf::from(String::from_utf8_lossy(&scripts.stdout).trim());
    for candidate in [PathBuf::from("st"), scripts.join("st"), scripts.join("schemathesis")] {
        if works(&candidate) {
            return candidate;
        }
    }
    panic!("schemathesis installed but neither st nor {}/st runs", scripts.display());
}

async fn send(request: reqwest::RequestBuilder, what: &str) -> Value {
    let response = request.send().await.unwrap_or_else(|error| panic!("{what}: {error}"));
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_else(|error| panic!("{what}: {error}"));
    assert!(status.is_success(), "{what}: {status} {body}");
    body
}

/// Seeds a Cluster `dev`, a Service `web` of it (both holding a finalizer, so that a plain DELETE leaves them
/// deleting rather than gone), a registered Controller `ctl`, and one report; answers the ids item paths should hit.
async fn seed(client: &reqwest::Client, api: &Cls) -> Vec<String> {
    let cluster = json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "dev", "labels": {"team": "a"}, "finalizers": ["example.com/keep"]},
        "spec": {"platform": {"type": "local"}}});
    let cluster = send(client.post(api.url("/api/v1/clusters")).json(&cluster), "create Cluster dev").await;
    let service = json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Service",
        "metadata": {"name": "web", "finalizers": ["example.com/keep"]},
        "spec": {"clusterRef": {"name": "dev"}, "run": {"command": ["sleep", "60"]}}});
    let service = send(client.post(api.url("/api/v1/services")).json(&service), "create Service web").await;
    let controller = json!({"spec": {"kinds": ["Cluster", "Service"], "platforms": ["local"]}});
    let controller = send(client.put(api.url("/api/v1/controllers/ctl")).json(&controller), "register ctl").await;
    let cluster_uid = cluster["metadata"]["uid"].as_str().expect("Cluster uid").to_owned();
    let report = json!({"controller": "ctl", "observedGeneration": 1,
        "conditions": [{"type": "Available", "status": "True", "reason": "Seeded"}], "data": {"endpoint": "x"}});
    let url = api.url(&format!("/api/v1/clusters/{cluster_uid}/status"));
    send(client.put(url).json(&report), "report on dev").await;
    let service_uid = service["metadata"]["uid"].as_str().expect("Service uid").to_owned();
    let controller_uid = controller["metadata"]["uid"].as_str().expect("Controller uid").to_owned();
    vec![cluster_uid, service_uid, controller_uid, "ctl".to_owned()]
}

/// What one schemathesis run did.
struct Run {
    success: bool,
    output: String,
    cases: u64,
    server_errors: Vec<String>,
}

/// Runs `st run` against the API with `args` added, killing it after [`RUN_LIMIT`].
fn run_schemathesis(st: &Path, api: &Cls, token: &str, directory: &Path, name: &str, args: &[&str]) -> Run {
    let report = directory.join(format!("{name}.ndjson"));
    let mut command = Command::new(st);
    command
        .current_dir(directory)
        .args(["--config-file", "schemathesis.toml", "run", &api.url("/openapi.json")])
        .args(["--checks", "not_a_server_error", "--max-examples", &max_examples(), "--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing", "--seed", "20260101", "--no-color"])
        .args([
            "--generation-database",
            "none",
            "--generation-allow-x00",
            "false",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
        ])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--report", "ndjson", "--report-ndjson-path"])
        .arg(&report)
        .args(args);
    eprintln!("running {command:?}");
    let started = Instant::now();
    let (status, output) = run_with_limit(&mut command, RUN_LIMIT);
    let Some(status) = status else {
        panic!("schemathesis run {name} took longer than {RUN_LIMIT:?}:\n{output}");
    };
    eprintln!("schemathesis run {name} ({:.0?}, {status}):\n{output}", started.elapsed());
    let (cases, server_errors) = read_report(&report);
    Run { success: status.success(), output, cases, server_errors }
}

/// Counts the generated cases (the HTTP interactions recorded in the ndjson report) and collects every 5xx.
fn read_report(report: &Path) -> (u64, Vec<String>) {
    let text = std::fs::read_to_string(report).unwrap_or_else(|error| panic!("{}: {error}", report.display()));
    let mut cases = 0;
    let mut server_errors = Vec::new();
    let mut visit = |interaction: &Value| {
        cases += 1;
        let code = interaction["response"]["status_code"].as_u64().unwrap_or_default();
        if code >= 500 {
            server_errors.push(format!(
                "{} {} -> {code}\n  request body: {}\n  response: {}",
                interaction["request"]["method"].as_str().unwrap_or_default(),
                interaction["request"]["uri"].as_str().unwrap_or_default(),
                body_text(&interaction["request"]["body"]),
                body_text(&interaction["response"]["content"]),
            ));
        }
    };
    for line in text.lines() {
        let event: Value = serde_json::from_str(line).expect("ndjson line");
        walk_interactions(&event, &mut visit);
    }
    (cases, server_errors)
}

/// A body as the report holds it (`{"$base64": ...}` or plain text), as text.
fn body_text(body: &Value) -> String {
    let Some(encoded) = body.get("$base64").and_then(Value::as_str) else {
        return body.to_string();
    };
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for sextet in encoded.bytes().filter_map(|byte| ALPHABET.iter().position(|&letter| letter == byte)) {
        buffer = (buffer << 6) | sextet as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Calls `visit` on every object holding both a `request` and a `response`.
fn walk_interactions(value: &Value, visit: &mut impl FnMut(&Value)) {
    match value {
        Value::Object(fields) => {
            if fields.get("request").is_some_and(Value::is_object)
                && fields.get("response").is_some_and(Value::is_object)
            {
                visit(value);
            }
            fields.values().for_each(|field| walk_interactions(field, visit));
        }
        Value::Array(items) => items.iter().for_each(|item| walk_interactions(item, visit)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_in_at_least_5000_generated_cases() {
    let st = tokio::task::spawn_blocking(schemathesis).await.expect("schemathesis found or installed");
    let db = TestDb::new(&cls_api::store::MIGRATOR).await;
    let api = Cls::start(&["api"], &[("DATABASE_URL", &db.url), ("RUST_LOG", "warn")]);
    api.wait_ready().await;
    let token = common::create_token(&db.url, "admin", &[]);
    let client = common::client_with(&token);
    let ids = seed(&client, &api).await;

    let directory = std::env::temp_dir().join(format!("cls-schemathesis-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let values = ids.iter().map(|id| format!("{id:?}")).collect::<Vec<_>>().join(", ");
    let config = format!(
        "[dictionaries.seeded]\nvalues = [{values}]\n\n[parameters]\n\"path.id\" = {{ dictionary = \"seeded\", probability = 0.5 }}\n"
    );
    std::fs::write(directory.join("schemathesis.toml"), config).expect("config written");

    // everything but DELETE first, then DELETE (which ends the seeded objects) on its own
    let (directory, runs) = tokio::task::spawn_blocking(move || {
        let api = api;
        let first = run_schemathesis(&st, &api, &token, &directory, "all-but-delete", &["--exclude-method", "DELETE"]);
        let second = run_schemathesis(&st, &api, &token, &directory, "delete", &["--include-method", "DELETE"]);
        (directory, [first, second])
    })
    .await
    .expect("schemathesis runs");

    let cases: u64 = runs.iter().map(|run| run.cases).sum();
    let server_errors: Vec<&String> = runs.iter().flat_map(|run| &run.server_errors).collect();
    for run in &runs {
        assert!(
            run.success && run.server_errors.is_empty(),
            "schemathesis found a failure ({} server errors):\n{}\n{}",
            run.server_errors.len(),
            run.server_errors.join("\n"),
            run.output
        );
    }
    assert!(server_errors.is_empty());
    assert!(cases >= MIN_CASES, "only {cases} cases generated, fewer than {MIN_CASES}");
    eprintln!("schemathesis: {cases} cases, 0 server errors");
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
fn report_bodies_are_decoded_for_the_failure_message() {
    assert_eq!(body_text(&json!({"$base64": "eyJhIjoxfQ=="})), r#"{"a":1}"#);
    assert_eq!(body_text(&json!({"$base64": "YWI="})), "ab");
    assert_eq!(body_text(&json!("plain")), r#""plain""#);
}

#[test]
fn a_5xx_in_the_report_is_counted_and_collected() {
    let path = std::env::temp_dir().join(format!("cls-schemathesis-{}.ndjson", uuid::Uuid::new_v4().simple()));
    let ok = json!({"ScenarioFinished": {"recorder": {"interactions": {"a": {
        "request": {"method": "GET", "uri": "http://x/api/v1/clusters", "body": null},
        "response": {"status_code": 200, "content": null}}}}}});
    let failed = json!({"ScenarioFinished": {"recorder": {"interactions": {"b": {
        "request": {"method": "PUT", "uri": "http://x/api/v1/clusters/u", "body": {"$base64": "e30="}},
        "response": {"status_code": 500, "content": {"$base64": "Ym9vbQ=="}}}}}}});
    std::fs::write(&path, format!("{ok}\n{failed}\n")).expect("report written");
    let (cases, server_errors) = read_report(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(cases, 2);
    assert_eq!(server_errors.len(), 1, "{server_errors:?}");
    assert!(server_errors[0].contains("PUT http://x/api/v1/clusters/u -> 500") && server_errors[0].contains("boom"));
}
