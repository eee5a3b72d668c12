//! Throwaway PostgreSQL servers.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::env::{self, Env, OWNER_FILE, SERVER_CONF};

/// How many times to retry `pg_ctl start` when the chosen port was taken meanwhile.
const PORT_ATTEMPTS: u32 = 5;
/// Unix socket paths are limited to ~107 bytes; beyond this, disable the socket.
const MAX_SOCKET_DIR_LEN: usize = 90;
/// Limit for starting and stopping.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Polling interval while waiting for start/stop.
const POLL: Duration = Duration::from_millis(5);

/// Shell script run by the watchdog (`sh -c SCRIPT watchdog PG_CTL DIR USER RUNUSER`).
///
/// Its stdin is a pipe whose write end only the test process holds. It ignores
/// signals (and lives in its own process group, so Ctrl-C does not reach it),
/// blocks reading until the pipe closes, which happens however the test process
/// ends (normal exit, panic, SIGKILL), then stops the server and removes `DIR`.
const WATCHDOG_SCRIPT: &str = r#"
trap '' HUP INT QUIT TERM PIPE
while read -r _; do :; done
pidfile="$2/data/postmaster.pid"
if [ -f "$pidfile" ]; then
  if [ -n "$3" ]; then
    "$4" -u "$3" -- "$1" -D "$2/data" -m immediate -w -t 30 stop
  else
    "$1" -D "$2/data" -m immediate -w -t 30 stop
  fi >/dev/null 2>&1
  if [ -f "$pidfile" ]; then
    pid=$(head -n 1 "$pidfile")
    if [ -n "$pid" ] && grep -qa postgres "/proc/$pid/cmdline" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null
    fi
  fi
fi
rm -rf "$2"
"#;

static SHARED: OnceLock<PgServer> = OnceLock::new();

/// A throwaway PostgreSQL server listening on `127.0.0.1:<free port>`, with its
/// data directory, unix socket and logs in a private temporary directory.
///
/// * [`PgServer::shared`]: one server per process, shared by all its tests.
/// * [`PgServer::start`]: a server of your own (e.g. to stop and restart it).
///
/// Connect as the superuser `postgres` (trust authentication, no password).
///
/// Cleanup does not depend on destructors: each server has a watchdog process
/// (`sh`) that stops it with `pg_ctl stop -m immediate` and deletes its directory
/// as soon as the test process exits, whether normally, by panic or by signal.
///
/// Server dirs live in `cls-testkit-<uid>/` under `$CLS_TESTKIT_DIR`, else
/// `/dev/shm` (when it has ≥ 2 GiB free), else [`std::env::temp_dir`]. The
/// binaries are taken from `$CLS_TESTKIT_PG_BIN`, else the newest of
/// `/usr/lib/postgresql/{17,16,15,14}/bin`, else `pg_config --bindir`.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    startup_time: Duration,
    /// The watchdog; its stdin is the pipe that keeps it waiting.
    watchdog: Option<Child>,
}

