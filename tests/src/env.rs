//! Discovery of the local PostgreSQL installation, the OS user that runs the
//! servers, the on-disk work directory and the cached `initdb` template.
//!
//! Everything here is computed once per process (see [`env`]).

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

/// Environment variable: directory holding `postgres`, `initdb` and `pg_ctl`.
pub const ENV_PG_BIN: &str = "CLS_TESTKIT_PG_BIN";
/// Environment variable: parent directory for the testkit work dir
/// (default: `/dev/shm` when it has room, else [`std::env::temp_dir`]).
pub const ENV_DIR: &str = "CLS_TESTKIT_DIR";

/// Versions searched under `/usr/lib/postgresql/<v>/bin`, in order of preference.
const PG_VERSIONS: [u32; 4] = [17, 16, 15, 14];
/// Use `/dev/shm` only if it has at least this much free space.
const SHM_MIN_FREE_KIB: u64 = 2 * 1024 * 1024;
/// Bump when the template recipe (initdb flags, config) changes.
const TEMPLATE_RECIPE: u32 = 1;
/// Name of the per-server config file included from the template's `postgresql.conf`.
pub const SERVER_CONF: &str = "cls-testkit-server.conf";

/// Settings appended to the template's `postgresql.conf`: test-only, no durability.
const TEMPLATE_CONF: &str = "
# ---- cls-testkit (throwaway test server: no durability) ----
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
# port and unix_socket_directories are set per server:
";

/// How server-side commands (`initdb`, `pg_ctl`) are run.
#[derive(Debug, Clone)]
pub enum Runner {
    /// We are not root: run the commands directly, as ourselves.
    Direct { uid: u32 },
    /// We are root (initdb refuses root): run them via `runuser -u <user> --`.
    As { user: String, uid: u32, gid: u32, runuser: PathBuf },
}

impl Runner {
    /// A command running `program` as the server user, with `/` as working
    /// directory (the server user may not be able to enter ours).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = match self {
            Runner::Direct { .. } => Command::new(program),
            Runner::As { user, runuser, .. } => {
                let mut c = Command::new(runuser);
                c.arg("-u").arg(user).arg("--").arg(program);
                c
            }
        };
        cmd.current_dir("/").stdin(Stdio::null());
        cmd
    }

    /// Uid owning the data directories.
    pub fn uid(&self) -> u32 {
        match self {
            Runner::Direct { uid } | Runner::As { uid, .. } => *uid,
        }
    }

    /// Gives `path` to the server user (no-op unless we are root).
    pub fn chown(&self, path: &Path) {
        if let Runner::As { uid, gid, .. } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .unwrap_or_else(|e| panic!("cls-testkit: chown {}: {e}", path.display()));
        }
    }

    /// Recursively gives `path` to the server user (no-op unless we are root).
    pub fn chown_recursive(&self, path: &Path) {
        if let Runner::As { uid, gid, .. } = self {
            run_checked(Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(path), "chown -R");
        }
    }

    /// The server user's name, or "" when running directly (watchdog argument).
    pub fn user_arg(&self) -> &str {
        match self {
            Runner::Direct { .. } => "",
            Runner::As { user, .. } => user,
        }
    }

    /// The `runuser` binary, or "" when running directly (watchdog argument).
    pub fn runuser_arg(&self) -> &Path {
        match self {
            Runner::Direct { .. } => Path::new(""),
            Runner::As { runuser, .. } => runuser,
        }
    }
}

/// Process-wide facts, computed once.
#[derive(Debug)]
pub struct Env {
    pub bin_dir: PathBuf,
    /// E.g. `15.18`.
    pub version: String,
    pub runner: Runner,
    /// `<parent>/cls-testkit-<uid>`.
    pub base: PathBuf,
    /// `<base>/pgdata-template-<major>-r<recipe>`: an initdb'd data directory.
    pub template: PathBuf,
}

/// The process-wide environment (discovered, and the template built, on first use).
pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(Env::discover)
}

impl Env {
    fn discover() -> Env {
        let bin_dir = find_bin_dir();
        let version = server_version(&bin_dir);
        let major = version.split(|c: char| !c.is_ascii_digit()).next().unwrap_or_default().to_owned();
        let uid = current_uid();
        let base = make_base_dir(uid);
        let runner = if uid == 0 { root_runner(&base) } else { Runner::Direct { uid } };
        sweep_stale(&base, &bin_dir, &runner);
        let template = ensure_template(&base, &bin_dir, &major, &runner);
        Env { bin_dir, version, runner, base, template }
    }
}

// ------------------------------------------------------------------------------------
// binaries

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn has_server_binaries(dir: &Path) -> bool {
    ["postgres", "initdb", "pg_ctl"].iter().all(|b| is_executable(&dir.join(b)))
}

