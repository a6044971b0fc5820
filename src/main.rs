//! The `tidings` server binary: `tidings serve` (the default), `tidings migrate`, and
//! the operator's `tidings user …` and `tidings session …` commands.

mod admin;
mod config;
mod http_server;
mod serve;
mod telemetry;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "tidings",
    version,
    about = "Self-hosted real-time messaging over MQTT"
)]
struct Cli {
    /// TOML configuration file; TIDINGS_* environment variables override it.
    #[arg(long, short, global = true, env = "TIDINGS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: MQTT broker, persistence worker and HTTP API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage accounts.
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Manage sessions (device logins).
    #[command(subcommand)]
    Session(admin::SessionCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    telemetry::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve::run(config).await,
            Command::Migrate => {
                serve::open_store(&config).await?;
                tracing::info!("migrations are up to date");
                Ok(())
            }
            Command::User(command) => admin::user(serve::open_store(&config).await?, command).await,
            Command::Session(command) => {
                admin::session(serve::open_store(&config).await?, command).await
            }
        }
    })
}
