//! A two-node cluster started for a run (`loadgen park --cluster`): a `redis-server` the
//! nodes share, the cluster's secret file, and two `pushpark run` processes on it. The
//! callers send their INVITEs to node A; the devices register, and wake up, on node B, so
//! every call takes the cross-node path: parked on A, the wake-up REGISTER stored by B,
//! its registration notice read by A from Redis, the INVITE sent through B by the binding's
//! Path (specs/parking.md §10).

use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::redis::SpawnedRedis;
use super::server::{SpawnedServer, Store};
use super::{LoadgenError, Options};

/// The two nodes and their Redis. Dropped, the nodes are killed, then Redis.
pub struct SpawnedCluster {
    /// Node A: the callers' node, where every call is parked and pushed.
    pub callers: SpawnedServer,
    /// Node B: the devices' node, which stores their REGISTERs and relays their calls.
    pub devices: SpawnedServer,
    redis: SpawnedRedis,
    _dir: TempDir,
}

impl SpawnedCluster {
    /// Starts Redis, writes a secret file, and starts both nodes on them (pushing to
    /// `webhook`).
    pub async fn start(
        bin: &Path,
        options: &Options,
        webhook: SocketAddr,
    ) -> Result<SpawnedCluster, LoadgenError> {
        let dir = tempfile::Builder::new()
            .prefix("pushpark-loadgen-cluster-")
            .tempdir()
            .map_err(|source| LoadgenError::Io {
                what: "creating a temporary directory".to_owned(),
                source,
            })?;
        let secret_file = write_secret(dir.path()).map_err(|source| LoadgenError::Io {
            what: "writing the cluster's secret file".to_owned(),
            source,
        })?;
        let redis = SpawnedRedis::start().await?;
        let url = redis.url();
        let store = Store::Redis {
            url: &url,
            secret_file: &secret_file,
        };
        let callers = SpawnedServer::start(bin, options, webhook, Some(store)).await?;
        let devices = SpawnedServer::start(bin, options, webhook, Some(store)).await?;
        Ok(SpawnedCluster {
            callers,
            devices,
            redis,
            _dir: dir,
        })
    }

    /// The Redis the nodes share.
    pub fn redis(&self) -> SocketAddr {
        self.redis.addr()
    }

    /// The last lines of both nodes' logs.
    pub fn log_tail(&self) -> String {
        format!(
            "node A (callers):\n{}\nnode B (devices):\n{}",
            self.callers.log_tail(),
            self.devices.log_tail()
        )
    }

    /// Kills both nodes, then Redis, and removes their directories.
    pub async fn stop(self) {
        self.callers.stop().await;
        self.devices.stop().await;
    }
}

/// A secret file of 32 random bytes as hex, readable by its owner alone.
fn write_secret(dir: &Path) -> io::Result<PathBuf> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("cluster.secret");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?
        .write_all(format!("{hex}\n").as_bytes())?;
    Ok(path)
}
