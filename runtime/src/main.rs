//! pushpark: a SIP registrar and proxy that parks calls for mobile apps that sleep.
//!
//! The protocol decisions live in the `pushpark-model` crate (model/); this binary is the
//! shell around them: `pushpark run` (the default) serves SIP, `check-config` checks a
//! configuration file, `user` manages the digest users file, `demo` shows a call parked,
//! pushed and delivered between simulated phones on loopback.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pushpark::auth::{self, UsersError};
use pushpark::config::{Config, ConfigError};
use pushpark::demo;
use pushpark::server::{Server, StartError};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "pushpark", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve SIP: the registrar and proxy that parks calls (embedded defaults without --config).
    Run {
        /// The TOML configuration (see runtime/pushpark.example.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show a call parked, pushed and delivered: the server on loopback with a simulated
    /// caller and a sleeping phone.
    Demo,
    /// Check a configuration file and print the configuration it gives.
    CheckConfig {
        /// The TOML file (see runtime/pushpark.example.toml).
        file: PathBuf,
    },
    /// Manage the users file (HA1 hashes only; passwords are never stored).
    User {
        /// The users file (the one `auth.users_file` names).
        #[arg(long)]
        file: PathBuf,
        /// The server's configuration, whose realm users are added in (embedded defaults
        /// without it).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: UserAction,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Add a user, or replace their password; reads the password from standard input.
    Add {
        username: String,
        /// The digest realm: the server's (`auth.realm`, else its first domain) by default;
        /// any other is refused, since the server would never challenge with it.
        #[arg(long)]
        realm: Option<String>,
    },
    /// Remove a user from every realm.
    Remove { username: String },
    /// List users and realms.
    List,
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Demo(#[from] demo::DemoError),
}

fn run(command: Command) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match command {
        Command::Run { config } => {
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            drop(out);
            return serve(config);
        }
        Command::Demo => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(demo::run(&mut out))?;
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            writeln!(out, "{}: ok\n{config:#?}", file.display())?;
        }
        Command::User {
            file,
            config,
            action,
        } => match action {
            UserAction::Add { username, realm } => {
                let config = match config {
                    Some(path) => Config::load(&path)?,
                    None => Config::default(),
                };
                let served = config.realm().to_owned();
                let realm = match realm {
                    Some(realm) if realm != served => {
                        return Err(Failure::Usage(format!(
                            "the server challenges in realm {served:?} (auth.realm, else its \
                             first domain), never in {realm:?}: its users would be refused"
                        )))
                    }
                    _ => served,
                };
                let mut password = String::new();
                io::stdin().read_line(&mut password)?;
                let password = password.trim_end_matches(['\r', '\n']);
                if password.is_empty() {
                    return Err(Failure::Usage(
                        "no password on standard input (echo PASSWORD | pushpark user ...)".into(),
                    ));
                }
                let replaced = auth::add_user(&file, &username, &realm, password)?;
                let what = if replaced { "updated" } else { "added" };
                writeln!(out, "{what} {username} in realm {realm}")?;
            }
            UserAction::Remove { username } => {
                if !auth::remove_user(&file, &username)? {
                    return Err(Failure::Usage(format!(
                        "no user {username} in {}",
                        file.display()
                    )));
                }
                writeln!(out, "removed {username}")?;
            }
            UserAction::List => {
                for (username, realm) in auth::list_users(&file)? {
                    writeln!(out, "{username}\t{realm}")?;
                }
            }
        },
    }
    Ok(())
}

/// Runs the server until Ctrl-C or SIGTERM, then drains it (every call answered, within
/// `sip.shutdown_grace`); SIGHUP reloads the TLS certificates.
fn serve(config: Config) -> Result<(), Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    abort_on_panic();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let server = Server::start(config).await?;
        shutdown_signal(&server).await;
        tracing::info!("shutting down");
        server.drain().await;
        Ok(())
    })
}

/// A panic anywhere ends the process at once, for a supervisor to restart it: the event
/// loop's state cannot be trusted after one, and a half-alive server that still accepts
/// connections is worse than a restart. Nothing answered is lost: every binding's 200 OK
/// followed its commit.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// Waits for Ctrl-C or SIGTERM, reloading the TLS certificates on each SIGHUP meanwhile.
async fn shutdown_signal(server: &Server) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return,
                    _ = term.recv() => return,
                    _ = hup.recv() => server.reload_tls(),
                }
            }
        }
    }
    let _ = server;
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command.unwrap_or(Command::Run { config: None })) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pushpark: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    /// Set in the child process the test below starts.
    const CHILD: &str = "PUSHPARK_TEST_PANICKING_CHILD";

    #[test]
    fn a_panic_anywhere_aborts_the_process() {
        if std::env::var_os(CHILD).is_some() {
            super::abort_on_panic();
            // A panic on another thread, as in the event loop's task: without the hook the
            // process would live on.
            let _ = std::thread::spawn(|| panic!("deliberate")).join();
            std::process::exit(0);
        }
        let out = Command::new(std::env::current_exe().expect("this test binary"))
            .args([
                "--exact",
                "tests::a_panic_anywhere_aborts_the_process",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .expect("the child runs");
        assert_eq!(
            out.status.signal(),
            Some(6),
            "SIGABRT, not {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
