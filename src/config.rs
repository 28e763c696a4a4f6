use std::path::{Path, PathBuf};

use chassis::config::{
    AuthSettings, BusKind, BusSettings, ConfigError, DatabaseSettings, EventsSettings, LogSettings,
    ModuleSettings, Placement, ServerSettings, ShopSettings, TelemetrySettings,
};
use chassis::remote::RemoteSettings;
use serde::{Deserialize, Serialize};

use crate::app::MODULES;

/// The whole configuration of one Bazaar process (spec §6), read once at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerSettings,
    /// Where SQLite files and other local data live.
    pub data_dir: PathBuf,
    pub shop: ShopSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub database: DatabaseSettings,
    pub bus: BusSettings,
    pub events: EventsSettings,
    pub remote: RemoteSettings,
    pub modules: ModulesConfig,
    pub catalog: catalog_contract::CatalogSettings,
    pub orders: orders_contract::OrdersSettings,
    pub billing: billing_contract::BillingSettings,
    pub notifications: notifications_contract::NotificationsSettings,
}

/// `modules.<name>`, one section per business module.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModulesConfig {
    pub catalog: ModuleSettings,
    pub orders: ModuleSettings,
    pub billing: ModuleSettings,
    pub notifications: ModuleSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerSettings::default(),
            data_dir: PathBuf::from("./data"),
            shop: ShopSettings::default(),
            auth: AuthSettings::default(),
            log: LogSettings::default(),
            telemetry: TelemetrySettings::default(),
            database: DatabaseSettings::default(),
            bus: BusSettings::default(),
            events: EventsSettings::default(),
            remote: RemoteSettings::default(),
            modules: ModulesConfig::default(),
            catalog: catalog_contract::CatalogSettings::default(),
            orders: orders_contract::OrdersSettings::default(),
            billing: billing_contract::BillingSettings::default(),
            notifications: notifications_contract::NotificationsSettings::default(),
        }
    }
}

