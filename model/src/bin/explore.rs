//! Serves stateright's web Explorer for one configuration of the call-parking model, so an
//! architect can walk the interleavings by hand.
//!
//! cargo run --release -p pushpark-model --features checker --bin explore -- --calls 1 --devices 1

use std::process::ExitCode;

use pushpark_model::checker::{ClusterFault, ParkModel, CONFIGURATIONS};
use pushpark_model::Fault;
use stateright::Model;

const USAGE: &str = "\
usage: explore [--config NAME] [--calls N] [--devices N] [--awake N] [--no-cancel]
               [--fault NAME] [--addr HOST:PORT]

Serves stateright's Explorer for the call-parking model (default 127.0.0.1:3000).
--config picks a configuration the CI checks; the other options adjust it
(or ParkModel::new(calls, devices) when no --config is given).";

struct Options {
    model: ParkModel,
    addr: String,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let args: Vec<String> = args.collect();
    // --config is the base that the other options adjust, wherever it stands.
    let mut model = match args.iter().position(|a| a == "--config") {
        Some(i) => {
            let name = args.get(i + 1).ok_or("--config needs a value")?;
            ParkModel::configuration(name).ok_or(format!("unknown configuration {name}"))?
        }
        None => ParkModel::new(1, 1),
    };
    let mut addr = "127.0.0.1:3000".to_owned();
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<u8>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--config" => {
                value()?;
            }
            "--calls" => model.calls = number(value()?)?,
            "--devices" => model.devices = number(value()?)?,
            "--awake" => model.awake = number(value()?)?,
            "--no-cancel" => model.callers_cancel = false,
            "--fault" => {
                let name = value()?;
                if let Some(fault) = ClusterFault::ALL
                    .into_iter()
                    .find(|f| format!("{f:?}") == name)
                {
                    model.cluster_fault = Some(fault);
                    continue;
                }
                let fault = Fault::ALL
                    .into_iter()
                    .find(|f| format!("{f:?}") == name)
                    .ok_or(format!("unknown fault {name}"))?;
                model.fault = Some(fault);
            }
            "--addr" => addr = value()?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if model.calls == 0 || model.devices == 0 || model.awake > model.devices {
        return Err("need at least one call and one device, and no more awake than devices".into());
    }
    Ok(Options { model, addr })
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\n\n{USAGE}\n\nconfigurations:");
            for (name, about) in CONFIGURATIONS {
                eprintln!("  {name:<14} {about}");
            }
            let faults: Vec<String> = Fault::ALL.iter().map(|f| format!("{f:?}")).collect();
            eprintln!("\nfaults: {}", faults.join(", "));
            let faults: Vec<String> = ClusterFault::ALL.iter().map(|f| format!("{f:?}")).collect();
            eprintln!(
                "faults of the runtime in a cluster (with a -cluster configuration): {}",
                faults.join(", ")
            );
            return ExitCode::from(2);
        }
    };
    println!(
        "Explorer for {} call(s) x {} device(s) ({} awake){}: http://{}/",
        options.model.calls,
        options.model.devices,
        options.model.awake,
        options
            .model
            .fault
            .map(|f| format!(", fault {f:?}"))
            .or(options
                .model
                .cluster_fault
                .map(|f| format!(", fault {f:?}")))
            .unwrap_or_default(),
        options.addr
    );
    // Blocks for as long as the Explorer is served.
    options
        .model
        .checker()
        .threads(2)
        .serve(options.addr.as_str());
    ExitCode::SUCCESS
}
