//! The Google Cloud Pub/Sub emulator, started per test process (or per test, to stop and start it).
//!
//! Runs the emulator jar with `java` directly (one process to stop; `gcloud beta emulators` forks a child that
//! outlives it) on `127.0.0.1:<free port>`. As for PostgreSQL, cleanup does not depend on destructors: a watchdog
//! `sh` blocks on a pipe that only the test process holds and kills the emulator (whose pid it reads from a file, so
//! that a restart is covered too) and removes its directory when the test process ends in any way.
//!
//! The emulator keeps everything in memory: stopping it loses topics, subscriptions and messages.
//!
//! Environment overrides: `CLS_TESTKIT_PUBSUB_JAR` (the emulator jar).

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

const JAR_DIR: &str = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/lib";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Kills the emulator named by `$1/pid` and removes `$1` once stdin closes.
const WATCHDOG_SCRIPT: &str = r#"
trap '' HUP INT QUIT TERM PIPE
while read -r _; do :; done
if [ -f "$1/pid" ]; then
  pid=$(cat "$1/pid")
  if [ -n "$pid" ] && grep -qa pubsub "/proc/$pid/cmdline" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null
  fi
fi
rm -rf "$1"
"#;

static SHARED: OnceLock<PubSubEmulator> = OnceLock::new();

/// A Pub/Sub emulator on `127.0.0.1:<port>`.
#[derive(Debug)]
pub struct PubSubEmulator {
    port: u16,
    dir: PathBuf,
    jar: PathBuf,
    child: Mutex<Option<Child>>,
    watchdog: Option<Child>,
}

impl PubSubEmulator {
    /// The emulator shared by every test of this process (started on first call, a few seconds).
    pub fn shared() -> &'static PubSubEmulator {
        SHARED.get_or_init(PubSubEmulator::start)
    }

    /// An emulator of the caller's own, e.g. to stop and start it.
    pub fn start() -> PubSubEmulator {
        let jar = find_jar();
        let id = Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("cls-testkit-pubsub-{}", &id[..12]));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cls-testkit: create {}: {e}", dir.display()));
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("cls-testkit-pubsub-watchdog")
            .arg(&dir)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cls-testkit: cannot spawn watchdog sh: {e}"));
        let emulator =
            PubSubEmulator { port: free_port(), dir, jar, child: Mutex::new(None), watchdog: Some(watchdog) };
        emulator.resume();
        emulator
    }

    /// `127.0.0.1:PORT`, the value of `PUBSUB_EMULATOR_HOST`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The emulator's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("emulator.log")
    }

    /// Kills the emulator (SIGKILL) and waits until it is gone. Everything it held is lost.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(mut running) = child.take() {
            let _ = running.kill();
            let _ = running.wait();
        }
    }

    /// Starts the emulator (again) on the same port and waits until it answers.
    pub fn resume(&self) {
        let mut child = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if child.is_some() {
            return;
        }
        let started = Instant::now();
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cls-testkit: open {}: {e}", self.log_path().display()));
        let log_err = log.try_clone().expect("dup log");
        let spawned = Command::new("java")
            .args(["-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-jar"])
            .arg(&self.jar)
            .arg("--host=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cls-testkit: cannot run java (install openjdk-17-jre-headless): {e}"));
        fs::write(self.dir.join("pid"), spawned.id().to_string()).expect("write emulator pid");
        *child = Some(spawned);
        let running = child.as_mut().expect("just set");
        loop {
            if answers_ok(self.port) {
                break;
            }
            if let Ok(Some(status)) = running.try_wait() {
                panic!("cls-testkit: pubsub emulator exited ({status}):\n{}", read(&self.log_path()));
            }
            if started.elapsed() > START_TIMEOUT {
                panic!("cls-testkit: pubsub emulator not ready after {START_TIMEOUT:?}:\n{}", read(&self.log_path()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("cls-testkit: pubsub emulator on {} ready in {} ms", self.host(), started.elapsed().as_millis());
    }
}

impl Drop for PubSubEmulator {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut watchdog) = self.watchdog.take() {
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
    }
}

fn find_jar() -> PathBuf {
    if let Some(jar) = std::env::var_os("CLS_TESTKIT_PUBSUB_JAR") {
        return PathBuf::from(jar);
    }
    let mut jars: Vec<PathBuf> = fs::read_dir(JAR_DIR)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| {
                    path.file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(|name| name.starts_with("cloud-pubsub-emulator-") && name.ends_with(".jar"))
                })
                .collect()
        })
        .unwrap_or_default();
    jars.sort();
    jars.pop().unwrap_or_else(|| {
        panic!(
            "cls-testkit: no Pub/Sub emulator jar in {JAR_DIR} \
             (apt-get install google-cloud-cli-pubsub-emulator openjdk-17-jre-headless, or set CLS_TESTKIT_PUBSUB_JAR)"
        )
    })
}

/// Whether `GET /` answers `Ok` (the emulator serves REST and gRPC on one port).
fn answers_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    // It answers `Ok\n` and keeps the connection open: read until the body is there.
    let mut response = Vec::new();
    let mut chunk = [0_u8; 512];
    while let Ok(read) = stream.read(&mut chunk) {
        if read == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n")
            && !body.trim().is_empty()
        {
            return head.contains(" 200 ") && body.trim() == "Ok";
        }
    }
    false
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|e| panic!("cls-testkit: cannot find a free port on 127.0.0.1: {e}"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}