fn find_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_PG_BIN) {
        let dir = PathBuf::from(dir);
        assert!(
            has_server_binaries(&dir),
            "cls-testkit: {ENV_PG_BIN}={} does not contain executable postgres, initdb and pg_ctl",
            dir.display()
        );
        return dir;
    }
    for v in PG_VERSIONS {
        let dir = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if has_server_binaries(&dir) {
            return dir;
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server_binaries(&dir) {
            return dir;
        }
    }
    panic!(
        "cls-testkit: no PostgreSQL server binaries found.\n\
         Looked for postgres, initdb and pg_ctl in /usr/lib/postgresql/{{17,16,15,14}}/bin \
         and in `pg_config --bindir`.\n\
         Install them (Debian/Ubuntu: `apt-get install postgresql-15`) \
         or set {ENV_PG_BIN}=/path/to/bin."
    );
}

fn server_version(bin_dir: &Path) -> String {
    let postgres = bin_dir.join("postgres");
    let out = Command::new(&postgres)
        .arg("-V")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cls-testkit: cannot run {}: {e}", postgres.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    text.split_whitespace()
        .nth(2)
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("cls-testkit: unexpected `{} -V` output: {text:?}", postgres.display()))
        .to_owned()
}

// ------------------------------------------------------------------------------------
// users

fn current_uid() -> u32 {
    if let Ok(m) = fs::metadata("/proc/self") {
        return m.uid();
    }
    id_of(&["-u"]).expect("cls-testkit: cannot determine the current uid (`id -u` failed)")
}

/// Runs `id <args>` and parses the number it prints.
fn id_of(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn user_ids(user: &str) -> Option<(u32, u32)> {
    Some((id_of(&["-u", user])?, id_of(&["-g", user])?))
}

fn find_runuser() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join("runuser"))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| {
            panic!(
                "cls-testkit: running as root, but `runuser` (util-linux) was not found; \
                 initdb/postgres refuse to run as root"
            )
        })
}

/// As root: the `postgres` user, else a `pgtest` system user (created if needed).
fn root_runner(base: &Path) -> Runner {
    let runuser = find_runuser();
    let mk =
        |user: &str, (uid, gid): (u32, u32)| Runner::As { user: user.to_owned(), uid, gid, runuser: runuser.clone() };
    if let Some(ids) = user_ids("postgres") {
        return mk("postgres", ids);
    }
    if let Some(ids) = user_ids("pgtest") {
        return mk("pgtest", ids);
    }
    // Serialize useradd between concurrent test processes.
    let lock = open_lock(&base.join("useradd.lock"));
    if user_ids("pgtest").is_none() {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pgtest"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cls-testkit: cannot run useradd: {e}"));
        assert!(
            out.status.success() || user_ids("pgtest").is_some(),
            "cls-testkit: no `postgres` user, and `useradd pgtest` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(lock);
    let ids = user_ids("pgtest").expect("cls-testkit: user pgtest missing after useradd");
    mk("pgtest", ids)
}

// ------------------------------------------------------------------------------------
// directories

fn open_lock(path: &Path) -> File {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cls-testkit: open lock {}: {e}", path.display()));
    file.lock().unwrap_or_else(|e| panic!("cls-testkit: lock {}: {e}", path.display()));
    file
}

/// Free space in KiB of the file system holding `dir`, via `df -Pk`.
fn free_kib(dir: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// Candidate parents for the work dir, best first. `/dev/shm` (tmpfs) is much faster
/// for copying the ~1000-file data directory than a disk file system.
fn base_parents() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os(ENV_DIR) {
        let dir = PathBuf::from(dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cls-testkit: {ENV_DIR}={}: {e}", dir.display()));
        return vec![dir];
    }
    let mut parents = Vec::new();
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && free_kib(shm).is_some_and(|k| k >= SHM_MIN_FREE_KIB) {
        parents.push(shm.to_path_buf());
    }
    parents.push(std::env::temp_dir());
    parents
}

fn make_base_dir(uid: u32) -> PathBuf {
    let mut errors = Vec::new();
    for parent in base_parents() {
        let base = parent.join(format!("cls-testkit-{uid}"));
        match fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                errors.push(format!("{}: {e}", base.display()));
                continue;
            }
        }
        let md = fs::symlink_metadata(&base).unwrap_or_else(|e| panic!("cls-testkit: stat {}: {e}", base.display()));
        assert!(
            md.is_dir() && md.uid() == uid,
            "cls-testkit: {} exists but is not a directory owned by uid {uid}; remove it",
            base.display()
        );
        // The server user (when we are root) must be able to traverse it.
        if md.permissions().mode() & 0o7777 != 0o755 {
            fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| {
                panic!("cls-testkit: chmod {}: {e}", base.display());
            });
        }
        return base;
    }
    panic!("cls-testkit: cannot create a work directory: {}", errors.join("; "));
}

