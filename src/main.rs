//! The `tidings` server binary: `tidings serve` (the default), `tidings migrate`,
//! `tidings user create`.

mod config;
mod http_server;
mod serve;
mod telemetry;

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
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
    User(UserCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account (for bootstrapping; users normally register over HTTP).
    Create {
        #[arg(long)]
        username: String,
        /// The password; omit it to read one line from standard input instead.
        #[arg(long)]
        password: Option<String>,
    },
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
            Command::User(UserCommand::Create { username, password }) => {
                let password = match password {
                    Some(p) => p,
                    None => {
                        let mut line = String::new();
                        std::io::stdin().read_to_string(&mut line)?;
                        line.trim_end_matches(['\r', '\n']).to_owned()
                    }
                };
                if password.is_empty() {
                    bail!("no password given");
                }
                let store = serve::open_store(&config).await?;
                let hashing = tidings_rest::hashing::HashPool::new(1);
                let user = tidings_rest::routes::auth::create_account(
                    &store, &hashing, &username, &password, None,
                )
                .await
                .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))?;
                println!("{}", user.id);
                Ok(())
            }
        }
    })
}
