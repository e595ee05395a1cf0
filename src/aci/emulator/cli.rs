//! `spillway aci-emulator`: run the emulator as a standalone process.

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
}

impl Args {
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
    let config = match args.config() {
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
        let handle = match Emulator::start_on(args.listen, config).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("spillway aci-emulator: {e}");
                return ExitCode::FAILURE;
            }
        };
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
