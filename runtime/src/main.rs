//! pushpark: a SIP registrar and proxy that parks calls for mobile apps that sleep.
//!
//! The protocol decisions live in the `pushpark-model` crate (model/); this binary is the
//! shell around them. For now it drives the core on a simulated clock (`pushpark demo`);
//! the SIP transports, registrar, proxy and push providers come next.

mod demo;
mod driver;

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo) {
        Command::Demo => demo::run(&mut io::stdout().lock()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pushpark: {e}");
            ExitCode::FAILURE
        }
    }
}
