//! kubectl commands that change objects: apply (client-side, server-side, the examples directory), patch, label,
//! annotate, delete with and without finalizers, wait, replace, and the errors kubectl prints for rejected writes.

use super::*;

/// `kind/name` of every object in the examples directory's manifests, in the order `kubectl apply -f` reads them.
fn example_objects() -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(EXAMPLES).unwrap().map(|entry| entry.unwrap().path()).collect();
    files.retain(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml" || ext == "json"));
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        for document in std::fs::read_to_string(&file).unwrap().split("\n---") {
            let kind = document.lines().find_map(|line| line.strip_prefix("kind: "));
            let name = document
                .lines()
                .skip_while(|line| !line.starts_with("metadata:"))
                .find_map(|line| line.strip_prefix("  name: "));
            if let (Some(kind), Some(name)) = (kind, name) {
                objects.push(format!("{}.cls.dev/{}", kind.trim().to_lowercase(), name.trim()));
            }
        }
    }
    objects
}

#[tokio::test]
async fn client_side_apply_creates_then_configures_then_leaves_unchanged() {
    let kube = Kube::start().await;
    let file = kube.write("dev.yaml", &cluster("dev", LOCAL));
    assert_eq!(kube.ok(&["apply", "-f", file]).await, "cluster.cls.dev/dev created\n");
    assert_eq!(kube.jsonpath("cluster/dev", "{.metadata.generation} {.spec.release.version}").await, "1 1.0.0");

    kube.write(file, &cluster("dev", &LOCAL.replace("1.0.0", "1.1.0")));
    assert_eq!(kube.ok(&["apply", "-f", file]).await, "cluster.cls.dev/dev configured\n");
    let version = kube.jsonpath("cluster/dev", "{.metadata.generation} {.spec.release.version}").await;
    assert_eq!(version, "2 1.1.0");

    let resource_version = kube.jsonpath("cluster/dev", "{.metadata.resourceVersion}").await;
    assert_eq!(kube.ok(&["apply", "-f", file]).await, "cluster.cls.dev/dev unchanged\n");
    assert_eq!(kube.jsonpath("cluster/dev", "{.metadata.resourceVersion}").await, resource_version);
}

