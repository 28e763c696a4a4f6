//! The deployment files in `deploy/` agree with each other and with the config: the split
//! services' TOML files, the compose files (which cannot be run where Bazaar is developed)
//! and the gateway. Read, not run: the split end-to-end test (`split.rs`) runs the same
//! TOML files and gateway through `deploy/split/run`.

use std::collections::HashMap;
use std::path::Path;

use chassis::config::Placement;

const MODULES: [&str; 4] = ["catalog", "orders", "billing", "notifications"];

fn deploy() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy().join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn compose(path: &str) -> yaml_serde::Value {
    let mut value: yaml_serde::Value =
        yaml_serde::from_str(&read(path)).unwrap_or_else(|error| panic!("{path}: {error}"));
    value.apply_merge().expect("merge keys resolve");
    value
}

/// `${NAME:-default}` becomes `default`, `${NAME:?message}` a sample value, as the compose
/// engine would with the variable unset (the `?` ones set).
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed") + start;
        let inner = &rest[start + 2..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        } else {
            out.push_str("sample-secret");
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn environment(service: &yaml_serde::Value) -> HashMap<String, String> {
    service["environment"]
        .as_mapping()
        .expect("environment is a mapping")
        .iter()
        .map(|(key, value)| {
            let value = match value {
                yaml_serde::Value::String(text) => text.clone(),
                other => yaml_serde::to_string(other)
                    .expect("scalar")
                    .trim()
                    .to_owned(),
            };
            (key.as_str().expect("key").to_owned(), interpolate(&value))
        })
        .collect()
}

/// What the gateway's upstreams file says: service name → `host:port`.
fn upstreams(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("upstream ")?;
            let (name, body) = rest.split_once('{')?;
            let server = body.trim().strip_prefix("server ")?.split(';').next()?;
            Some((name.trim().to_owned(), server.trim().to_owned()))
        })
        .collect()
}

fn database_url(config: &bazaar::Config, module: &str) -> String {
    let settings = match module {
        "catalog" => &config.modules.catalog,
        "orders" => &config.modules.orders,
        "billing" => &config.modules.billing,
        _ => &config.modules.notifications,
    };
    settings
        .database_url
        .as_ref()
        .map(|url| url.expose().to_owned())
        .unwrap_or_default()
}

#[test]
fn each_split_service_file_hosts_its_module_and_reaches_the_others_where_run_starts_them() {
    // deploy/split/run's default ports.
    let script = read("split/run");
    let ports_line = script
        .lines()
        .find(|line| line.contains("BAZAAR_SPLIT_PORTS:-"))
        .expect("the default ports");
    let defaults = ports_line
        .split("BAZAAR_SPLIT_PORTS:-")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("a default");
    let ports: Vec<&str> = defaults.split_whitespace().collect();
    let port_of = |name: &str| {
        let index = [
            "gateway",
            "catalog",
            "orders",
            "billing",
            "notifications",
            "nats",
        ]
        .iter()
        .position(|candidate| *candidate == name)
        .expect("known");
        ports[index]
    };
    for module in MODULES {
        let file = deploy().join(format!("split/{module}.toml"));
        let config: bazaar::Config =
            chassis::config::load_with_env(Some(&file), Some(HashMap::new()))
                .unwrap_or_else(|error| panic!("{module}.toml: {error}"));
        config
            .validate()
            .unwrap_or_else(|error| panic!("{module}.toml: {error}"));
        assert_eq!(
            config.placement(module).expect("valid"),
            Placement::Local,
            "{module}"
        );
        assert_eq!(config.server.bind, format!("127.0.0.1:{}", port_of(module)));
        assert_eq!(config.bus.kind, chassis::config::BusKind::Nats, "{module}");
        let bus = config
            .bus
            .url
            .as_ref()
            .expect("bus.url")
            .expose()
            .to_owned();
        assert_eq!(bus, format!("nats://127.0.0.1:{}", port_of("nats")));
        for other in MODULES.iter().filter(|other| **other != module) {
            if let Placement::Remote(url) = config.placement(other).expect("valid") {
                assert_eq!(
                    url.as_str(),
                    format!("http://127.0.0.1:{}/", port_of(other)),
                    "{module}.toml reaches {other} where deploy/split/run starts it"
                );
            }
        }
    }
}

