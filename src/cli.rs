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
    chassis::telemetry::init(&config.log);
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
        Command::Config => Ok(()),
    }
}

#[cfg(feature = "catalog")]
async fn demo(config: Config) -> anyhow::Result<()> {
    let composition = compose(&config).await?;
    composition.migrate().await?;
    let Some(module) = composition.catalog_module.as_ref() else {
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
