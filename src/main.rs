//! The `spillway` binary: parse flags, build, run. Exit 64 on bad flags or config.

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "spillway",
    version = spillway::cli::VERSION,
    about = "Burst-scaling scheduler extender, autoscaler and embedded ACI provider for AKS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// All in one: scheduler extender + autoscaler, leader-elected (every replica serves the extender).
    Run(spillway::run::RunCommand),
    /// Replay a workload against vm-only, aci-always and spillway; print latency and cost.
    Simulate(spillway::cli::SimulateArgs),
    /// Validate policy files: every error as file:line:column, exit 64 if any.
    Policy {
        #[command(subcommand)]
        action: PolicyCommand,
    },
    /// Run only the scheduler extender HTTP server.
    Extender(spillway::extender::ExtenderCommand),
    /// Print each pending pod's verdict and why (the live cluster, like kubectl, or a dump); --pod NAME for one pod's story.
    Explain(spillway::explain::ExplainCommand),
    /// Azure Container Instances tools: `aci render -f pod.yaml` prints the ARM body spillway would send.
    Aci {
        #[command(subcommand)]
        action: AciCommand,
    },
    /// Run an ARM-compatible Azure Container Instances endpoint (local runs, tests).
    AciEmulator(spillway::aci::emulator::cli::Args),
    /// Run an IoT Hub service endpoint with simulated IoT Edge devices; prints its connection string first.
    IothubEmulator(spillway::edge::emulator::cli::Args),
    /// Print the version, git commit and build date.
    Version,
    /// Print a shell completion script (e.g. `spillway completion bash > /etc/bash_completion.d/spillway`).
    Completion {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

/// The shells `spillway completion` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Check policy files (or every *.yaml/*.yml in a directory): all errors of all files, and conflicts between them.
    Check(spillway::cli::PolicyCheckArgs),
}

#[derive(Subcommand, Debug)]
enum AciCommand {
    /// Print the ARM request body (JSON) spillway would PUT for a pod, secure values masked, or the exact errors (exit 65).
    Render(spillway::aci::render::RenderArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Simulate(args) => spillway::cli::simulate(&args),
        Command::Run(args) => spillway::run::run(args),
        Command::Policy {
            action: PolicyCommand::Check(args),
        } => spillway::cli::policy_check(&args),
        Command::Extender(args) => spillway::extender::run(args),
        Command::Explain(args) => spillway::explain::run(args),
        Command::Aci {
            action: AciCommand::Render(args),
        } => spillway::aci::render::run(&args),
        Command::AciEmulator(args) => spillway::aci::emulator::cli::run(&args),
        Command::IothubEmulator(args) => spillway::edge::emulator::cli::run(&args),
        Command::Version => spillway::cli::version(),
        Command::Completion { shell } => {
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            spillway::cli::completion(shell, &mut Cli::command())
        }
    }
}
