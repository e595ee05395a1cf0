//! `spillway iothub-emulator`: run the IoT Hub emulator as a process. Its
//! first stdout line is the service connection string, so scripts can read
//! it (`head -1`); the URL to reach it follows on stderr.

use super::{Emulator, EmulatorConfig, NewDevice, OWNER_POLICY, random_key};
use crate::edge::sas::SharedAccessKey;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `spillway iothub-emulator`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8490")]
    pub listen: SocketAddr,
    /// Hub name: tokens must be signed for `<NAME>.azure-devices.net`.
    #[arg(long, default_value = "spillway-emulator")]
    pub hub_name: String,
    /// Base64 key of the `iothubowner` policy; a random one without it.
    #[arg(
        long,
        value_name = "BASE64",
        env = "SPILLWAY_IOTHUB_EMULATOR_KEY",
        hide_env_values = true
    )]
    pub shared_access_key: Option<String>,
    /// Configurations the hub accepts.
    #[arg(long, default_value_t = 100)]
    pub max_configurations: usize,
    /// Seconds a device takes to report a new deployment.
    #[arg(long, default_value_t = 5.0)]
    pub report_delay: f64,
    /// Configuration operations per minute before 429.
    #[arg(long, default_value_t = 20.0)]
    pub configuration_ops_per_minute: f64,
    /// An IoT Edge device to create at start, with tags: `ID[:KEY=VALUE,…]`
    /// (e.g. `munich-1:site=munich,floor=2`). Repeatable; more through
    /// `POST /_emulator/devices`.
    #[arg(long = "device", value_name = "ID[:TAGS]", value_parser = parse_device)]
    pub devices: Vec<NewDevice>,
}

/// `ID[:KEY=VALUE,…]` → an online IoT Edge device with string tags.
fn parse_device(s: &str) -> Result<NewDevice, String> {
    let (id, tags) = s.split_once(':').unwrap_or((s, ""));
    if id.is_empty() || id.len() > 128 {
        return Err(format!("{s:?}: the device id must be 1 to 128 characters"));
    }
    let mut map = serde_json::Map::new();
    for pair in tags.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| format!("{s:?}: tag {pair:?} is not KEY=VALUE"))?;
        map.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    Ok(NewDevice::edge(id, serde_json::Value::Object(map)))
}

impl Args {
    /// The configuration these flags describe, or why they are wrong.
    pub fn config(&self) -> Result<EmulatorConfig, String> {
        let key = match &self.shared_access_key {
            Some(b64) => SharedAccessKey::from_base64(b64)
                .map_err(|e| format!("--shared-access-key: {e}"))?,
            None => random_key(),
        };
        if !(self.report_delay.is_finite() && self.report_delay >= 0.0) {
            return Err(format!(
                "--report-delay {}: must be 0 or more seconds",
                self.report_delay
            ));
        }
        Ok(EmulatorConfig {
            hub_name: self.hub_name.clone(),
            policies: vec![(OWNER_POLICY.into(), key)],
            max_configurations: self.max_configurations,
            report_delay: Duration::from_secs_f64(self.report_delay),
            configuration_ops_per_minute: self.configuration_ops_per_minute,
            ..EmulatorConfig::default()
        })
    }
}

/// Run until interrupted. Exit 64 on bad flags, 1 if the server fails.
pub fn run(args: &Args) -> ExitCode {
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spillway iothub-emulator: {e}");
            return ExitCode::from(crate::cli::EXIT_BAD_INPUT);
        }
    };
    let Some(runtime) = crate::cli::server_runtime("iothub-emulator") else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let handle = match Emulator::start_on(args.listen, config).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("spillway iothub-emulator: {e}");
                return ExitCode::from(crate::cli::EXIT_BAD_INPUT);
            }
        };
        for device in &args.devices {
            if let Err(e) = handle.state.add_device(device.clone()) {
                eprintln!(
                    "spillway iothub-emulator: --device {}: {e}",
                    device.device_id
                );
                return ExitCode::from(crate::cli::EXIT_BAD_INPUT);
            }
        }
        let Some(conn) = handle.connection_string() else {
            eprintln!("spillway iothub-emulator: no shared access policy");
            return ExitCode::FAILURE;
        };
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", conn.to_connection_string());
            let _ = out.flush();
        }
        eprintln!(
            "IoT Hub emulator for {} listening on {} (use --edge-hub-url {})",
            conn.host_name, handle.url, handle.url
        );
        match handle.run_until(crate::cli::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("spillway iothub-emulator: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_are_optional_and_a_bad_key_is_refused() {
        let cli = Cli::try_parse_from(["x"]).expect("defaults");
        let c = cli.args.config().expect("config");
        assert_eq!(c.host_name(), "spillway-emulator.azure-devices.net");
        let cli = Cli::try_parse_from(["x", "--shared-access-key", "not base64!"]).expect("parses");
        let err = cli.args.config().expect_err("bad key");
        assert!(err.contains("--shared-access-key"), "{err}");
        assert!(!err.contains("not base64!"), "the key is not echoed: {err}");
        let cli = Cli::try_parse_from(["x", "--hub-name", "h1", "--shared-access-key", "YWJj"])
            .expect("parses");
        let conn = cli
            .args
            .config()
            .expect("config")
            .connection_string()
            .expect("conn");
        assert_eq!(
            conn.to_connection_string(),
            "HostName=h1.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=YWJj"
        );
    }

    #[test]
    fn devices_with_tags_from_flags() {
        let cli = Cli::try_parse_from([
            "x",
            "--device",
            "munich-1:site=munich,floor=2",
            "--device",
            "bare",
        ])
        .expect("parses");
        assert_eq!(
            cli.args.devices,
            vec![
                NewDevice::edge(
                    "munich-1",
                    serde_json::json!({"site": "munich", "floor": "2"})
                ),
                NewDevice::edge("bare", serde_json::json!({})),
            ]
        );
        for bad in [":site=x", "d:site", "d:=x"] {
            assert!(
                Cli::try_parse_from(["x", "--device", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