impl Config {
    /// Loads defaults < `file` < `BAZAAR__…` environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let config: Config = chassis::config::load(file)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.shop.validate()?;
        self.auth.validate()?;
        self.bus.validate()?;
        self.events.validate()?;
        chassis::telemetry::validate(&self.log)?;
        self.telemetry.validate()?;
        match self.bus.kind {
            BusKind::InProcess => {}
            BusKind::Nats if cfg!(feature = "nats") => {}
            BusKind::Nats => {
                return Err(ConfigError::key(
                    "bus.kind",
                    "\"nats\" needs a binary built with the nats feature (on by default)",
                ));
            }
            BusKind::Rabbitmq => {
                return Err(ConfigError::key(
                    "bus.kind",
                    "\"rabbitmq\" is not available in this version: use \"in_process\" or \"nats\"",
                ));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::key("data_dir", "must not be empty"));
        }
        for module in &MODULES {
            self.placement(module.name)?;
        }
        self.check_not_remote_to_itself()?;
        self.catalog.validate().map_err(ConfigError::Invalid)?;
        self.orders.validate().map_err(ConfigError::Invalid)?;
        self.billing.validate().map_err(ConfigError::Invalid)?;
        self.notifications
            .validate()
            .map_err(ConfigError::Invalid)?;
        self.postgres_pools()?;
        if self.remote.max_concurrency == 0 {
            return Err(ConfigError::key(
                "remote.max_concurrency",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The pool size of each local module on PostgreSQL, within `database.max_connections`
    /// for the whole process: a `modules.<name>.pool_size` is taken as set, and the rest of
    /// the budget is shared evenly by the modules without one (at least 2 each, so that a
    /// relay and a request can run at once). Sizes that exceed the budget are refused.
    pub(crate) fn postgres_pools(&self) -> Result<Vec<(&'static str, u32)>, ConfigError> {
        let on_postgres: Vec<&'static str> = MODULES
            .iter()
            .map(|module| module.name)
            .filter(|name| matches!(self.placement(name), Ok(Placement::Local)))
            .filter(|name| {
                self.module(name)
                    .database_url_or_default(name, &self.data_dir)
                    .is_postgres()
            })
            .collect();
        let budget = self.database.max_connections;
        let set: u32 = on_postgres
            .iter()
            .filter_map(|name| self.module(name).pool_size)
            .sum();
        let unset = on_postgres
            .iter()
            .filter(|name| self.module(name).pool_size.is_none())
            .count() as u32;
        let share = budget.saturating_sub(set).checked_div(unset).unwrap_or(0);
        if set + unset * share.max(2) > budget {
            let sizes: Vec<String> = on_postgres
                .iter()
                .map(|name| match self.module(name).pool_size {
                    Some(size) => format!("modules.{name}.pool_size = {size}"),
                    None => format!("{name}: 2 at least"),
                })
                .collect();
            return Err(ConfigError::key(
                "database.max_connections",
                format!(
                    "{budget} PostgreSQL connections for this process cannot hold its pools ({}); \
                     raise it, or lower the pool sizes",
                    sizes.join(", ")
                ),
            ));
        }
        Ok(on_postgres
            .into_iter()
            .map(|name| (name, self.module(name).pool_size.unwrap_or(share)))
            .collect())
    }

    pub(crate) fn module(&self, name: &str) -> &ModuleSettings {
        match name {
            "catalog" => &self.modules.catalog,
            "orders" => &self.modules.orders,
            "billing" => &self.modules.billing,
            _ => &self.modules.notifications,
        }
    }

    /// A remote module whose URL is this process's own listening address would call itself
    /// for ever; the usual slip is copying a monolith's config and flipping one mode.
    fn check_not_remote_to_itself(&self) -> Result<(), ConfigError> {
        let Some((bind_host, bind_port)) = self.server.bind.rsplit_once(':') else {
            return Ok(());
        };
        let bind_host = bind_host.trim_start_matches('[').trim_end_matches(']');
        let loopback = |host: &str| {
            host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
        };
        for module in &MODULES {
            let Ok(Placement::Remote(url)) = self.placement(module.name) else {
                continue;
            };
            let host = url.host_str().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let same_port = url
                .port_or_known_default()
                .is_some_and(|port| port.to_string() == bind_port);
            let same_host = host == bind_host || (loopback(host) && loopback(bind_host));
            if same_port && same_host {
                return Err(ConfigError::key(
                    format!("modules.{}.url", module.name),
                    format!(
                        "{url} is this process's own address (server.bind = {}): a module cannot be remote to \
                         the process itself; point it at the process that hosts {}, or set modules.{}.mode = \"local\"",
                        self.server.bind, module.name, module.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Who this process is in exported traces: its local modules, and whether it is the
    /// monolith (every module local) or one part of a split.
    pub fn service_identity(&self) -> chassis::telemetry::ServiceIdentity {
        let placements: Vec<(&str, Option<Placement>)> = MODULES
            .iter()
            .map(|module| (module.name, self.placement(module.name).ok()))
            .collect();
        let local: Vec<&str> = placements
            .iter()
            .filter(|(_, placement)| *placement == Some(Placement::Local))
            .map(|(name, _)| *name)
            .collect();
        chassis::telemetry::ServiceIdentity {
            name: if local.is_empty() {
                "bazaar".to_owned()
            } else {
                local.join("+")
            },
            mode: if local.len() == placements.len() {
                "monolith"
            } else {
                "split"
            },
        }
    }

    /// Where a module runs for this process.
    pub fn placement(&self, name: &str) -> Result<Placement, ConfigError> {
        let compiled_in = MODULES
            .iter()
            .any(|module| module.name == name && module.local.is_some());
        self.module(name).placement(name, compiled_in)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let config: Config = chassis::config::load_with_env(None, Some(env))?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn the_defaults_are_the_embedded_monolith() {
        let config = load(&[]).expect("defaults are valid");
        assert_eq!(config.server.bind, "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.shop.currency, "EUR");
        assert_eq!(
            config.placement("catalog").expect("valid"),
            Placement::Local
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let error = load(&[("BAZAAR__MODULES__CATALG__MODE", "local")]).expect_err("typo");
        assert!(error.to_string().contains("catalg"), "{error}");
    }

    #[test]
    fn remote_module_without_url_names_the_key() {
        let error = load(&[("BAZAAR__MODULES__CATALOG__MODE", "remote")]).expect_err("needs url");
        assert!(error.to_string().contains("modules.catalog.url"), "{error}");
    }

    #[test]
    fn module_sections_are_validated_naming_the_key() {
        let error =
            load(&[("BAZAAR__ORDERS__SAGA_DEADLINE", "1s")]).expect_err("shorter than sync_wait");
        assert!(
            error.to_string().contains("orders.saga_deadline"),
            "{error}"
        );
        let error = load(&[("BAZAAR__BILLING__GATEWAY", "stripe")]).expect_err("unknown gateway");
        assert!(error.to_string().contains("billing.gateway"), "{error}");
        let error = load(&[("BAZAAR__CATALOG__LOW_STOCK_THRESHOLD", "-1")]).expect_err("negative");
        assert!(
            error.to_string().contains("catalog.low_stock_threshold"),
            "{error}"
        );
    }

    #[test]
    fn postgres_pools_share_the_process_budget() {
        let url = "postgres://postgres@127.0.0.1:5432/shop";
        let config = load(&[
            ("BAZAAR__MODULES__CATALOG__DATABASE_URL", url),
            ("BAZAAR__MODULES__ORDERS__DATABASE_URL", url),
            ("BAZAAR__MODULES__BILLING__DATABASE_URL", url),
            ("BAZAAR__MODULES__NOTIFICATIONS__DATABASE_URL", url),
        ])
        .expect("valid");
        let pools = config.postgres_pools().expect("fits");
        assert_eq!(pools.len(), 4);
        assert!(pools.iter().all(|(_, size)| *size == 5), "{pools:?}");
        let total: u32 = pools.iter().map(|(_, size)| size).sum();
        assert!(total <= config.database.max_connections);
        assert!(
            4 * total <= 100 - 3,
            "four instances fit PostgreSQL's default"
        );

        let config = load(&[
            ("BAZAAR__MODULES__CATALOG__DATABASE_URL", url),
            ("BAZAAR__MODULES__CATALOG__POOL_SIZE", "12"),
            ("BAZAAR__MODULES__ORDERS__DATABASE_URL", url),
        ])
        .expect("valid");
        let pools = config.postgres_pools().expect("fits");
        assert_eq!(pools, vec![("catalog", 12), ("orders", 8)]);

        let error = load(&[
            ("BAZAAR__MODULES__CATALOG__DATABASE_URL", url),
            ("BAZAAR__MODULES__CATALOG__POOL_SIZE", "19"),
            ("BAZAAR__MODULES__ORDERS__DATABASE_URL", url),
        ])
        .expect_err("over the budget");
        assert!(
            error.to_string().contains("database.max_connections")
                && error.to_string().contains("modules.catalog.pool_size = 19"),
            "{error}"
        );
    }

    #[test]
    fn the_bus_is_in_process_or_nats_with_a_url() {
        let config = load(&[
            ("BAZAAR__BUS__KIND", "nats"),
            ("BAZAAR__BUS__URL", "nats://127.0.0.1:4222"),
            ("BAZAAR__BUS__PARTITIONS", "8"),
        ])
        .expect("nats with a url is valid");
        let nats = config.bus.nats().expect("nats settings");
        assert_eq!(nats.partitions, 8);
        assert_eq!(nats.stream, "BAZAAR_EVENTS");
        let error = load(&[("BAZAAR__BUS__KIND", "nats")]).expect_err("needs a url");
        assert!(error.to_string().contains("bus.url"), "{error}");
        let error = load(&[
            ("BAZAAR__BUS__KIND", "nats"),
            ("BAZAAR__BUS__URL", "nats://127.0.0.1:4222"),
            ("BAZAAR__BUS__PARTITIONS", "0"),
        ])
        .expect_err("no partition");
        assert!(error.to_string().contains("bus.partitions"), "{error}");
        let error = load(&[
            ("BAZAAR__BUS__KIND", "rabbitmq"),
            ("BAZAAR__BUS__URL", "amqp://127.0.0.1:5672"),
        ])
        .expect_err("not in this version");
        assert!(error.to_string().contains("bus.kind"), "{error}");
    }

    #[test]
    fn a_bad_mode_names_the_key() {
        let error = load(&[("BAZAAR__MODULES__CATALOG__MODE", "elsewhere")]).expect_err("bad mode");
        assert!(
            error.to_string().contains("modules.catalog.mode"),
            "{error}"
        );
    }
}
