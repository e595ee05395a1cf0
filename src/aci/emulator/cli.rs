//! `spillway aci-emulator`: run the emulator as a standalone process.

use super::subnets::{ACI_DELEGATION, SubnetDefinition, Subnets};
use super::{Emulator, EmulatorConfig};
use std::net::SocketAddr;
use std::process::ExitCode;

/// Flags of `spillway aci-emulator`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:8480")]
    pub listen: SocketAddr,
    /// Lifecycle speed factor (10 = provisioning ten times faster than ACI).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Bearer token clients must send; "any" accepts every non-empty token.
    #[arg(long, default_value = "any")]
    pub token: String,
    /// StandardCores quota per subscription and region.
    #[arg(long, default_value_t = 100)]
    pub cores: i64,
    /// ContainerGroups quota per subscription and region.
    #[arg(long, default_value_t = 100)]
    pub groups: i64,
    /// Seed for injected faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A subnet of the emulated VNet, delegated to ACI, as `ID=CIDR`
    /// (`/subscriptions/…/virtualNetworks/V/subnets/S=10.240.8.0/24`);
    /// repeatable. More (and undelegated ones) through `POST /_emulator/subnets`.
    #[arg(long = "subnet", value_name = "ID=CIDR")]
    pub subnets: Vec<String>,
}

impl Args {
    /// The `--subnet` flags as definitions, each checked.
    pub fn subnet_definitions(&self) -> Result<Vec<SubnetDefinition>, String> {
        let mut check = Subnets::default();
        self.subnets
            .iter()
            .map(|s| {
                let (id, prefix) = s
                    .rsplit_once('=')
                    .ok_or_else(|| format!("--subnet {s:?}: expected ID=CIDR"))?;
                let def = SubnetDefinition {
                    id: id.to_string(),
                    address_prefix: prefix.to_string(),
                    delegations: vec![ACI_DELEGATION.to_string()],
                };
                check
                    .define(def.clone())
                    .map_err(|e| format!("--subnet {s:?}: {e}"))?;
                Ok(def)
            })
            .collect()
    }

    /// The emulator configuration these flags describe, or why they are wrong.
    pub fn config(&self) -> Result<EmulatorConfig, String> {
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(format!("--speed {}: must be a positive number", self.speed));
        }
        if self.token.is_empty() {
            return Err("--token: must not be empty (use \"any\" to accept every token)".into());
        }
        if self.cores < 0 || self.groups < 0 {
            return Err("--cores and --groups must not be negative".into());
        }
        Ok(EmulatorConfig {
            token: (self.token != "any").then(|| self.token.clone()),
            speed: self.speed,
            cores_limit: self.cores,
            groups_limit: self.groups,
            seed: self.seed,
            ..EmulatorConfig::default()
        })
    }
}

/// Run until interrupted. Exit 64 on bad flags, 1 if the server fails.
pub fn run(args: &Args) -> ExitCode {
    let config = match args
        .config()
        .and_then(|c| Ok((c, args.subnet_definitions()?)))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spillway aci-emulator: {e}");
            return ExitCode::from(crate::cli::EXIT_BAD_INPUT);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spillway aci-emulator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (config, subnets) = config;
        let handle = match Emulator::start_on(args.listen, config).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("spillway aci-emulator: {e}");
                return ExitCode::FAILURE;
            }
        };
        for def in subnets {
            let id = def.id.clone();
            if let Err(e) = handle.state.define_subnet(def) {
                eprintln!("spillway aci-emulator: --subnet {id}: {e}");
                return ExitCode::from(crate::cli::EXIT_BAD_INPUT);
            }
        }
        println!("ACI emulator listening on {}", handle.url);
        let stop = async {
            // Without a signal handler, run until killed.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        match handle.run_until(stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("spillway aci-emulator: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    const ID: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/aci";

    #[test]
    fn subnet_flags_become_delegated_subnets_or_clear_errors() {
        let cli = Cli::parse_from(["x", "--subnet", &format!("{ID}=127.0.8.0/24")]);
        let defs = cli.args.subnet_definitions().expect("valid");
        assert_eq!(defs.len(), 1);
        assert_eq!(
            (defs[0].id.as_str(), defs[0].address_prefix.as_str()),
            (ID, "127.0.8.0/24")
        );
        assert_eq!(defs[0].delegations, [ACI_DELEGATION]);
        for (bad, why) in [
            (ID.to_string(), "expected ID=CIDR"),
            (format!("{ID}=127.0.8.1/24"), "host bits"),
            ("/x=10.0.0.0/24".to_string(), "not an ARM subnet id"),
        ] {
            let cli = Cli::parse_from(["x", "--subnet", &bad]);
            let e = cli.args.subnet_definitions().expect_err(&bad);
            assert!(e.contains(why) && e.starts_with("--subnet "), "{bad}: {e}");
        }
    }
}
