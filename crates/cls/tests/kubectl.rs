//! The real `/usr/bin/kubectl` against the real `cls up`. Every test runs its own `cls up` on its own database, with
//! its own `HOME` (kubectl's discovery cache) and `CLS_HOME` (where `cls up` writes the kubeconfig kubectl uses), and
//! bounds every kubectl call. This file holds the harness and the commands that read (version, get: tables, yaml,
//! jsonpath, all namespaces, short names, watch; describe, explain); `kubectl/writes.rs` the commands that write.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cls_testkit::TestDb;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

mod common;
#[path = "kubectl/writes.rs"]
mod writes;

const BINARY: &str = env!("CARGO_BIN_EXE_cls");
const KUBECTL: &str = "/usr/bin/kubectl";
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
/// Bounds every kubectl call, every wait for a line of output and the start of `cls up`.
const DEADLINE: Duration = Duration::from_secs(30);

/// A `cls up` of its own (killed on drop) and the directories kubectl runs with.
struct Kube {
    dir: PathBuf,
    kubeconfig: PathBuf,
    base: String,
    http: reqwest::Client,
    _cls: Child,
    _db: TestDb,
}

/// What a finished kubectl printed.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Kube {
    /// Starts `cls up` on a fresh database and waits until it has written its kubeconfig and is ready.
    async fn start() -> Kube {
        let db = TestDb::new(&cls_api::store::MIGRATOR).await;
        let dir = std::env::temp_dir().join(format!("cls-kubectl-{}", uuid::Uuid::new_v4().simple()));
        let cls_home = dir.join("cls-home");
        std::fs::create_dir_all(&cls_home).unwrap();
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let mut cls = Command::new(BINARY)
            .args(["up", "--listen", "127.0.0.1:0"])
            .env("DATABASE_URL", &db.url)
            .env("CLS_HOME", &cls_home)
            .env("CLS_LOG_FORMAT", "json")
            .env("CLS_BUILTIN_CONTROLLERS", "false")
            .env_remove("PUBSUB_EMULATOR_HOST")
            .env_remove("CLS_PUBSUB_PROJECT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cls starts");
        let mut stderr = BufReader::new(cls.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("cls: {line}");
            }
        });
        let mut stdout = BufReader::new(cls.stdout.take().unwrap()).lines();
        let (mut base, mut kubeconfig, mut token) = (None, None, None);
        while kubeconfig.is_none() || token.is_none() {
            let line = tokio::time::timeout(DEADLINE, stdout.next_line()).await.expect("cls up prints its kubeconfig");
            let line = line.unwrap().expect("cls up prints its address and kubeconfig before stdout ends");
            if let Some(address) = line.strip_prefix("cls api listening on ") {
                base = Some(address.to_owned());
            }
            if let Some(path) = line.strip_prefix("kubectl is ready: export KUBECONFIG=") {
                kubeconfig = Some(PathBuf::from(path));
            }
            if let Some((_, secret)) = line.split_once("/ui#token=") {
                token = Some(secret.to_owned());
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        let kubeconfig = kubeconfig.unwrap();
        assert_eq!(kubeconfig, cls_home.join("kubeconfig"), "cls up writes the kubeconfig into CLS_HOME");
        let http = common::client_with(&token.expect("the admin token"));
        let kube = Kube { dir, kubeconfig, base: base.expect("address"), http, _cls: cls, _db: db };
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !kube.http.get(kube.url("/readyz")).send().await.is_ok_and(|response| response.status() == 200) {
            assert!(tokio::time::Instant::now() < deadline, "cls up did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        kube
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(KUBECTL);
        command
            .args(args)
            .current_dir(&self.dir)
            .env("HOME", self.dir.join("home"))
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs kubectl to completion (killed after [`DEADLINE`]).
    async fn kubectl(&self, args: &[&str]) -> Run {
        let output = tokio::time::timeout(DEADLINE, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {} did not finish within {DEADLINE:?}", args.join(" ")))
            .expect("kubectl runs");
        let run = Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        eprintln!("$ kubectl {}\n{run:?}", args.join(" "));
        run
    }

    /// Runs kubectl, asserts that it succeeded and returns its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let run = self.kubectl(args).await;
        assert_eq!(run.code, Some(0), "kubectl {} failed: {run:?}", args.join(" "));
        run.stdout
    }

    /// Runs kubectl, asserts that it failed with exit code 1 and returns its stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let run = self.kubectl(args).await;
        assert_eq!(run.code, Some(1), "kubectl {} should fail: {run:?}", args.join(" "));
        assert_eq!(run.stdout, "", "kubectl {}", args.join(" "));
        run.stderr
    }

    /// Starts kubectl in the background (killed on drop).
    fn background(&self, args: &[&str]) -> Background {
        let mut child = self.command(args).spawn().expect("kubectl starts");
        let (sender, lines) = mpsc::unbounded_channel();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Background { args: args.join(" "), child, lines, seen: Vec::new(), stderr }
    }

    /// Writes a manifest into the test's directory (kubectl runs there) and returns its file name.
    fn write<'a>(&self, name: &'a str, text: &str) -> &'a str {
        std::fs::write(self.dir.join(name), text).unwrap();
        name
    }

    async fn jsonpath(&self, object: &str, path: &str) -> String {
        self.ok(&["get", object, "-o", &format!("jsonpath={path}")]).await
    }

    /// Registers a controller through the thin REST API (`/api/v1`).
    async fn register_controller(&self, name: &str) {
        let body = json!({"spec": {"kinds": ["Cluster"], "platforms": ["local"]}});
        let response = self.http.put(self.url(&format!("/api/v1/controllers/{name}"))).json(&body).send().await;
        let status = response.unwrap().status();
        assert!(status.is_success(), "registering {name}: {status}");
    }

    /// Reports `Available=True` at generation 1 for the Cluster `uid` as controller `name`.
    async fn report_available(&self, uid: &str, name: &str) {
        let body = json!({"controller": name, "observedGeneration": 1,
                          "conditions": [{"type": "Available", "status": "True"}]});
        let response = self.http.put(self.url(&format!("/api/v1/clusters/{uid}/status"))).json(&body).send().await;
        let response = response.unwrap();
        assert_eq!(response.status(), 200, "report: {}", response.text().await.unwrap());
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A kubectl running in the background; its stdout is read line by line.
struct Background {
    args: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    stderr: JoinHandle<String>,
}

impl Background {
    /// Waits (up to [`DEADLINE`]) for the next stdout line that `wanted` accepts; every line read is kept in `seen`.
    async fn line(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            let line = tokio::time::timeout(DEADLINE, self.lines.recv()).await;
            let line = line.unwrap_or_else(|_| panic!("kubectl {}: no expected line; saw {:?}", self.args, self.seen));
            let line = line.unwrap_or_else(|| panic!("kubectl {} ended; saw {:?}", self.args, self.seen));
            self.seen.push(line.clone());
            if wanted(&line) {
                return line;
            }
        }
    }

    /// The next stdout line if one arrives within `wait` (kept in `seen`).
    async fn line_within(&mut self, wait: Duration) -> Option<String> {
        let line = tokio::time::timeout(wait, self.lines.recv()).await.ok()??;
        self.seen.push(line.clone());
        Some(line)
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits (up to [`DEADLINE`]) for kubectl to exit.
    async fn exit(mut self) -> Run {
        let status = tokio::time::timeout(DEADLINE, self.child.wait()).await;
        let status = status.unwrap_or_else(|_| panic!("kubectl {} did not exit; saw {:?}", self.args, self.seen));
        while let Ok(Some(line)) = tokio::time::timeout(DEADLINE, self.lines.recv()).await {
            self.seen.push(line);
        }
        let stdout = self.seen.iter().map(|line| format!("{line}\n")).collect();
        let stderr = tokio::time::timeout(DEADLINE, self.stderr).await.expect("stderr closes").unwrap();
        Run { code: status.unwrap().code(), stdout, stderr }
    }
}

/// The cells of a kubectl table (columns cut at the header's word starts), with cells of the AGE and HEARTBEAT
/// columns, which move with the clock, checked to look like ages and replaced by `<age>`.
fn cells(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    let starts: Vec<usize> = (0..header.len())
        .filter(|&at| header.as_bytes()[at] != b' ' && (at == 0 || header.as_bytes()[at - 1] == b' '))
        .collect();
    let names: Vec<&str> = header.split_whitespace().collect();
    let mut rows = vec![names.iter().map(|name| name.to_string()).collect::<Vec<_>>()];
    for line in lines {
        let row = starts
            .iter()
            .enumerate()
            .map(|(column, &start)| {
                let end = starts.get(column + 1).copied().unwrap_or(line.len()).min(line.len());
                let cell = line.get(start.min(end)..end).unwrap_or("").trim();
                if ["AGE", "HEARTBEAT"].contains(&names[column]) {
                    let age_like = cell.chars().all(|c| c.is_ascii_digit() || "smhd".contains(c));
                    assert!(!cell.is_empty() && age_like, "{} {cell:?} is not an age in {line:?}", names[column]);
                    return "<age>".to_owned();
                }
                cell.to_owned()
            })
            .collect();
        rows.push(row);
    }
    rows
}

fn rows(expected: &[&[&str]]) -> Vec<Vec<String>> {
    expected.iter().map(|row| row.iter().map(|cell| cell.to_string()).collect()).collect()
}

fn cluster(name: &str, spec: &str) -> String {
    format!("apiVersion: cls.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

const LOCAL: &str = "  platform:\n    type: local\n  release:\n    version: \"1.0.0\"\n";

#[tokio::test]
async fn kubectl_talks_to_cls_through_the_kubeconfig_cls_up_writes_and_sees_kubernetes_1_32() {
    let kube = Kube::start().await;
    let version: Value = serde_json::from_str(&kube.ok(&["version", "-o", "json"]).await).unwrap();
    assert_eq!(version["serverVersion"]["major"], "1");
    assert_eq!(version["serverVersion"]["minor"], "32");
    assert_eq!(
        kube.ok(&["config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"]).await,
        kube.base.replace("http://", "https://"),
        "kubectl talks TLS (client-go sends tokens only over TLS); plain HTTP answers on the same port"
    );
}

#[tokio::test]
async fn kubectl_without_a_token_or_with_a_bad_one_is_refused_as_not_logged_in() {
    let kube = Kube::start().await;
    let without = kube.write(
        "no-token.kubeconfig",
        &std::fs::read_to_string(&kube.kubeconfig).unwrap().replace("    token: ", "    x-token: "),
    );
    // without credentials kubectl asks for a user name (stdin is closed) and the server refuses it
    let run = kube.kubectl(&["--kubeconfig", without, "get", "clusters"]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(!run.stdout.contains("NAME"), "{run:?}");
    let stderr = kube.fails(&["--token", "cls_not-a-real-token", "get", "clusters"]).await;
    assert!(stderr.contains("You must be logged in to the server"), "{stderr}");
    kube.ok(&["get", "clusters"]).await;
}

#[tokio::test]
async fn get_prints_the_cluster_columns_and_wide_adds_the_priority_one_columns() {
    let kube = Kube::start().await;
    kube.write("dev.yaml", &cluster("dev", &format!("{LOCAL}    channel: stable\n")));
    kube.write("prod.yaml", &cluster("prod", "  platform:\n    type: gcp\n    region: europe-west1\n"));
    kube.ok(&["apply", "-f", "dev.yaml", "-f", "prod.yaml"]).await;

    let table = cells(&kube.ok(&["get", "clusters"]).await);
    assert_eq!(
        table,
        rows(&[
            &["NAME", "PLATFORM", "REGION", "VERSION", "PHASE", "READY", "AGE"],
            &["dev", "local", "", "1.0.0", "Pending", "False", "<age>"],
            &["prod", "gcp", "europe-west1", "", "Pending", "False", "<age>"],
        ])
    );
    let wide = cells(&kube.ok(&["get", "clusters", "-o", "wide"]).await);
    assert_eq!(
        wide,
        rows(&[
            &[
                "NAME",
                "PLATFORM",
                "REGION",
                "VERSION",
                "PHASE",
                "READY",
                "AGE",
                "CHANNEL",
                "GENERATION",
                "OBSERVED",
                "REASON"
            ],
            &["dev", "local", "", "1.0.0", "Pending", "False", "<age>", "stable", "1", "", "NoControllers"],
            &["prod", "gcp", "europe-west1", "", "Pending", "False", "<age>", "", "1", "", "NoControllers"],
        ])
    );
}

#[tokio::test]
async fn get_prints_yaml_json_and_jsonpath() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", kube.write("dev.yaml", &cluster("dev", LOCAL))]).await;

    let yaml = kube.ok(&["get", "cluster", "dev", "-o", "yaml"]).await;
    assert!(yaml.starts_with("apiVersion: cls.dev/v1alpha1\nkind: Cluster\nmetadata:\n"), "{yaml}");
    assert!(yaml.contains("\n  name: dev\n  namespace: default\n"), "{yaml}");
    assert!(
        yaml.contains("\nspec:\n  platform:\n    type: local\n  release:\n    version: 1.0.0\nstatus:\n"),
        "{yaml}"
    );
    let object: Value = serde_json::from_str(&kube.ok(&["get", "cluster", "dev", "-o", "json"]).await).unwrap();
    assert_eq!(object["spec"], json!({"platform": {"type": "local"}, "release": {"version": "1.0.0"}}));
    assert_eq!(object["status"]["phase"], "Pending");
    let list: Value = serde_json::from_str(&kube.ok(&["get", "clusters", "-o", "json"]).await).unwrap();
    assert_eq!(list["items"][0]["metadata"]["uid"], object["metadata"]["uid"]);
    assert_eq!(kube.ok(&["get", "cluster", "dev", "-o", "jsonpath={.spec.platform.type}"]).await, "local");
    assert_eq!(kube.ok(&["get", "cl", "-o", "jsonpath={.items[*].metadata.name}"]).await, "dev");
}

#[tokio::test]
async fn get_with_all_namespaces_adds_the_namespace_column() {
    let kube = Kube::start().await;
    let file = kube.write("dev.yaml", &cluster("dev", LOCAL));
    kube.ok(&["apply", "-f", file]).await;
    assert_eq!(kube.ok(&["apply", "-f", file, "-n", "other"]).await, "cluster.cls.dev/dev created\n");

    let run = kube.kubectl(&["get", "clusters", "-n", "empty"]).await;
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (Some(0), "", "No resources found in empty namespace.\n")
    );
    assert_eq!(
        cells(&kube.ok(&["get", "clusters", "-A"]).await),
        rows(&[
            &["NAMESPACE", "NAME", "PLATFORM", "REGION", "VERSION", "PHASE", "READY", "AGE"],
            &["default", "dev", "local", "", "1.0.0", "Pending", "False", "<age>"],
            &["other", "dev", "local", "", "1.0.0", "Pending", "False", "<age>"],
        ])
    );
}

#[tokio::test]
async fn short_names_cl_and_cs_and_get_controllers_print_their_tables() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", kube.write("dev.yaml", &cluster("dev", LOCAL))]).await;
    let service = "apiVersion: cls.dev/v1alpha1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterRef:\n    name: dev\n  \
                   image: nginx\n  ports:\n  - port: 80\n";
    kube.ok(&["apply", "-f", kube.write("web.yaml", service)]).await;

    let clusters = cells(&kube.ok(&["get", "cl"]).await);
    assert_eq!(clusters[1], rows(&[&["dev", "local", "", "1.0.0", "Pending", "False", "<age>"]])[0]);
    assert_eq!(
        cells(&kube.ok(&["get", "cs"]).await),
        rows(&[
            &["NAME", "CLUSTER", "PHASE", "READY", "PORTS", "AGE"],
            &["web", "dev", "Pending", "False", "80/TCP", "<age>"]
        ])
    );

    let run = kube.kubectl(&["get", "controllers"]).await;
    assert_eq!((run.code, run.stdout.as_str(), run.stderr.as_str()), (Some(0), "", "No resources found\n"));
    kube.register_controller("local-clusters").await;
    assert_eq!(
        cells(&kube.ok(&["get", "controllers"]).await),
        rows(&[
            &["NAME", "KINDS", "PLATFORMS", "REQUIRED", "HEARTBEAT", "AGE"],
            &["local-clusters", "Cluster", "local", "true", "<age>", "<age>"],
        ])
    );
}

#[tokio::test]
async fn get_watch_prints_a_new_line_for_a_label_changed_while_it_runs() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", kube.write("dev.yaml", &cluster("dev", LOCAL))]).await;
    let mut watch = kube.background(&["get", "clusters", "-w", "-L", "color"]);
    watch.line(|line| line.starts_with("dev ")).await;

    assert_eq!(kube.ok(&["label", "cluster", "dev", "color=blue"]).await, "cluster.cls.dev/dev labeled\n");
    watch.line(|line| line.contains("blue")).await;
    assert!(watch.running(), "kubectl get -w keeps watching");
    assert_eq!(
        cells(&watch.seen.join("\n")),
        rows(&[
            &["NAME", "PLATFORM", "REGION", "VERSION", "PHASE", "READY", "AGE", "COLOR"],
            &["dev", "local", "", "1.0.0", "Pending", "False", "<age>", ""],
            &["dev", "local", "", "1.0.0", "Pending", "False", "<age>", "blue"],
        ])
    );
}

#[tokio::test]
async fn get_one_cluster_with_watch_and_output_name_prints_its_name_again_on_a_change() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", kube.write("dev.yaml", &cluster("dev", LOCAL))]).await;
    kube.ok(&["apply", "-f", kube.write("other.yaml", &cluster("other", LOCAL))]).await;
    let mut watch = kube.background(&["get", "cluster", "dev", "-w", "-o", "name"]);
    assert_eq!(watch.line(|_| true).await, "cluster.cls.dev/dev");

    // kubectl prints the object it got, then watches from resourceVersion 0 and drops the first (synthetic) event: a
    // change made before its watch request arrives is folded into that event. Change until one shows.
    for attempt in 0.. {
        assert!(attempt < 20, "no change showed; saw {:?}", watch.seen);
        kube.ok(&["label", "--overwrite", "cluster", "other", &format!("color=red{attempt}")]).await;
        kube.ok(&["label", "--overwrite", "cluster", "dev", &format!("color=blue{attempt}")]).await;
        if watch.line_within(Duration::from_secs(1)).await.is_some() {
            break;
        }
    }
    assert!(watch.running(), "kubectl get -w keeps watching");
    assert_eq!(watch.seen, ["cluster.cls.dev/dev", "cluster.cls.dev/dev"]);
}