impl PgServer {
    /// The server shared by every test of this process: started on first call
    /// (blocking, a few hundred ms), stopped and deleted when the process exits.
    ///
    /// Synchronous; may be called from inside a tokio runtime (it only blocks
    /// the calling thread, and only during the first call).
    pub fn shared() -> &'static PgServer {
        SHARED.get_or_init(PgServer::start)
    }

    /// The shared server if it was already started.
    pub(crate) fn shared_if_started() -> Option<&'static PgServer> {
        SHARED.get()
    }

    /// Starts a new server owned by the caller, e.g. for tests that stop or
    /// restart PostgreSQL. Dropping it stops the server and deletes its
    /// directory (blocking until done); so does the process exiting.
    pub fn start() -> PgServer {
        let t0 = Instant::now();
        let env = env::env();
        let id = Uuid::new_v4().simple().to_string();
        let dir = env.base.join(format!("srv-{}", &id[..12]));
        env::make_private_dir(&dir, &env.runner);
        fs::write(dir.join(OWNER_FILE), format!("{}\n{}\n", std::process::id(), env::pid_namespace()))
            .unwrap_or_else(|e| panic!("cls-testkit: write owner file in {}: {e}", dir.display()));

        // From here on, a panic drops `server`, whose watchdog then cleans up.
        let mut server = PgServer {
            port: 0,
            data_dir: dir.join("data"),
            log_path: dir.join("server.log"),
            watchdog: Some(spawn_watchdog(env, &dir)),
            dir,
            startup_time: Duration::ZERO,
        };

        env::run_checked(
            Command::new("cp").arg("-a").arg(&env.template).arg(&server.data_dir),
            "cp -a <template> <data dir>",
        );
        let owner = fs::metadata(&server.data_dir).map(|m| m.uid()).ok();
        if owner != Some(env.runner.uid()) {
            env.runner.chown_recursive(&server.data_dir);
        }

        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = free_port();
            server.write_server_conf();
            match server.pg_ctl_start() {
                Ok(()) => break,
                Err(log) if attempt < PORT_ATTEMPTS && is_port_clash(&log) => continue,
                Err(log) => panic!(
                    "cls-testkit: could not start PostgreSQL {} in {} (port {}):\n{log}",
                    env.version,
                    server.dir.display(),
                    server.port
                ),
            }
        }
        server.startup_time = t0.elapsed();
        eprintln!(
            "cls-testkit: PostgreSQL {} on 127.0.0.1:{} ready in {} ms ({})",
            env.version,
            server.port,
            server.startup_time.as_millis(),
            server.dir.display()
        );
        server
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (superuser, no password).
    pub fn admin_url(&self) -> String {
        self.url_for("postgres")
    }

    /// `postgres://postgres@127.0.0.1:PORT/<database>`.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server like a crash (`pg_ctl stop -m immediate`) and waits
    /// until it is gone. No-op if it is not running.
    pub fn stop_immediate(&self) {
        // -W plus our own polling: pg_ctl's -w only checks every 100 ms.
        let out = self
            .pg_ctl()
            .args(["-m", "immediate", "-W", "stop"])
            .output()
            .unwrap_or_else(|e| panic!("cls-testkit: cannot run pg_ctl stop: {e}"));
        if !out.status.success() {
            if self.is_running() {
                panic!(
                    "cls-testkit: pg_ctl stop -m immediate failed:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            return;
        }
        let pid_file = self.data_dir.join("postmaster.pid");
        let deadline = Instant::now() + TIMEOUT;
        while pid_file.exists() {
            assert!(
                Instant::now() < deadline,
                "cls-testkit: PostgreSQL on port {} did not stop within {TIMEOUT:?}",
                self.port
            );
            std::thread::sleep(POLL);
        }
    }

    /// Starts the server again on the same port and data (after
    /// [`stop_immediate`](Self::stop_immediate), this includes crash recovery).
    /// If it is running, it is first stopped with `-m immediate`.
    pub fn restart(&self) {
        if self.is_running() {
            self.stop_immediate();
        }
        if let Err(log) = self.pg_ctl_start() {
            panic!("cls-testkit: could not restart PostgreSQL on port {}:\n{log}", self.port);
        }
    }

    /// Whether the postmaster is running (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.pg_ctl().arg("status").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    /// Directory of the PostgreSQL binaries (`pgbench`, `psql`, ... are there too).
    pub fn bin_dir(&self) -> &Path {
        &env::env().bin_dir
    }

    /// PostgreSQL version, e.g. `15.18`.
    pub fn version(&self) -> &str {
        &env::env().version
    }

    /// The server's private directory (also its unix socket directory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Wall time [`start`](Self::start) took (copy template + `pg_ctl start` + wait until ready).
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// `pg_ctl -D <data>` run as the server user.
    fn pg_ctl(&self) -> Command {
        let env = env::env();
        let mut cmd = env.runner.command(&env.bin_dir.join("pg_ctl"));
        cmd.arg("-D").arg(&self.data_dir);
        cmd
    }

    /// Port and socket dir, read via `include_if_exists` in the template config.
    fn write_server_conf(&self) {
        let dir = self.dir.to_string_lossy();
        let socket_dir = if dir.len() <= MAX_SOCKET_DIR_LEN {
            dir.replace('\'', "''")
        } else {
            String::new() // TCP only
        };
        let path = self.data_dir.join(SERVER_CONF);
        fs::write(&path, format!("port = {}\nunix_socket_directories = '{socket_dir}'\n", self.port))
            .unwrap_or_else(|e| panic!("cls-testkit: write {}: {e}", path.display()));
        env::env().runner.chown(&path);
    }

    /// `pg_ctl start`, then waits until the server accepts connections; on
    /// failure, returns what was logged meanwhile.
    ///
    /// pg_ctl daemonizes the postmaster. We pass `-W` and poll for readiness
    /// ourselves: `-w` only polls every 100 ms, which is about half of the whole
    /// start time.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let log_offset = fs::metadata(&self.log_path).map_or(0, |m| m.len());
        // pg_ctl's own output goes to a file: never a pipe that the daemonized
        // postmaster could inherit (and keep open).
        let out_path = self.dir.join("pg_ctl.out");
        let out = File::options()
            .create(true)
            .append(true)
            .open(&out_path)
            .unwrap_or_else(|e| panic!("cls-testkit: open {}: {e}", out_path.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("cls-testkit: dup: {e}"));
        let out_offset = out.metadata().map_or(0, |m| m.len());
        let status = self
            .pg_ctl()
            .arg("-l")
            .arg(&self.log_path)
            .args(["-W", "start"])
            .stdout(out)
            .stderr(err)
            .status()
            .unwrap_or_else(|e| panic!("cls-testkit: cannot run pg_ctl start: {e}"));
        let failure = |why: &str| {
            format!(
                "{why}\n--- {}:\n{}\n--- {}:\n{}",
                out_path.display(),
                read_from(&out_path, out_offset),
                self.log_path.display(),
                read_from(&self.log_path, log_offset)
            )
        };
        if !status.success() {
            return Err(failure(&format!("pg_ctl start: {status}")));
        }

        let pid_file = self.data_dir.join("postmaster.pid");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            // postmaster.pid: line 1 is the pid, line 8 the status ("ready" once
            // it accepts connections). It is removed when the postmaster exits.
            let alive = match fs::read_to_string(&pid_file) {
                Ok(text) => {
                    let lines: Vec<&str> = text.lines().collect();
                    let alive = lines
                        .first()
                        .and_then(|pid| pid.trim().parse::<u32>().ok())
                        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                    if alive && lines.get(7).is_some_and(|s| s.trim() == "ready") {
                        return Ok(());
                    }
                    alive
                }
                Err(_) => false,
            };
            // Not (or no longer) running: a FATAL in the log means it gave up.
            if !alive {
                let log = read_from(&self.log_path, log_offset);
                if log.contains("FATAL:") || log.contains("PANIC:") {
                    return Err(failure("PostgreSQL exited during startup"));
                }
            }
            if Instant::now() > deadline {
                return Err(failure(&format!("not ready after {TIMEOUT:?}")));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            drop(watchdog.stdin.take()); // EOF: the watchdog stops the server and cleans up
            let _ = watchdog.wait();
        }
    }
}

fn spawn_watchdog(env: &Env, dir: &Path) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("cls-testkit-watchdog")
        .arg(env.bin_dir.join("pg_ctl"))
        .arg(dir)
        .arg(env.runner.user_arg())
        .arg(env.runner.runuser_arg())
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Own process group: a terminal's Ctrl-C (or nextest killing the test's
        // group) must not kill the watchdog before it has cleaned up.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cls-testkit: cannot spawn watchdog sh: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cls-testkit: cannot find a free port on 127.0.0.1: {e}"))
}

fn is_port_clash(log: &str) -> bool {
    log.contains("Address already in use")
        || log.contains("could not bind")
        || log.contains("could not create any TCP/IP sockets")
}

/// The contents of `path` from byte `offset` on (best effort).
fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            let _ = f.seek(SeekFrom::Start(offset));
            let _ = f.read_to_end(&mut buf);
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return "(no such file)".into(),
        Err(e) => return format!("(cannot read: {e})"),
    }
    String::from_utf8_lossy(&buf).into_owned()
}
