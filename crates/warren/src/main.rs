//! `warren`: one private AI agent per user. Each verb lives in `commands/`.

use clap::{Parser, Subcommand};

mod admin_api;
mod commands;
mod settings;

#[derive(Parser)]
#[command(
    name = "warren",
    version,
    about = "One private AI agent per user, behind one authenticating gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(commands::serve::Args),
    /// Print a signed URL for a user.
    Token(commands::token::Args),
    /// Chat with a user's agent from the terminal, riding out gateway restarts.
    Chat(commands::chat::Args),
    /// Run the built-in echo agent (the default workload of every sandbox).
    EchoAgent(commands::echo_agent::Args),
    /// Put a tenant's workspace in the store now.
    Sync(commands::sync::Args),
    /// Put every tenant's workspace in the store now, and apply retention.
    Sweep(commands::sweep::Args),
    /// List a tenant's snapshots.
    Snapshots(commands::snapshots::Args),
    /// Restore a tenant's workspace to a past snapshot.
    Restore(commands::restore::Args),
    /// Show a tenant's tier, or put it in another.
    Tier(commands::tier::Args),
    /// List every tenant the running gateway knows, with its sandbox's state.
    Tenants(commands::tenants::Args),
    /// Show one tenant in full: state, profile, activity, sync, resources, events.
    Tenant(commands::tenant::Args),
    /// Show the most recent sandbox events, of one tenant or all.
    Events(commands::events::Args),
    /// Stop a tenant's sandbox now (synced first).
    Stop(commands::stop::Args),
    /// Stop a tenant's sandbox and start it again.
    Restart(commands::restart::Args),
    /// Show the gateway's background workers and their state.
    Workers(commands::workers::Args),
    /// Report (or with --apply remove) inactive tenants' workspaces and snapshots.
    Cleanup(commands::cleanup::Args),
    /// A scalability audit of the running deployment: capacity, findings, costs.
    Audit(commands::audit::Args),
    /// Copy the state store (tier assignments, records, events) while the gateway runs.
    BackupState(commands::backup_state::Args),
    /// Bring a machine back from the store: every tenant's newest snapshot, and the state
    /// store from a backup.
    Recover(commands::recover::Args),
    /// Inside a pooled sandbox: wait for a claim, then become the agent (internal).
    #[command(hide = true)]
    SandboxWait,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Token(args) => commands::token::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::EchoAgent(args) => commands::echo_agent::run(args),
        Command::Sync(args) => commands::sync::run(args),
        Command::Sweep(args) => commands::sweep::run(args),
        Command::Snapshots(args) => commands::snapshots::run(args),
        Command::Restore(args) => commands::restore::run(args),
        Command::Tier(args) => commands::tier::run(args),
        Command::Tenants(args) => commands::tenants::run(args),
        Command::Tenant(args) => commands::tenant::run(args),
        Command::Events(args) => commands::events::run(args),
        Command::Stop(args) => commands::stop::run(args),
        Command::Restart(args) => commands::restart::run(args),
        Command::Workers(args) => commands::workers::run(args),
        Command::Cleanup(args) => commands::cleanup::run(args),
        Command::Audit(args) => commands::audit::run(args),
        Command::BackupState(args) => commands::backup_state::run(args),
        Command::Recover(args) => commands::recover::run(args),
        Command::SandboxWait => Err(anyhow::Error::new(
            warren_runtime::process::pool::await_claim(),
        )
        .context("a pooled sandbox could not become the agent")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
