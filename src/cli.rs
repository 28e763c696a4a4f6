use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{compose, serve};
use crate::config::Config;

/// Bazaar: an e-commerce backend, one binary hosting catalog, orders, billing and
/// notifications.
#[derive(Debug, Parser)]
#[command(name = "bazaar", version, about)]
struct Cli {
    /// TOML config file (defaults < file < BAZAAR__… environment variables).
    #[arg(long, short, global = true, env = "BAZAAR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate the local modules' databases and serve the HTTP API.
    Serve,
    /// Apply pending migrations of the local modules, then exit.
    Migrate,
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Fill an empty catalog with sample products.
    Demo,
    /// Each local module's outbox: events not yet published, and the age of the oldest.
    Outbox,
    /// Events that consumers could not handle: list them, or replay them.
    DeadLetters {
        #[command(subcommand)]
        action: Option<DeadLetterAction>,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// List dead letters not replayed yet (the default).
    List {
        /// Include the ones already replayed.
        #[arg(long)]
        all: bool,
    },
    /// Hand dead letters to their consumer's handler again, once each.
    Replay {
        /// The dead letter to replay.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        id: Option<uuid::Uuid>,
        /// Every dead letter not replayed yet.
        #[arg(long)]
        all: bool,
    },
}

/// Runs the CLI; the exit code tells the shell how it went.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("bazaar: {error}");
            return ExitCode::from(2);
        }
    };
    if let Command::Config = cli.command {
        return match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("bazaar: cannot print the config: {error}");
                ExitCode::FAILURE
            }
        };
    }
    // Kept until the command ends, so that its last spans are exported.
    let _telemetry = match chassis::telemetry::init(
        &config.log,
        &config.telemetry,
        &config.service_identity(),
    ) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("bazaar: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = actix_web::rt::System::new().block_on(execute(cli.command, config));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bazaar: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let listener = TcpListener::bind(&config.server.bind).map_err(|error| {
                anyhow::anyhow!(
                    "cannot listen on server.bind = {}: {error}",
                    config.server.bind
                )
            })?;
            serve(config, listener).await
        }
        Command::Migrate => {
            let composition = compose(&config).await?;
            for (module, versions) in composition.migrate().await? {
                if versions.is_empty() {
                    println!("{module}: up to date");
                } else {
                    println!("{module}: applied {}", versions.join(", "));
                }
            }
            Ok(())
        }
        Command::Demo => demo(config).await,
        Command::Outbox => outbox(config).await,
        Command::DeadLetters { action } => {
            dead_letters(
                config,
                action.unwrap_or(DeadLetterAction::List { all: false }),
            )
            .await
        }
        Command::Config => Ok(()),
    }
}

async fn outbox(config: Config) -> anyhow::Result<()> {
    let composition = compose(&config).await?;
    composition.migrate().await?;
    println!("{:<16} {:>8}  oldest pending", "module", "pending");
    for module in &composition.local {
        let stats = chassis::events::outbox::stats(module.database()).await?;
        let age = stats
            .oldest
            .map(|oldest| {
                let age = (chrono::Utc::now() - oldest).num_seconds().max(0);
                format!(
                    "{age}s ago ({})",
                    oldest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
            .unwrap_or_else(|| "-".into());
        println!("{:<16} {:>8}  {age}", module.name(), stats.pending);
    }
    Ok(())
}

async fn dead_letters(config: Config, action: DeadLetterAction) -> anyhow::Result<()> {
    let composition = compose(&config).await?;
    composition.migrate().await?;
    match action {
        DeadLetterAction::List { all } => {
            let mut count = 0;
            for (module, letters) in composition.dead_letters() {
                for letter in letters.list(all).await? {
                    count += 1;
                    let replayed = letter
                        .replayed_at
                        .map(|at| {
                            format!(
                                " replayed {}",
                                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            )
                        })
                        .unwrap_or_default();
                    println!(
                        "{}  {module}/{}  {} key={} attempts={} failed {}{replayed}\n    {}",
                        letter.id,
                        letter.consumer,
                        letter.event.event_type,
                        letter.event.key,
                        letter.attempts,
                        letter
                            .failed_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        letter.error
                    );
                }
            }
            if count == 0 {
                println!("no dead letters");
            }
        }
        DeadLetterAction::Replay { id, all: _ } => {
            let handlers = composition.handlers(&config);
            let mut total = chassis::events::dead_letters::ReplayReport::default();
            for (_, letters) in composition.dead_letters() {
                let report = letters.replay(&handlers, id).await?;
                total.replayed += report.replayed;
                total.failed_again += report.failed_again;
                total.skipped += report.skipped;
            }
            if let Some(id) = id
                && total.replayed + total.failed_again + total.skipped == 0
            {
                anyhow::bail!(
                    "no dead letter {id} waits for a replay (see `bazaar dead-letters list --all`)"
                );
            }
            println!(
                "replayed {}, failed again {}, skipped {} (no consumer for them in this process)",
                total.replayed, total.failed_again, total.skipped
            );
            if total.failed_again > 0 {
                anyhow::bail!(
                    "{} dead letters failed again; see `bazaar dead-letters`",
                    total.failed_again
                );
            }
        }
    }
    Ok(())
}

#[cfg(feature = "catalog")]
async fn demo(config: Config) -> anyhow::Result<()> {
    let composition = compose(&config).await?;
    composition.migrate().await?;
    let Some(module) = composition.ports.get::<catalog::CatalogModule>() else {
        anyhow::bail!(
            "the catalog is not local here (modules.catalog.mode); run `bazaar demo` where it is"
        );
    };
    match crate::demo::fill(module.service(), &config.shop.currency).await? {
        0 => println!("the catalog already has products; nothing added"),
        added => println!(
            "added {added} sample products; try: curl http://{}/catalog/products",
            config.server.bind
        ),
    }
    Ok(())
}

#[cfg(not(feature = "catalog"))]
async fn demo(_config: Config) -> anyhow::Result<()> {
    anyhow::bail!("this binary was built without the catalog module (--features catalog)")
}
