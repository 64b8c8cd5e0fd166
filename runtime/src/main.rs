//! pushpark: a SIP registrar and proxy that parks calls for mobile apps that sleep.
//!
//! The protocol decisions live in the `pushpark-model` crate (model/); this binary is the
//! shell around them. For now it drives the core on a simulated clock (`pushpark demo`)
//! and checks configuration files; the SIP transports, registrar, proxy and push
//! providers are being built.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pushpark::config::{Config, ConfigError};
use pushpark::demo;

#[derive(Parser)]
#[command(name = "pushpark", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Play scripted calls through the call-parking core on a simulated clock.
    Demo,
    /// Check a configuration file and print the configuration it gives.
    CheckConfig {
        /// The TOML file (see runtime/pushpark.example.toml).
        file: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn run(command: Command) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match command {
        Command::Demo => demo::run(&mut out)?,
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            writeln!(out, "{}: ok\n{config:#?}", file.display())?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command.unwrap_or(Command::Demo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pushpark: {e}");
            ExitCode::FAILURE
        }
    }
}