/// Creates `dir` (mode 0700) for the server user.
pub fn make_private_dir(dir: &Path, runner: &Runner) {
    fs::create_dir(dir).unwrap_or_else(|e| panic!("cls-testkit: mkdir {}: {e}", dir.display()));
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("cls-testkit: chmod {}: {e}", dir.display()));
    runner.chown(dir);
}

/// Runs `cmd`, panicking with its output if it fails.
pub fn run_checked(cmd: &mut Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cls-testkit: cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "cls-testkit: {what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------------------------
// template data directory

fn ensure_template(base: &Path, bin_dir: &Path, major: &str, runner: &Runner) -> PathBuf {
    let name = format!("pgdata-template-{major}-r{TEMPLATE_RECIPE}");
    let template = base.join(&name);
    let ready = |t: &Path| t.join("PG_VERSION").is_file() && t.join("postgresql.conf").is_file();
    if ready(&template) {
        return template;
    }
    // Only one process runs initdb; the others wait here and then reuse its result.
    let lock = open_lock(&base.join(format!("{name}.lock")));
    if ready(&template) {
        return template;
    }
    if template.exists() {
        // Left over from something else; we hold the lock, so nobody is using it.
        fs::remove_dir_all(&template)
            .unwrap_or_else(|e| panic!("cls-testkit: cannot remove broken {}: {e}", template.display()));
    }
    let tmp = base.join(format!(".{name}.tmp-{}", Uuid::new_v4().simple()));
    make_private_dir(&tmp, runner);
    run_initdb(bin_dir, &tmp, runner);
    let mut conf = File::options()
        .append(true)
        .open(tmp.join("postgresql.conf"))
        .unwrap_or_else(|e| panic!("cls-testkit: open postgresql.conf: {e}"));
    conf.write_all(format!("{TEMPLATE_CONF}include_if_exists = '{SERVER_CONF}'\n").as_bytes())
        .unwrap_or_else(|e| panic!("cls-testkit: write postgresql.conf: {e}"));
    drop(conf);
    // Publish atomically: a template that exists is complete.
    if let Err(e) = fs::rename(&tmp, &template) {
        let _ = fs::remove_dir_all(&tmp);
        assert!(ready(&template), "cls-testkit: rename {} -> {}: {e}", tmp.display(), template.display());
    }
    drop(lock);
    template
}

fn run_initdb(bin_dir: &Path, dir: &Path, runner: &Runner) {
    let initdb = bin_dir.join("initdb");
    let attempt = |locale_args: &[&str]| {
        runner
            .command(&initdb)
            .arg("-D")
            .arg(dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                // 1 MiB WAL segments instead of 16: a much smaller directory to copy.
                "--wal-segsize=1",
            ])
            .args(locale_args)
            .output()
            .unwrap_or_else(|e| panic!("cls-testkit: cannot run {}: {e}", initdb.display()))
    };
    let first = attempt(&["--locale=C.UTF-8"]);
    if first.status.success() {
        return;
    }
    // C.UTF-8 may not exist on this system: clean up and fall back to plain C.
    let _ = fs::remove_dir_all(dir);
    make_private_dir(dir, runner);
    let second = attempt(&["--no-locale"]);
    assert!(
        second.status.success(),
        "cls-testkit: initdb failed:\n--- with --locale=C.UTF-8:\n{}{}\n--- with --no-locale:\n{}{}",
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr),
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&second.stderr),
    );
}

// ------------------------------------------------------------------------------------
// stale leftovers

/// Name of the file in each server dir recording who owns it.
pub const OWNER_FILE: &str = "owner";

/// Our pid namespace (`pid:[4026531836]`), so we never judge pids of another namespace.
pub fn pid_namespace() -> String {
    fs::read_link("/proc/self/ns/pid").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

fn age(path: &Path) -> Duration {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default()
}

/// Removes server dirs whose owning process is gone but whose watchdog did not
/// clean up (e.g. it was SIGKILLed too), and abandoned template builds.
fn sweep_stale(base: &Path, bin_dir: &Path, runner: &Runner) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let our_ns = pid_namespace();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".pgdata-template-") && age(&path) > Duration::from_secs(600) {
            let _ = fs::remove_dir_all(&path);
            continue;
        }
        if !name.starts_with("srv-") || age(&path) < Duration::from_secs(60) {
            continue;
        }
        let owner = fs::read_to_string(path.join(OWNER_FILE)).unwrap_or_default();
        let mut lines = owner.lines();
        let (Some(pid), Some(ns)) = (lines.next(), lines.next()) else {
            continue;
        };
        if our_ns.is_empty() || ns != our_ns || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let data = path.join("data");
        if data.join("postmaster.pid").exists() {
            let _ = runner
                .command(&bin_dir.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&path);
    }
}