#[tokio::test]
async fn server_side_apply_removes_a_dropped_field_and_a_later_client_side_apply_keeps_the_spec() {
    let kube = Kube::start().await;
    let regional = LOCAL.replace("type: local\n", "type: local\n    region: here\n");
    let file = kube.write("ss.yaml", &cluster("ss", &regional));
    assert_eq!(kube.ok(&["apply", "--server-side", "-f", file]).await, "cluster.cls.dev/ss serverside-applied\n");
    let spec = kube.jsonpath("cluster/ss", "{.spec}").await;
    assert_eq!(spec, r#"{"platform":{"region":"here","type":"local"},"release":{"version":"1.0.0"}}"#);
    let managers = kube.jsonpath("cluster/ss", "{.metadata.managedFields[*].manager}").await;
    assert_eq!(managers, "kubectl");

    kube.write(file, &cluster("ss", LOCAL));
    assert_eq!(kube.ok(&["apply", "--server-side", "-f", file]).await, "cluster.cls.dev/ss serverside-applied\n");
    let expected = r#"{"platform":{"type":"local"},"release":{"version":"1.0.0"}} 2"#;
    assert_eq!(kube.jsonpath("cluster/ss", "{.spec} {.metadata.generation}").await, expected);

    let run = kube.kubectl(&["apply", "-f", file]).await;
    assert_eq!((run.code, run.stdout.as_str()), (Some(0), "cluster.cls.dev/ss configured\n"));
    assert!(run.stderr.contains("missing the kubectl.kubernetes.io/last-applied-configuration annotation"), "{run:?}");
    assert_eq!(kube.jsonpath("cluster/ss", "{.spec} {.metadata.generation}").await, expected);
    assert_eq!(kube.ok(&["apply", "-f", file]).await, "cluster.cls.dev/ss unchanged\n");
}

#[tokio::test]
async fn server_side_apply_over_a_client_side_applied_cluster_keeps_the_spec() {
    let kube = Kube::start().await;
    let file = kube.write("cs.yaml", &cluster("cs", LOCAL));
    assert_eq!(kube.ok(&["apply", "-f", file]).await, "cluster.cls.dev/cs created\n");
    // kubectl follows up with an apply by `kubectl-last-applied` holding only the name and the annotation
    assert_eq!(kube.ok(&["apply", "--server-side", "-f", file]).await, "cluster.cls.dev/cs serverside-applied\n");
    let expected = r#"{"platform":{"type":"local"},"release":{"version":"1.0.0"}} 1"#;
    assert_eq!(kube.jsonpath("cluster/cs", "{.spec} {.metadata.generation}").await, expected);
    let managers = kube.jsonpath("cluster/cs", "{.metadata.managedFields[*].manager}").await;
    assert_eq!(managers, "kubectl kubectl-last-applied");
}

#[tokio::test]
async fn applying_the_examples_directory_creates_every_object() {
    let kube = Kube::start().await;
    let objects = example_objects();
    assert!(objects.iter().any(|object| object.starts_with("cluster.")), "{objects:?}");
    assert!(objects.iter().any(|object| object.starts_with("service.")), "{objects:?}");
    let created: String = objects.iter().map(|object| format!("{object} created\n")).collect();
    assert_eq!(kube.ok(&["apply", "-f", EXAMPLES]).await, created);
    let mut listed: Vec<String> =
        kube.ok(&["get", "clusters,services", "-o", "name"]).await.lines().map(str::to_owned).collect();
    let mut expected = objects.clone();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn applying_the_examples_a_second_time_reports_every_object_unchanged() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", EXAMPLES]).await;
    let versions = ["get", "clusters,services", "-o", "jsonpath={.items[*].metadata.resourceVersion}"];
    let before = kube.ok(&versions).await;
    let second = kube.ok(&["apply", "-f", EXAMPLES]).await;
    assert_eq!(kube.ok(&versions).await, before, "a second apply of the same files changes nothing");
    // A merge patch replaces lists whole, so a list item that the server completes with a default (a Service port's
    // `protocol: TCP`) differs from the file on every apply and kubectl sends a patch and prints `configured`.
    let unchanged: String = example_objects().iter().map(|object| format!("{object} unchanged\n")).collect();
    assert_eq!(second, unchanged);
}

#[tokio::test]
async fn merge_and_json_patches_change_the_spec_and_a_strategic_patch_fails_clearly() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", kube.write("dev.yaml", &cluster("dev", LOCAL))]).await;
    let state = "{.metadata.generation} {.spec.release.version}";

    let merge = r#"{"spec":{"release":{"version":"1.1.0"}}}"#;
    assert_eq!(
        kube.ok(&["patch", "cluster", "dev", "--type=merge", "-p", merge]).await,
        "cluster.cls.dev/dev patched\n"
    );
    assert_eq!(kube.jsonpath("cluster/dev", state).await, "2 1.1.0");

    let json_patch = r#"[{"op":"replace","path":"/spec/release/version","value":"1.2.0"}]"#;
    let patched = kube.ok(&["patch", "cluster", "dev", "--type=json", "-p", json_patch]).await;
    assert_eq!(patched, "cluster.cls.dev/dev patched\n");
    assert_eq!(kube.jsonpath("cluster/dev", state).await, "3 1.2.0");

    let again = kube.ok(&["patch", "cluster", "dev", "--type=json", "-p", json_patch]).await;
    assert_eq!(again, "cluster.cls.dev/dev patched (no change)\n");

    let error = kube.fails(&["patch", "cluster", "dev", "-p", r#"{"spec":{"release":{"version":"9"}}}"#]).await;
    let prefix = "error: application/strategic-merge-patch+json is not supported by cls.dev/v1alpha1, Kind=Cluster: ";
    assert!(error.starts_with(prefix), "{error}");
    assert!(error.contains("application/merge-patch+json"), "{error}");
    assert_eq!(kube.jsonpath("cluster/dev", state).await, "3 1.2.0");
}

#[tokio::test]
async fn label_and_annotate_change_the_metadata_but_not_the_generation() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", kube.write("dev.yaml", &cluster("dev", LOCAL))]).await;
    assert_eq!(kube.ok(&["label", "cluster", "dev", "team=a"]).await, "cluster.cls.dev/dev labeled\n");
    assert_eq!(kube.ok(&["annotate", "cluster", "dev", "note=hi"]).await, "cluster.cls.dev/dev annotated\n");
    let state = "{.metadata.labels.team} {.metadata.annotations.note} {.metadata.generation}";
    assert_eq!(kube.jsonpath("cluster/dev", state).await, "a hi 1");
    assert_eq!(kube.ok(&["get", "clusters", "-l", "team=a", "-o", "name"]).await, "cluster.cls.dev/dev\n");
    assert_eq!(kube.ok(&["label", "cluster", "dev", "team-"]).await, "cluster.cls.dev/dev unlabeled\n");
    assert_eq!(kube.ok(&["get", "clusters", "-l", "team=a", "-o", "name"]).await, "");
}

#[tokio::test]
async fn delete_without_finalizers_removes_the_cluster() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", kube.write("dev.yaml", &cluster("dev", LOCAL))]).await;
    assert_eq!(kube.ok(&["delete", "cluster", "dev"]).await, "cluster.cls.dev \"dev\" deleted\n");
    let error = kube.fails(&["get", "cluster", "dev"]).await;
    assert_eq!(error, "Error from server (NotFound): clusters.cls.dev \"dev\" not found\n");
}

