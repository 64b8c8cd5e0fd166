//! The Redis a cluster's nodes share: a `redis-server` the load generator starts for the
//! run, and what it did during the calls (`INFO commandstats` and `INFO cpu`).

use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::server::free_port;
use super::LoadgenError;

/// How long `redis-server` may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The command the load generator itself sends, left out of the counts.
const OWN_COMMAND: &str = "info";

/// A `redis-server` on a free loopback port, its append-only file fsynced on every write
/// (what pushpark requires), in a temporary directory. Its shell wrapper kills it with
/// SIGKILL when its stdin closes: when this is dropped, and also when the load generator
/// dies in any way (panic, Ctrl-C, a kill), since the kernel closes the pipe then.
pub struct SpawnedRedis {
    addr: SocketAddr,
    shell: Child,
    stdin: Option<ChildStdin>,
    _dir: TempDir,
}

impl SpawnedRedis {
    /// Starts `redis-server` (from `PATH`) in a new temporary directory, and waits until it
    /// answers.
    pub async fn start() -> Result<SpawnedRedis, LoadgenError> {
        let io = |what: &'static str| {
            move |source| LoadgenError::Io {
                what: what.to_owned(),
                source,
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("pushpark-loadgen-redis-")
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let port = free_port().map_err(io("finding a free port"))?;
        let mut shell = spawn(port, dir.path()).map_err(io("starting redis-server"))?;
        let stdin = shell.stdin.take();
        let mut redis = SpawnedRedis {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            shell,
            stdin,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !ping(redis.addr).await {
            if Instant::now() > deadline || matches!(redis.shell.try_wait(), Ok(Some(_))) {
                return Err(LoadgenError::Server(format!(
                    "redis-server did not answer on {} within {START_TIMEOUT:?} (is it \
                     installed? apt-get install redis-server)",
                    redis.addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(redis)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL pushpark's `[store] url` takes.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for SpawnedRedis {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = self.shell.wait();
    }
}

fn spawn(port: u16, dir: &Path) -> io::Result<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(
            "redis-server --port \"$1\" --bind 127.0.0.1 --dir \"$2\" --save '' \
             --appendonly yes --appendfsync always >redis.log 2>&1 & pid=$!; \
             read _ignored; kill -9 $pid; wait $pid",
        )
        .args(["sh", &port.to_string(), &dir.display().to_string()])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

async fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let mut reply = [0; 7];
    stream.write_all(b"PING\r\n").await.is_ok()
        && stream.read_exact(&mut reply).await.is_ok()
        && &reply == b"+PONG\r\n"
}

/// What Redis had done so far: commands by name (calls and microseconds spent in them) and
/// its CPU time, from `INFO commandstats cpu`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisStats {
    /// By command name (lower case, as Redis names them): calls, and microseconds.
    pub commands: BTreeMap<String, CommandStats>,
    /// `used_cpu_user` + `used_cpu_sys` (the main process, all its threads).
    pub cpu: Option<Duration>,
}

/// One command's count and time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStats {
    /// Times it was called.
    pub calls: u64,
    /// Microseconds Redis spent executing it.
    pub usec: u64,
}

impl RedisStats {
    /// Asks the Redis at `addr`.
    pub async fn read(addr: SocketAddr) -> io::Result<RedisStats> {
        Ok(RedisStats::parse(&info(addr).await?))
    }

    /// Parses the text of `INFO commandstats cpu`.
    pub fn parse(text: &str) -> RedisStats {
        let mut stats = RedisStats::default();
        let mut cpu = Vec::new();
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            if let Some(name) = key.strip_prefix("cmdstat_") {
                let field = |field: &str| {
                    value
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                let command = CommandStats {
                    calls: field("calls"),
                    usec: field("usec"),
                };
                stats.commands.insert(name.to_owned(), command);
            } else if key == "used_cpu_user" || key == "used_cpu_sys" {
                cpu.extend(value.parse::<f64>().ok());
            }
        }
        if cpu.len() == 2 {
            stats.cpu = Duration::try_from_secs_f64(cpu.iter().sum()).ok();
        }
        stats
    }

    /// What was done since `before`, the load generator's own INFO left out.
    pub fn since(&self, before: &RedisStats) -> RedisStats {
        let mut commands = BTreeMap::new();
        for (name, now) in &self.commands {
            let then = before.commands.get(name).copied().unwrap_or_default();
            let calls = now.calls.saturating_sub(then.calls);
            if calls > 0 && name != OWN_COMMAND {
                let usec = now.usec.saturating_sub(then.usec);
                commands.insert(name.clone(), CommandStats { calls, usec });
            }
        }
        let cpu = match (self.cpu, before.cpu) {
            (Some(now), Some(then)) => Some(now.saturating_sub(then)),
            _ => None,
        };
        RedisStats { commands, cpu }
    }

    /// Commands in all.
    pub fn total_calls(&self) -> u64 {
        self.commands.values().map(|c| c.calls).sum()
    }

    /// Microseconds spent executing commands, in all.
    pub fn total_usec(&self) -> u64 {
        self.commands.values().map(|c| c.usec).sum()
    }
}

/// The text of `INFO commandstats cpu`, over RESP.
async fn info(addr: SocketAddr) -> io::Result<String> {
    let mut stream = BufReader::new(TcpStream::connect(addr).await?);
    stream
        .get_mut()
        .write_all(b"*3\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n$3\r\ncpu\r\n")
        .await?;
    let mut header = String::new();
    stream.read_line(&mut header).await?;
    let len: usize = header
        .strip_prefix('$')
        .and_then(|n| n.trim_end().parse().ok())
        .ok_or_else(|| io::Error::other(format!("INFO answered {:?}", header.trim_end())))?;
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    String::from_utf8(body).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_and_cpu_parse_and_subtract_leaving_out_info() {
        let before = RedisStats::parse(
            "# Commandstats\r\n\
             cmdstat_evalsha:calls=10,usec=100,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_info:calls=1,usec=50,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\n\
             \r\n# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:0.500000\r\n\
             used_cpu_sys_children:0.000000\r\n",
        );
        let after = RedisStats::parse(
            "cmdstat_evalsha:calls=30,usec=400,usec_per_call=13.33,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_xread:calls=5,usec=20,usec_per_call=4.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_info:calls=2,usec=90,usec_per_call=45.00,rejected_calls=0,failed_calls=0\r\n\
             used_cpu_sys:2.000000\r\nused_cpu_user:1.250000\r\n",
        );
        let run = after.since(&before);
        assert_eq!(
            run.commands.get("evalsha"),
            Some(&CommandStats {
                calls: 20,
                usec: 300
            })
        );
        assert_eq!(run.commands.get("xread").map(|c| c.calls), Some(5));
        assert!(!run.commands.contains_key("info"));
        assert_eq!(run.total_calls(), 25);
        assert_eq!(run.total_usec(), 320);
        assert_eq!(run.cpu, Some(Duration::from_millis(1250)));
    }
}
