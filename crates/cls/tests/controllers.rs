//! The built-in controllers end to end: the real `cls up` (API, reconciler, in-process bus, local-process and
//! port-allocator) on a real PostgreSQL, driven over the thin REST API, with real processes on this host.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cls_testkit::TestDb;
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_cls");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
/// Bounds every wait for a state.
const WAIT: Duration = Duration::from_secs(45);

/// A `cls up` of its own on its own database and CLS_HOME; killed on drop.
struct Up {
    child: Child,
    base: String,
    home: std::path::PathBuf,
    http: reqwest::Client,
    _db: TestDb,
}

impl Up {
    async fn start() -> Up {
        let db = TestDb::new(&cls_api::store::MIGRATOR).await;
        let home = std::env::temp_dir().join(format!("cls-controllers-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&home).unwrap();
        let mut child = Command::new(BINARY)
            .args(["up", "--listen", "127.0.0.1:0"])
            .env("DATABASE_URL", &db.url)
            .env("CLS_HOME", &home)
            .env("CLS_LOG_FORMAT", "json")
            .env_remove("PUBSUB_EMULATOR_HOST")
            .env_remove("CLS_PUBSUB_PROJECT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cls starts");
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("cls: {line}");
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (sender, address) = mpsc::channel();
        let (token_sender, token) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(base) = line.strip_prefix("cls api listening on ") {
                    let _ = sender.send(base.to_owned());
                }
                if let Some((_, secret)) = line.split_once("/ui#token=") {
                    let _ = token_sender.send(secret.to_owned());
                }
            }
        });
        let base = address.recv_timeout(Duration::from_secs(60)).expect("cls prints its address");
        let token = token.recv_timeout(Duration::from_secs(60)).expect("cls up prints its admin token");
        let http = common::client_with(&token);
        let up = Up { child, base, home, http, _db: db };
        up.eventually("cls up ready", || async {
            up.http.get(up.url("/readyz")).send().await.is_ok_and(|response| response.status() == 200)
        })
        .await;
        // Until a controller is registered it is in no required set, so an object applied then could be Ready
        // without it: `cls up` prints its dashboard link (and "kubectl is ready") only once both are registered.
        let list: Value = up.http.get(up.url("/api/v1/controllers")).send().await.unwrap().json().await.unwrap();
        let names: Vec<&str> = list["items"]
            .as_array()
            .map(|items| items.iter().filter_map(|item| item["metadata"]["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            names.contains(&"local-process") && names.contains(&"port-allocator"),
            "cls up said it was ready before its controllers registered: {names:?}"
        );
        up
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn create(&self, plural: &str, manifest: Value) -> Value {
        let response = self.http.post(self.url(&format!("/api/v1/{plural}"))).json(&manifest).send().await.unwrap();
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        response.json().await.unwrap()
    }

    async fn create_yaml(&self, plural: &str, yaml: String) -> Value {
        let response = self
            .http
            .post(self.url(&format!("/api/v1/{plural}")))
            .header("content-type", "application/yaml")
            .body(yaml)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        response.json().await.unwrap()
    }

    async fn get(&self, plural: &str, uid: &str) -> Option<Value> {
        let response = self.http.get(self.url(&format!("/api/v1/{plural}/{uid}"))).send().await.unwrap();
        if response.status() == 404 {
            return None;
        }
        Some(response.json().await.unwrap())
    }

    async fn eventually<F, Fut>(&self, what: &str, probe: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        cls_testkit::eventually(WAIT, what, probe).await;
    }

    /// Waits until the object is Ready at its current generation and answers it.
    async fn ready(&self, plural: &str, uid: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let object = self.get(plural, uid).await.expect("object exists");
            if is_ready(&object) {
                return object;
            }
            assert!(Instant::now() < deadline, "not Ready after {WAIT:?}: {object:#}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "cls up did not exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // the watchdog of local-process reads the pid files to kill what cls up left: let it finish first
        let pids = self.home.join("local-process").join("pids");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(&pids).is_ok_and(|mut entries| entries.next().is_some()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn is_ready(object: &Value) -> bool {
    let conditions = object["status"]["conditions"].as_array().cloned().unwrap_or_default();
    conditions.iter().any(|condition| condition["type"] == "Ready" && condition["status"] == "True")
        && object["status"]["observedGeneration"] == object["metadata"]["generation"]
}

fn report<'a>(object: &'a Value, controller: &str) -> Option<&'a Value> {
    object["status"]["controllers"].as_array()?.iter().find(|report| report["controller"] == controller)
}

fn pids(object: &Value) -> Vec<u32> {
    report(object, "local-process")
        .and_then(|report| report["data"]["pids"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|pid| pid.as_u64().map(|pid| pid as u32))
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

async fn answers(http: &reqwest::Client, port: u64) -> bool {
    http.get(format!("http://127.0.0.1:{port}/"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
}

fn assigned_port(object: &Value, name: &str) -> u64 {
    let ports = report(object, "port-allocator").expect("port-allocator reported")["data"]["ports"].clone();
    ports.as_array().unwrap().iter().find(|port| port["name"] == name).expect("port reported")["port"].as_u64().unwrap()
}

fn example(file: &str) -> String {
    std::fs::read_to_string(format!("{EXAMPLES}/{file}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_runs_recovers_follows_spec_changes_and_stops_on_delete() {
    for port in [8000, 8001] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} of the example is taken on this host"
        );
    }
    let up = Up::start().await;
    let started = Instant::now();
    let cluster = up.create_yaml("clusters", example("cluster-local.yaml")).await;
    let gcp = up.create_yaml("clusters", example("cluster-gcp.yaml")).await;
    let mut services = Vec::new();
    for file in ["service-web.yaml", "service-api.yaml", "service-worker.yaml"] {
        services.push(up.create_yaml("services", example(file)).await);
    }
    let uid = |object: &Value| object["metadata"]["uid"].as_str().unwrap().to_owned();

    // Every Service becomes Ready and answers on its port; the Cluster is Ready.
    let mut ready = Vec::new();
    for service in &services {
        ready.push(up.ready("services", &uid(service)).await);
    }
    eprintln!("apply to Ready (three dependent Services): {:?}", started.elapsed());
    up.ready("clusters", &uid(&cluster)).await;
    let worker_port = assigned_port(&ready[2], "http");
    for port in [8000, 8001, worker_port] {
        assert!(answers(&up.http, port).await, "nothing answers on port {port}");
    }
    assert!(report(&ready[1], "local-process").is_some());
    let finalizers = up.get("services", &uid(&services[0])).await.unwrap()["metadata"]["finalizers"].clone();
    assert_eq!(finalizers, json!(["cls.dev/local-process"]));

    // The gcp Cluster never reaches local-process.
    let gcp = up.get("clusters", &uid(&gcp)).await.unwrap();
    assert!(report(&gcp, "local-process").is_none(), "local-process reported on a gcp Cluster: {gcp:#}");
    assert!(gcp["metadata"]["finalizers"].is_null());

    // Kill a Service's process: it is restarted and Ready again.
    let web_uid = uid(&services[0]);
    let killed = pids(&ready[0]);
    assert_eq!(killed.len(), 1);
    Command::new("kill").args(["-KILL", &killed[0].to_string()]).status().unwrap();
    up.eventually("web restarted", || async {
        let web = up.get("services", &web_uid).await.unwrap();
        let restarts = report(&web, "local-process").map(|report| report["data"]["restarts"].clone());
        is_ready(&web) && restarts.is_some_and(|restarts| restarts.as_u64() >= Some(1)) && pids(&web) != killed
    })
    .await;
    assert!(answers(&up.http, 8000).await);

    // Change a Service's spec: the process is replaced and observedGeneration follows.
    let api_uid = uid(&services[1]);
    let before = pids(&ready[1]);
    let patched = up
        .http
        .patch(up.url(&format!("/api/v1/services/{api_uid}")))
        .header("content-type", "application/merge-patch+json")
        .json(&json!({"spec": {"run": {"env": [{"name": "UPSTREAM", "value": "http://127.0.0.1:8000/v2"}]}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let api = up.ready("services", &api_uid).await;
    assert_eq!(api["metadata"]["generation"], 2);
    assert_eq!(api["status"]["observedGeneration"], 2);
    assert_eq!(report(&api, "local-process").unwrap()["observedGeneration"], 2);
    let after = pids(&api);
    assert!(after != before && !before.iter().any(|pid| alive(*pid)), "the old process still runs: {before:?}");
    let environment = std::fs::read(format!("/proc/{}/environ", after[0])).unwrap();
    assert!(String::from_utf8_lossy(&environment).contains("UPSTREAM=http://127.0.0.1:8000/v2"));

    // Delete the Cluster: every process stops and the objects disappear.
    let running: Vec<u32> = {
        let mut all = Vec::new();
        for service in &services {
            all.extend(pids(&up.get("services", &uid(service)).await.unwrap()));
        }
        all
    };
    assert_eq!(running.len(), 3);
    let deleted = up.http.delete(up.url(&format!("/api/v1/clusters/{}", uid(&cluster)))).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    up.eventually("the Cluster and its Services gone", || async {
        let mut gone = up.get("clusters", &uid(&cluster)).await.is_none();
        for service in &services {
            gone &= up.get("services", &uid(service)).await.is_none();
        }
        gone
    })
    .await;
    assert!(!running.iter().any(|pid| alive(*pid)), "processes survive the delete: {running:?}");
    assert!(!answers(&up.http, 8000).await);
    up.terminate();
}

fn local_cluster(name: &str) -> Value {
    json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": name},
           "spec": {"platform": {"type": "local"}}})
}

fn http_service(name: &str, cluster: &str, depends_on: &[&str]) -> Value {
    json!({"apiVersion": "cls.dev/v1alpha1", "kind": "Service", "metadata": {"name": name},
           "spec": {"clusterRef": {"name": cluster}, "dependsOn": depends_on,
                    "run": {"command": ["python3", "-m", "http.server", "$(PORT)", "--bind", "127.0.0.1"]},
                    "ports": [{"name": "http", "port": 0}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unmet_dependency_is_named_until_it_is_met_and_sigterm_stops_every_process() {
    let up = Up::start().await;
    up.create("clusters", local_cluster("wait")).await;
    let waiting = up.create("services", http_service("front", "wait", &["back"])).await;
    let front_uid = waiting["metadata"]["uid"].as_str().unwrap().to_owned();

    // The precondition is named in local-process's report, and the aggregate names local-process.
    up.eventually("front waits for back", || async {
        let front = up.get("services", &front_uid).await.unwrap();
        let waiting = report(&front, "local-process").is_some_and(|report| {
            report["conditions"].as_array().unwrap().iter().any(|condition| {
                condition["type"] == "Available"
                    && condition["status"] == "False"
                    && condition["reason"] == "PreconditionsNotMet"
                    && condition["message"].as_str().unwrap().contains("Service default/back to exist")
            })
        });
        let ready = front["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").cloned();
        waiting
            && ready.is_some_and(|ready| {
                ready["reason"] == "ControllersNotAvailable"
                    && ready["message"].as_str().unwrap().contains("local-process")
            })
    })
    .await;
    assert!(pids(&up.get("services", &front_uid).await.unwrap()).is_empty());

    // Once the dependency exists and is Ready, the dependent starts.
    let back = up.create("services", http_service("back", "wait", &[])).await;
    let back = up.ready("services", back["metadata"]["uid"].as_str().unwrap()).await;
    let front = up.ready("services", &front_uid).await;
    let mut running = pids(&back);
    running.extend(pids(&front));
    assert_eq!(running.len(), 2);
    // without a health check, Ready means running: the server answers soon after
    let port = assigned_port(&front, "http");
    up.eventually("front answers", || answers(&up.http, port)).await;

    // cls up stops its processes when it stops.
    up.terminate();
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.iter().any(|pid| alive(*pid)) {
        assert!(Instant::now() < deadline, "processes outlive cls up: {running:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_do_not_outlive_a_killed_cls_up() {
    let up = Up::start().await;
    up.create("clusters", local_cluster("crash")).await;
    let service = up.create("services", http_service("solo", "crash", &[])).await;
    let service = up.ready("services", service["metadata"]["uid"].as_str().unwrap()).await;
    let running = pids(&service);
    assert_eq!(running.len(), 1);
    let mut up = up;
    up.child.kill().unwrap(); // SIGKILL: no shutdown code runs
    up.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.iter().any(|pid| alive(*pid)) {
        assert!(Instant::now() < deadline, "processes outlive a killed cls up: {running:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