fn with_finalizer(name: &str) -> String {
    cluster(name, LOCAL).replace("metadata:\n", "metadata:\n  finalizers:\n  - example.com/hold\n")
}

#[tokio::test]
async fn delete_with_a_finalizer_leaves_a_deletion_timestamp_until_a_patch_removes_the_finalizer() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", kube.write("held.yaml", &with_finalizer("held"))]).await;
    let deleted = kube.ok(&["delete", "cluster", "held", "--wait=false"]).await;
    assert_eq!(deleted, "cluster.cls.dev \"held\" deleted\n");
    let state = kube.jsonpath("cluster/held", "{.metadata.finalizers} {.metadata.deletionTimestamp}").await;
    let (finalizers, timestamp) = state.split_once(' ').unwrap();
    assert_eq!(finalizers, r#"["example.com/hold"]"#);
    assert!(timestamp.ends_with('Z') && timestamp.len() == "2026-01-01T00:00:00Z".len(), "{state}");

    let remove = r#"[{"op":"remove","path":"/metadata/finalizers"}]"#;
    assert_eq!(
        kube.ok(&["patch", "cluster", "held", "--type=json", "-p", remove]).await,
        "cluster.cls.dev/held patched\n"
    );
    let error = kube.fails(&["get", "cluster", "held"]).await;
    assert_eq!(error, "Error from server (NotFound): clusters.cls.dev \"held\" not found\n");
}

#[tokio::test]
async fn a_waiting_delete_returns_once_another_process_removes_the_finalizer() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", kube.write("held.yaml", &with_finalizer("held"))]).await;
    let mut delete = kube.background(&["delete", "cluster", "held", "--timeout=25s"]);
    assert_eq!(delete.line(|_| true).await, "cluster.cls.dev \"held\" deleted");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(delete.running(), "kubectl delete waits while the finalizer is there");

    kube.ok(&["patch", "cluster", "held", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]).await;
    let started = tokio::time::Instant::now();
    let run = delete.exit().await;
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (Some(0), "cluster.cls.dev \"held\" deleted\n", "")
    );
    assert!(started.elapsed() < Duration::from_secs(10), "kubectl delete took {:?} to notice", started.elapsed());
    kube.fails(&["get", "cluster", "held"]).await;
}

#[tokio::test]
async fn wait_for_condition_ready_returns_once_a_controller_reports_the_cluster_available() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", kube.write("dev.yaml", &cluster("dev", LOCAL))]).await;
    let uid = kube.jsonpath("cluster/dev", "{.metadata.uid}").await;
    let mut wait = kube.background(&["wait", "--for=condition=Ready", "cluster/dev", "--timeout=20s"]);

    kube.register_controller("local-clusters").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(wait.running(), "kubectl wait returned before any report");
    assert_eq!(kube.jsonpath("cluster/dev", "{.status.phase}").await, "Pending");

    kube.report_available(&uid, "local-clusters").await;
    let started = tokio::time::Instant::now();
    let run = wait.exit().await;
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (Some(0), "cluster.cls.dev/dev condition met\n", "")
    );
    assert!(started.elapsed() < Duration::from_secs(10), "kubectl wait took {:?} to notice", started.elapsed());
    assert_eq!(kube.jsonpath("cluster/dev", "{.status.phase}").await, "Ready");
}

