//! The PostgreSQL that `cls up` runs when no `DATABASE_URL` is given: the machine's server binaries, one data
//! directory per `CLS_HOME` kept across runs, loopback only, stopped when `cls up` stops.
//!
//! PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system user with its data under
//! `/var/lib/cls/<hash of CLS_HOME>/` (a place that user can reach); otherwise it runs as the current user with its
//! data under `CLS_HOME/postgres/`.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};

const SERVER_USER: &str = "postgres";
const DATABASE: &str = "cls";

/// A running embedded server.
pub struct Embedded {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_root: bool,
    /// Removed with its data on stop (benchmarks).
    temporary: Option<PathBuf>,
}

/// The newest installed PostgreSQL server binaries.
pub fn find_binaries() -> anyhow::Result<PathBuf> {
    for version in ["17", "16", "15", "14", "13"] {
        let bin = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
        if bin.join("postgres").is_file() {
            return Ok(bin);
        }
    }
    bail!("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; install postgresql or set DATABASE_URL")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|output| output.stdout.trim_ascii() == b"0").unwrap_or(false)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Embedded {
    /// Initializes the data directory on first use, starts the server and creates the `cls` database.
    pub fn start(home: &Path) -> anyhow::Result<Embedded> {
        let bin = find_binaries()?;
        let as_root = is_root();
        let base = if as_root {
            let home = home.canonicalize().unwrap_or_else(|_| home.to_path_buf());
            let mut hasher = DefaultHasher::new();
            home.hash(&mut hasher);
            PathBuf::from(format!("/var/lib/cls/{:016x}", hasher.finish()))
        } else {
            home.join("postgres")
        };
        std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
        let mut embedded = Embedded { bin, data: base.join("data"), port: 0, as_root, temporary: None };
        if as_root {
            let chown = Command::new("chown").arg(SERVER_USER).arg(&base).output().context("cannot run chown")?;
            check(Path::new("chown"), &chown)?;
            std::fs::write(base.join("CLS_HOME"), home.display().to_string())?;
        }
        if !embedded.data.join("PG_VERSION").is_file() {
            tracing::info!(data = %embedded.data.display(), "initializing PostgreSQL data directory");
            let initdb = embedded.bin.join("initdb");
            let data = embedded.data.display().to_string();
            embedded.run_as_server(
                &initdb,
                &["-D", &data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"],
            )?;
        }
        let data = embedded.data.display().to_string();
        let pg_ctl = embedded.bin.join("pg_ctl");
        if embedded.run_as_server_output(&pg_ctl, &["-D", &data, "status"])?.status.success() {
            tracing::warn!("a PostgreSQL left running by an earlier cls up holds this data directory; stopping it");
            embedded.run_as_server(&pg_ctl, &["-D", &data, "-m", "fast", "-w", "stop"])?;
        }
        embedded.port = free_port()?;
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data} -c max_connections=200",
            embedded.port
        );
        let log = base.join("postgres.log").display().to_string();
        embedded
            .run_as_server(&pg_ctl, &["-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "start"])
            .with_context(|| format!("PostgreSQL did not start; see {log}"))?;
        tracing::info!(port = embedded.port, data = %data, "embedded PostgreSQL started");
        let psql = embedded.bin.join("psql");
        let port = embedded.port.to_string();
        let exists = embedded.run_as_server_output(
            &psql,
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tAc",
                "select 1 from pg_database where datname = 'cls'",
            ],
        )?;
        if exists.stdout.trim_ascii() != b"1" {
            embedded.run_as_server(
                &psql,
                &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres", "-c", "create database cls"],
            )?;
        }
        Ok(embedded)
    }

    /// A server with data of its own that [`Embedded::stop`] deletes.
    pub fn start_temporary() -> anyhow::Result<Embedded> {
        let home = std::env::temp_dir().join(format!("cls-bench-{}", std::process::id()));
        std::fs::create_dir_all(&home)?;
        let mut embedded = Embedded::start(&home)?;
        embedded.temporary = Some(home);
        Ok(embedded)
    }

    /// The server's binaries (for pgbench).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// Stops the server (fast shutdown: running sessions are ended, data is kept).
    pub fn stop(self) {
        let data = self.data.display().to_string();
        let pg_ctl = self.bin.join("pg_ctl");
        match self.run_as_server(&pg_ctl, &["-D", &data, "-m", "fast", "-w", "stop"]) {
            Ok(()) => tracing::info!("embedded PostgreSQL stopped"),
            Err(error) => tracing::warn!(error = %error, "embedded PostgreSQL did not stop cleanly"),
        }
        if let Some(home) = &self.temporary {
            if let Some(base) = self.data.parent() {
                let _ = std::fs::remove_dir_all(base);
            }
            let _ = std::fs::remove_dir_all(home);
        }
    }

    fn server_command(&self, program: &Path, args: &[&str]) -> Command {
        if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", SERVER_USER, "--"]).arg(program).args(args);
            command
        } else {
            let mut command = Command::new(program);
            command.args(args);
            command
        }
    }

    fn run_as_server_output(&self, program: &Path, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = self.server_command(program, args);
        // the server must not sit in our process group: ctrl-c in a terminal reaches the group, and we stop it ourselves
        command.process_group(0);
        command.output().with_context(|| format!("cannot run {}", program.display()))
    }

    fn run_as_server(&self, program: &Path, args: &[&str]) -> anyhow::Result<()> {
        let output = self.run_as_server_output(program, args)?;
        check(program, &output)
    }
}

fn check(program: &Path, output: &Output) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{} failed ({}): {}{}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
