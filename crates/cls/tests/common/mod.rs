//! The real `cls` binary as a test process: started on a free loopback port, its address read from its
//! "listening" line, its log lines echoed (`cls: ...`) and kept, killed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_cls");

/// A running `cls` process, killed on drop.
pub struct Cls {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Its log lines (stderr), JSON unless `envs` says otherwise.
    pub logs: mpsc::Receiver<String>,
    /// The admin token `cls up` prints (in its dashboard link).
    up_token: mpsc::Receiver<String>,
}

impl Cls {
    /// Starts `cls ARGS --listen 127.0.0.1:0` with JSON logs and `envs` (no inherited `DATABASE_URL`), and waits
    /// for its "listening" line.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Cls {
        let mut command = Command::new(BINARY);
        command.args(args).args(["--listen", "127.0.0.1:0"]).env_remove("DATABASE_URL").env("CLS_LOG_FORMAT", "json");
        command.envs(envs.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("cls starts");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (lines, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("cls: {line}");
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let (address_sender, address) = mpsc::channel();
        let (token_sender, up_token) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // `cls api|reconciler|controller listening on http://...`
                if line.starts_with("cls ")
                    && let Some((_, base)) = line.split_once(" listening on ")
                {
                    let _ = address_sender.send(base.to_owned());
                }
                if let Some((_, token)) = line.split_once("/ui#token=") {
                    let _ = token_sender.send(token.to_owned());
                }
            }
        });
        let base = address.recv_timeout(Duration::from_secs(60)).expect("cls prints its address");
        Cls { child, base, logs, up_token }
    }

    /// The admin token of `cls up` (from the dashboard link it prints).
    pub fn up_token(&self) -> String {
        self.up_token.recv_timeout(Duration::from_secs(60)).expect("cls up prints its dashboard link with a token")
    }

    /// A client with the admin token of `cls up`.
    pub fn up_client(&self) -> reqwest::Client {
        client_with(&self.up_token())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let sent = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill runs");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits (up to 60 s) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(self.url("/readyz")).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "cls did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit; answers the exit status and the log lines not yet read.
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs").success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, self.logs.try_iter().collect());
            }
            assert!(Instant::now() < deadline, "cls did not exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to completion within `limit`, returning (success, stdout and stderr). A command still running at
/// the limit is killed: it did not succeed, and the output says so.
pub fn run_bounded(command: &mut Command, limit: Duration) -> (bool, String) {
    let (status, output) = run_with_limit(command, limit);
    match status {
        Some(status) => (status.success(), output),
        None => (false, format!("{output}\n(killed after {limit:?})")),
    }
}

/// Runs `command` to completion within `limit`: its exit status (`None` when it was killed at the limit) and its
/// stdout and stderr.
pub fn run_with_limit(command: &mut Command, limit: Duration) -> (Option<ExitStatus>, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("command starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, format!("{}{}", out.join().unwrap_or_default(), err.join().unwrap_or_default()))
}

/// `cls token create --role ROLE [--namespace NS]...` against `database_url`: the new token.
pub fn create_token(database_url: &str, role: &str, namespaces: &[&str]) -> String {
    let mut command = Command::new(BINARY);
    command.args(["token", "create", "--role", role]).env("DATABASE_URL", database_url).env("RUST_LOG", "warn");
    for namespace in namespaces {
        command.args(["--namespace", namespace]);
    }
    let output = command.output().expect("cls token create runs");
    assert!(output.status.success(), "cls token create failed: {}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).expect("utf-8").trim().to_owned();
    assert!(token.starts_with("cls_") && !token.contains('\n'), "prints the token alone: {token:?}");
    token
}

/// A client that sends `token` with every request.
pub fn client_with(token: &str) -> reqwest::Client {
    client_builder_with(token).build().expect("a client")
}

/// A client builder that sends `token` as a bearer token with every request (for further settings).
pub fn client_builder_with(token: &str) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("a header value"));
    reqwest::Client::builder().default_headers(headers)
}

/// A client with a new admin token of `database_url`.
pub fn admin_client(database_url: &str) -> reqwest::Client {
    client_with(&create_token(database_url, "admin", &[]))
}