#[tokio::test]
async fn describe_shows_the_cluster_and_explain_shows_the_spec_fields() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", kube.write("dev.yaml", &cluster("dev", LOCAL))]).await;

    let described = kube.ok(&["describe", "cluster", "dev"]).await;
    assert!(described.starts_with("Name:         dev\nNamespace:    default\n"), "{described}");
    assert!(described.contains("\nAPI Version:  cls.dev/v1alpha1\nKind:         Cluster\n"), "{described}");
    assert!(
        described.contains("\nSpec:\n  Platform:\n    Type:  local\n  Release:\n    Version:  1.0.0\n"),
        "{described}"
    );
    assert!(described.contains("\n  Phase:  Pending\n"), "{described}");

    let explained = kube.ok(&["explain", "clusters.spec"]).await;
    assert!(explained.starts_with("GROUP:      cls.dev\nKIND:       Cluster\nVERSION:    v1alpha1\n"), "{explained}");
    assert!(explained.contains("\nFIELD: spec <Object>\n"), "{explained}");
    assert!(explained.contains("`platform.type` selects the controllers"), "{explained}");
    assert!(explained.contains("\n  platform\t<Object> -required-\n"), "{explained}");
    assert!(explained.contains("\n  release\t<Object>\n"), "{explained}");
    let platform = kube.ok(&["explain", "clusters.spec.platform"]).await;
    for field in ["config\t<Object>", "region\t<string>", "type\t<string>"] {
        assert!(platform.contains(&format!("\n  {field}")), "{field} in {platform}");
    }
}
