//! A private PostgreSQL cluster for `dev` and for the test harness: initialised on first use,
//! started as a child of this process, and shut down when this process goes away, even if it
//! is killed, because a small shell watchdog stops the server when its stdin closes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::process::{Child, ChildStdin, Command};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH or via \
         `pg_config --bindir`: install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL"
    )]
    BinariesNotFound,
    #[error("{action}: {detail}")]
    Failed { action: String, detail: String },
}

fn failed(action: impl Into<String>, detail: impl ToString) -> ClusterError {
    ClusterError::Failed {
        action: action.into(),
        detail: detail.to_string(),
    }
}

/// A running private cluster listening on 127.0.0.1 only, with trust authentication for the
/// `postgres` user.
pub struct LocalCluster {
    data_dir: PathBuf,
    port: u16,
    watchdog: Child,
    stop_signal: Option<ChildStdin>,
}

impl LocalCluster {
    /// Starts the cluster in `data_dir`, initialising it first if the directory holds none.
    /// Returns the cluster and whether it was initialised now.
    pub async fn start(data_dir: &Path, port: u16) -> Result<(Self, bool), ClusterError> {
        let bin_dir = find_bin_dir().ok_or(ClusterError::BinariesNotFound)?;
        let initialised = if data_dir.join("PG_VERSION").is_file() {
            false
        } else {
            initdb(&bin_dir, data_dir).await?;
            true
        };
        let mut command = as_cluster_owner();
        // `sh` waits on stdin; when the pipe closes (stop, or this process dies) it stops
        // postgres with a fast shutdown and waits for it to finish.
        command
            .arg("-c")
            .arg(r#""$0" -D "$1" -p "$2" -c listen_addresses=127.0.0.1 -c unix_socket_directories= & pg=$!; read _; kill -INT $pg; wait $pg"#)
            .arg(bin_dir.join("postgres"))
            .arg(data_dir)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(false);
        let mut watchdog = command
            .spawn()
            .map_err(|error| failed("starting postgres", error))?;
        let stop_signal = watchdog.stdin.take();
        let cluster = Self {
            data_dir: data_dir.to_owned(),
            port,
            watchdog,
            stop_signal,
        };
        cluster.wait_until_accepting().await?;
        Ok((cluster, initialised))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// URL of the `postgres` database on this cluster.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn wait_until_accepting(&self) -> Result<(), ClusterError> {
        let url = self.admin_url();
        let mut last_error = String::new();
        for _ in 0..200 {
            match PgConnection::connect(&url).await {
                Ok(connection) => {
                    let _ = connection.close().await;
                    return Ok(());
                }
                Err(error) => last_error = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(failed(
            format!("waiting for postgres on port {}", self.port),
            last_error,
        ))
    }

    /// Fast shutdown; waits until the server has exited.
    pub async fn stop(mut self) -> Result<(), ClusterError> {
        drop(self.stop_signal.take());
        self.watchdog
            .wait()
            .await
            .map_err(|error| failed("stopping postgres", error))?;
        Ok(())
    }
}

fn find_bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| has_server(dir)))
    {
        return Some(dir);
    }
    let output = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    has_server(&dir).then_some(dir)
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|meta| meta.uid() == 0)
        .unwrap_or(false)
}

/// PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user.
fn as_cluster_owner() -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", "sh"]);
        command
    } else {
        Command::new("sh")
    }
}

async fn initdb(bin_dir: &Path, data_dir: &Path) -> Result<(), ClusterError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|error| failed(format!("creating {}", data_dir.display()), error))?;
    if running_as_root() {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(data_dir)
            .status()
            .await
            .map_err(|error| failed("chown of the data directory", error))?;
        if !status.success() {
            return Err(failed(
                "chown of the data directory",
                "the `postgres` OS user must exist when running as root",
            ));
        }
    }
    let output = as_cluster_owner()
        .arg("-c")
        .arg(r#""$0" -D "$1" -U postgres --auth=trust --encoding=UTF8 --no-sync"#)
        .arg(bin_dir.join("initdb"))
        .arg(data_dir)
        .output()
        .await
        .map_err(|error| failed("running initdb", error))?;
    if !output.status.success() {
        return Err(failed(
            "initdb",
            String::from_utf8_lossy(&output.stderr).trim(),
        ));
    }
    Ok(())
}
