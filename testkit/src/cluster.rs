//! Throwaway PostgreSQL servers for the demo and the tests: `initdb` in a temporary
//! directory, a free port on 127.0.0.1, fsync off, removed when dropped.
//!
//! Uses the installed server binaries (`$PGDUAL_PG_BIN`, `initdb` on `PATH`, or the newest
//! `/usr/lib/postgresql/*/bin`). PostgreSQL refuses to run as root, so when pgdual runs as
//! root the server runs as the `postgres` user (or `nobody`) instead.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found; install them with \
         `apt-get install -y postgresql` or set PGDUAL_PG_BIN to their directory"
    )]
    NoBinaries,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
    #[error("PostgreSQL did not become ready on port {port}; its log says:\n{log}")]
    NotReady { port: u16, log: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// How to set up a cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Lines placed before the default `trust` rules of pg_hba.conf.
    pub hba: Vec<String>,
    /// Extra `name=value` server settings.
    pub settings: Vec<(String, String)>,
}

/// A running throwaway PostgreSQL server. Superuser `postgres`, trust auth by default.
pub struct PgCluster {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    owner: Option<(u32, u32)>,
    child: std::sync::Mutex<Option<Child>>,
    settings: Vec<(String, String)>,
}

/// The directory holding `initdb`, `postgres`, `pg_isready` and `psql`.
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os("PGDUAL_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if let Ok(real) = fs::canonicalize(dir.join("initdb")) {
                if let Some(parent) = real.parent().filter(|p| has_server(p)) {
                    return Ok(parent.to_path_buf());
                }
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .ok_or(ClusterError::NoBinaries)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The unprivileged user to run the server as when we are root.
fn server_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions; getpwnam returns a pointer into static storage
    // that we read immediately, on this thread, before any other passwd call.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        for name in [c"postgres", c"nobody"] {
            let pw = libc::getpwnam(name.as_ptr());
            if !pw.is_null() {
                return Some(((*pw).pw_uid, (*pw).pw_gid));
            }
        }
    }
    Some((65534, 65534))
}

fn chown_tree(path: &Path, (uid, gid): (u32, u32)) -> Result<(), ClusterError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(io(format!("chown {}", path.display())))?;
    if path.is_dir() {
        for entry in fs::read_dir(path).map_err(io(format!("read {}", path.display())))? {
            let entry = entry.map_err(io("read dir"))?;
            chown_tree(&entry.path(), (uid, gid))?;
        }
    }
    Ok(())
}

fn check(cmd: &mut Command, name: &str) -> Result<Output, ClusterError> {
    let out = cmd.output().map_err(io(format!("run {name}")))?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            command: name.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out)
}

impl PgCluster {
    /// Creates and starts a cluster.
    pub fn start(opts: ClusterOptions) -> Result<PgCluster, ClusterError> {
        let bin = find_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("pgdual-pg-")
            .tempdir()
            .map_err(io("create a temporary directory"))?;
        let owner = server_owner();
        if let Some(o) = owner {
            chown_tree(dir.path(), o)?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = owner {
            initdb.uid(uid).gid(gid);
        }
        check(&mut initdb, "initdb")?;
        let mut hba = opts.hba.join("\n");
        hba.push_str(
            "\nlocal all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n",
        );
        let hba_path = data.join("pg_hba.conf");
        fs::write(&hba_path, hba).map_err(io("write pg_hba.conf"))?;
        if let Some(o) = owner {
            chown_tree(&hba_path, o)?;
        }
        let mut cluster = PgCluster {
            port: 0,
            bin,
            dir,
            owner,
            child: std::sync::Mutex::new(None),
            settings: opts.settings,
        };
        // A free port can be taken between the probe and the bind: retry a few times.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port().map_err(io("find a free port"))?;
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClusterError::NoBinaries))
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory, for tests that install certificates or edit files.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// A libpq URL for `database` as `user` on this server.
    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Starts the server process (again, after [`PgCluster::stop`]) on the same port.
    pub fn start_server(&self) -> Result<(), ClusterError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io("open the server log"))?;
        if let Some(o) = self.owner {
            chown_tree(&self.log_path(), o)?;
        }
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.socket_dir());
        let defaults = [
            ("listen_addresses", "127.0.0.1"),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("max_connections", "200"),
            ("shared_buffers", "64MB"),
            ("log_min_messages", "warning"),
        ];
        for (k, v) in defaults
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(self.settings.iter().cloned())
        {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("open the server log"))?)
            .stderr(log)
            .env("LC_ALL", "C")
            // Its own process group: a Ctrl-C meant for pgdual must not reach the server
            // before pgdual stops it in order.
            .process_group(0);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().map_err(io("start postgres"))?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), ClusterError> {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            let exited = self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited {
                break;
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        Err(ClusterError::NotReady {
            port: self.port,
            log: fs::read_to_string(self.log_path()).unwrap_or_default(),
        })
    }

    /// Stops the server (fast shutdown), keeping its data for [`PgCluster::start_server`].
    pub fn stop(&self) {
        let taken = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut child) = taken else {
            return;
        };
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGINT);
        }
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Runs SQL with psql as superuser `postgres` on database `postgres`, stopping at the
    /// first error; returns unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String, ClusterError> {
        self.psql_db("postgres", sql)
    }

    pub fn psql_db(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        let out = check(
            Command::new(self.bin.join("psql"))
                .args([
                    "-X",
                    "-A",
                    "-t",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                ])
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                ])
                .args(["-c", sql]),
            "psql",
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