#[test]
fn the_split_compose_file_builds_and_configures_each_service_as_the_split_files_say() {
    let compose = compose("compose.split.yaml");
    let services = &compose["services"];
    let gateway_upstreams = upstreams(&read("split/gateway/upstreams.conf"));
    let init = read("split/postgres-init.sql");
    for module in MODULES {
        let service = &services[module];
        assert_eq!(
            service["build"]["args"]["CARGO_BUILD_FLAGS"].as_str(),
            Some(format!("--no-default-features --features {module}").as_str()),
            "{module} is built with its module alone"
        );
        let env = environment(service);
        assert_eq!(env["BAZAAR_CONFIG"], format!("/etc/bazaar/{module}.toml"));
        let mounts: Vec<&str> = service["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .filter_map(|volume| volume.as_str())
            .collect();
        assert!(
            mounts
                .contains(&format!("./split/{module}.toml:/etc/bazaar/{module}.toml:ro").as_str()),
            "{module} reads deploy/split/{module}.toml: {mounts:?}"
        );
        // The file, with the compose file's variables on top, is a valid config that
        // hosts the module, on the compose network's names.
        let overrides: HashMap<String, String> = env
            .iter()
            .filter(|(key, _)| key.starts_with("BAZAAR__"))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let file = deploy().join(format!("split/{module}.toml"));
        let config: bazaar::Config = chassis::config::load_with_env(Some(&file), Some(overrides))
            .unwrap_or_else(|error| panic!("{module} in compose: {error}"));
        config
            .validate()
            .unwrap_or_else(|error| panic!("{module} in compose: {error}"));
        assert_eq!(config.placement(module).expect("valid"), Placement::Local);
        assert_eq!(config.server.bind, "0.0.0.0:8080", "{module}");
        assert_eq!(
            gateway_upstreams.get(module).map(String::as_str),
            Some(format!("{module}:8080").as_str()),
            "the gateway reaches {module} where compose runs it"
        );
        let bus = config
            .bus
            .url
            .as_ref()
            .expect("bus.url")
            .expose()
            .to_owned();
        assert!(bus.starts_with("nats://nats:"), "{module}: {bus}");
        let database = database_url(&config, module);
        assert!(
            database.starts_with("postgres://") && database.contains("@postgres:5432/"),
            "{module}: {database}"
        );
        let name = database.rsplit('/').next().expect("a database name");
        assert!(
            init.contains(&format!("CREATE DATABASE {name};")),
            "postgres-init.sql creates {name}"
        );
        for other in MODULES.iter().filter(|other| **other != module) {
            if let Placement::Remote(url) = config.placement(other).expect("valid") {
                assert_eq!(
                    url.as_str(),
                    format!("http://{other}:8080/"),
                    "{module} reaches {other} on the compose network"
                );
                assert!(
                    service["depends_on"][*other].is_mapping(),
                    "{module} starts after {other}"
                );
            }
        }
        assert!(
            service["healthcheck"]["test"]
                .as_sequence()
                .is_some_and(|test| test
                    .iter()
                    .any(|part| part.as_str() == Some("http://127.0.0.1:8080/health/ready"))),
            "{module} is healthy when ready"
        );
    }
    let gateway = &services["gateway"];
    let mounts: Vec<&str> = gateway["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|volume| volume.as_str())
        .collect();
    for file in ["nginx.conf", "upstreams.conf", "listen.conf"] {
        assert!(
            mounts.iter().any(
                |mount| mount.starts_with(&format!("./split/gateway/{file}:/etc/nginx/{file}"))
            ),
            "the gateway mounts {file}: {mounts:?}"
        );
    }
    assert_eq!(
        read("split/gateway/listen.conf").lines().last(),
        Some("listen 8080;")
    );
    assert!(
        gateway["ports"]
            .as_sequence()
            .is_some_and(|ports| ports.iter().any(|port| port.as_str() == Some("8080:8080"))),
        "the gateway is the one published port"
    );
    for module in MODULES {
        assert!(
            services[module]["ports"].is_null(),
            "{module} is reached through the gateway only"
        );
        assert!(
            gateway["depends_on"][module].is_mapping(),
            "the gateway starts after {module}"
        );
    }
    let gateway_conf = read("split/gateway/nginx.conf");
    assert!(
        gateway_conf.contains("include upstreams.conf;")
            && gateway_conf.contains("include listen.conf;")
    );
}

#[test]
fn the_monolith_compose_file_runs_the_default_build_healthy_on_8080() {
    let compose = compose("compose.yaml");
    let service = &compose["services"]["bazaar"];
    assert!(
        service["build"]["args"].is_null(),
        "the default build: every module"
    );
    assert_eq!(service["build"]["context"].as_str(), Some(".."));
    assert!(
        service["ports"]
            .as_sequence()
            .is_some_and(|ports| ports.iter().any(|port| port.as_str() == Some("8080:8080")))
    );
    let env = environment(service);
    let config: bazaar::Config = chassis::config::load_with_env(None, Some(env)).expect("valid");
    config.validate().expect("valid");
    for module in MODULES {
        assert_eq!(config.placement(module).expect("valid"), Placement::Local);
    }
    let dockerfile = std::fs::read_to_string(deploy().join("../Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains("BAZAAR__SERVER__BIND=0.0.0.0:8080") && dockerfile.contains("curl"),
        "the image listens on 8080 and has curl for the health checks"
    );
}