#[tokio::test]
async fn kubectl_prints_not_found_already_exists_and_invalid_errors_from_the_server() {
    let kube = Kube::start().await;
    let error = kube.fails(&["get", "cluster", "nope"]).await;
    assert_eq!(error, "Error from server (NotFound): clusters.cls.dev \"nope\" not found\n");

    let file = kube.write("dev.yaml", &cluster("dev", LOCAL));
    assert_eq!(kube.ok(&["create", "-f", file]).await, "cluster.cls.dev/dev created\n");
    let error = kube.fails(&["create", "-f", file]).await;
    let expected = "Error from server (AlreadyExists): error when creating \"dev.yaml\": clusters.cls.dev \"dev\" already exists\n";
    assert_eq!(error, expected);

    let service = "apiVersion: cls.dev/v1alpha1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  clusterRef:\n    name: dev\n  \
                   image: nginx\n  replicas: -1\n";
    let error = kube.fails(&["apply", "-f", kube.write("bad.yaml", service)]).await;
    assert_eq!(
        error,
        "The Service \"bad\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0\n"
    );
    kube.fails(&["get", "service.cls.dev", "bad"]).await;
}

#[tokio::test]
async fn apply_of_an_unknown_field_fails_with_a_strict_decoding_error_and_server_dry_run_creates_nothing() {
    let kube = Kube::start().await;
    let colour = kube.write("colour.yaml", &cluster("colour", &format!("  colour: red\n{LOCAL}")));
    let error = kube.fails(&["apply", "-f", colour]).await;
    let expected = "Error from server (BadRequest): error when creating \"colour.yaml\": strict decoding error: unknown field \
                    \"spec.colour\"\n";
    assert_eq!(error, expected);
    let error = kube.fails(&["apply", "--server-side", "-f", colour]).await;
    assert_eq!(error, "Error from server (BadRequest): strict decoding error: unknown field \"spec.colour\"\n");
    kube.fails(&["get", "cluster", "colour"]).await;

    let file = kube.write("dry.yaml", &cluster("dry", LOCAL));
    let run = kube.ok(&["apply", "-f", file, "--dry-run=server"]).await;
    assert_eq!(run, "cluster.cls.dev/dry created (server dry run)\n");
    let run = kube.ok(&["create", "-f", file, "--dry-run=server"]).await;
    assert_eq!(run, "cluster.cls.dev/dry created (server dry run)\n");
    let error = kube.fails(&["get", "cluster", "dry"]).await;
    assert_eq!(error, "Error from server (NotFound): clusters.cls.dev \"dry\" not found\n");
    assert_eq!(kube.kubectl(&["get", "clusters", "-o", "name"]).await.stdout, "");
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_fails_with_a_conflict() {
    let kube = Kube::start().await;
    kube.ok(&["apply", "-f", kube.write("dev.yaml", &cluster("dev", LOCAL))]).await;
    let stale = kube.ok(&["get", "cluster", "dev", "-o", "yaml"]).await;
    kube.write("stale.yaml", &stale.replace("version: 1.0.0", "version: 2.0.0"));
    kube.ok(&["label", "cluster", "dev", "team=a"]).await;

    let error = kube.fails(&["replace", "-f", "stale.yaml"]).await;
    let expected = "Error from server (Conflict): error when replacing \"stale.yaml\": Operation cannot be fulfilled on \
                    clusters.cls.dev \"dev\": the object has been modified; please apply your changes to the latest \
                    version and try again\n";
    assert_eq!(error, expected);
    assert_eq!(kube.jsonpath("cluster/dev", "{.spec.release.version} {.metadata.labels.team}").await, "1.0.0 a");

    let fresh = kube.ok(&["get", "cluster", "dev", "-o", "yaml"]).await;
    kube.write("fresh.yaml", &fresh.replace("version: 1.0.0", "version: 2.0.0"));
    assert_eq!(kube.ok(&["replace", "-f", "fresh.yaml"]).await, "cluster.cls.dev/dev replaced\n");
    assert_eq!(kube.jsonpath("cluster/dev", "{.spec.release.version} {.metadata.generation}").await, "2.0.0 2");
}
