use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use bazaar::Config;

pub(crate) const ADMIN_TOKEN: &str = "cli-admin";
pub(crate) const SERVICE_TOKEN: &str = "e2e-service";

/// A config for a process whose data lives in `data_dir`.
pub(crate) fn config(data_dir: &Path) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    config.auth.admin_token = Some(chassis::secret::Secret::new(ADMIN_TOKEN));
    config.auth.service_token = Some(chassis::secret::Secret::new(SERVICE_TOKEN));
    config.server.shutdown_timeout = Duration::from_secs(2);
    config.server.workers = Some(1);
    config
}

/// Serves `config` in this test process on a free port; answers the base URL.
pub(crate) async fn spawn(config: Config) -> String {
    spawn_stoppable(config).await.0
}

/// Like [`spawn`], with a handle to stop the server.
pub(crate) async fn spawn_stoppable(config: Config) -> (String, actix_web::dev::ServerHandle) {
    spawn_on(config, listener()).await
}

/// A listener on a free loopback port, for a server whose URL its peers need before it
/// starts.
pub(crate) fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("binds a free port")
}

/// Serves `config` on `listener`; answers the base URL and a handle to stop the server.
pub(crate) async fn spawn_on(
    config: Config,
    listener: TcpListener,
) -> (String, actix_web::dev::ServerHandle) {
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let server = bazaar::start(config, listener).await.expect("starts");
    let handle = server.handle();
    tokio::spawn(server);
    wait_until_live(&base).await;
    (base, handle)
}

/// A PostgreSQL database per module for a `bazaar serve` process, dropped with it.
pub(crate) struct PostgresDatabases {
    _databases: Vec<chassis::testing::TestDatabase>,
    env: Vec<(String, String)>,
}

impl PostgresDatabases {
    /// One database for each of `modules` (`"CATALOG"`, …), or `None` (after printing why)
    /// outside CI without PostgreSQL.
    pub(crate) fn new(modules: &[&str]) -> Option<Self> {
        let mut databases = Vec::new();
        let mut env = Vec::new();
        for module in modules {
            let db = chassis::testing::TestDatabase::postgres()?;
            env.push((
                format!("BAZAAR__MODULES__{module}__DATABASE_URL"),
                db.url().expose().to_owned(),
            ));
            databases.push(db);
        }
        Some(Self {
            _databases: databases,
            env,
        })
    }

    /// The environment that points the process at them.
    pub(crate) fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect()
    }
}

/// An HTTP client for the tests.
pub(crate) fn http() -> reqwest::Client {
    chassis::remote::install_tls_provider();
    reqwest::Client::new()
}

/// GETs `url` with the admin token and answers its JSON body.
pub(crate) async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json")
}

pub(crate) async fn wait_until_live(base: &str) {
    let client = http();
    for _ in 0..200 {
        if let Ok(response) = client.get(format!("{base}/health/live")).send().await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{base} did not come up");
}
