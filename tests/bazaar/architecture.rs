//! The seams that make extraction possible, checked from `cargo metadata` and `cargo tree`:
//! modules depend on each other's contract crates only, and contract crates carry no
//! diesel or actix. Also two rules of the repositories that a copied pattern would break.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

struct Package {
    name: String,
    /// `catalog` for everything under `modules/catalog/`; `None` outside `modules/`.
    module: Option<String>,
    /// (dependency name, kind, features, default-features)
    dependencies: Vec<(String, Option<String>, Vec<String>)>,
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn workspace() -> Vec<Package> {
    let output = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");
    let root = metadata["workspace_root"]
        .as_str()
        .expect("root")
        .to_owned();
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            let manifest = package["manifest_path"].as_str().unwrap_or_default();
            let relative = manifest
                .strip_prefix(&root)
                .unwrap_or(manifest)
                .trim_start_matches('/');
            let module = relative
                .strip_prefix("modules/")
                .and_then(|rest| rest.split('/').next())
                .map(str::to_owned);
            let dependencies = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|dep| {
                    let features = dep["features"]
                        .as_array()
                        .map(|list| {
                            list.iter()
                                .filter_map(|f| f.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        dep["name"].as_str().unwrap_or_default().to_owned(),
                        dep["kind"].as_str().map(str::to_owned),
                        features,
                    )
                })
                .collect();
            Package {
                name: package["name"].as_str().unwrap_or_default().to_owned(),
                module,
                dependencies,
            }
        })
        .collect()
}

#[test]
fn modules_depend_on_other_modules_contracts_only() {
    let packages = workspace();
    let module_of: BTreeMap<&str, &str> = packages
        .iter()
        .filter_map(|p| p.module.as_deref().map(|m| (p.name.as_str(), m)))
        .collect();
    assert!(module_of.contains_key("catalog") && module_of.contains_key("catalog-contract"));
    let mut violations = Vec::new();
    for package in packages.iter().filter(|p| p.module.is_some()) {
        let own = package.module.as_deref().unwrap_or_default();
        for (dependency, _, _) in &package.dependencies {
            let Some(other) = module_of.get(dependency.as_str()) else {
                continue;
            };
            if *other != own && !dependency.ends_with("-contract") {
                violations.push(format!(
                    "{} depends on {dependency}, the implementation of {other}",
                    package.name
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn contract_crates_use_the_chassis_without_server_features() {
    for package in workspace().iter().filter(|p| p.name.ends_with("-contract")) {
        for (dependency, kind, features) in &package.dependencies {
            if kind.is_some() {
                continue; // dev- and build-dependencies do not reach users of the contract
            }
            assert!(
                !["diesel", "diesel_migrations", "actix-web", "r2d2"]
                    .contains(&dependency.as_str()),
                "{} depends on {dependency}",
                package.name
            );
            if dependency == "chassis" {
                assert!(
                    features.is_empty(),
                    "{} turns on chassis features {features:?}",
                    package.name
                );
            }
        }
    }
}

#[test]
fn no_contract_crate_pulls_diesel_or_actix_transitively() {
    let contracts: Vec<String> = workspace()
        .into_iter()
        .filter(|p| p.name.ends_with("-contract"))
        .map(|p| p.name)
        .collect();
    assert!(!contracts.is_empty());
    for contract in contracts {
        let output = cargo()
            .args([
                "tree",
                "--offline",
                "-p",
                &contract,
                "-e",
                "normal",
                "--prefix",
                "none",
                "--format",
                "{p}",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo tree runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let tree = String::from_utf8_lossy(&output.stdout);
        for forbidden in ["diesel ", "actix-web ", "libsqlite3-sys ", "pq-sys "] {
            assert!(
                !tree.lines().any(|line| line.starts_with(forbidden)),
                "{contract} pulls in {forbidden}through its dependencies"
            );
        }
    }
}

/// Every `.rs` file under `dir`, tests included (they are not on the hot path, but a
/// copied pattern should be the right one).
fn rust_files(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Diesel's `.first()` adds `LIMIT ?`, and SQLite plans a `LIMIT` with the value bound to
/// it, so it re-parses such a statement every time it is bound again: lookups by key use
/// `.get_result()` (the key is unique; it never returns more than one row).
#[test]
fn repositories_look_rows_up_without_a_bound_limit() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("modules"), &mut files);
    rust_files(&root.join("chassis/src"), &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    let offenders: Vec<String> = files
        .iter()
        .filter(|path| {
            std::fs::read_to_string(path)
                .is_ok_and(|text| text.contains(".first(conn)") || text.contains(".first::<"))
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "use .get_result(conn) for lookups by key in {offenders:?}"
    );
}

/// Repository functions run their statements on the backend's own connection, inside
/// `chassis::per_backend!`: through diesel's `MultiConnection` every execution renders the
/// statement's SQL again. A function that only combines other repository functions runs
/// no statement itself and is left alone.
#[test]
fn repository_statements_run_on_the_backend_connection() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("modules"), &mut files);
    let repositories: Vec<_> = files
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|name| name == "repository.rs"))
        .collect();
    assert!(
        repositories.len() >= 4,
        "found only {} repositories",
        repositories.len()
    );
    let runs_a_statement = |body: &str| {
        [
            ".execute(conn",
            ".load(conn",
            ".get_result(conn",
            ".load::<",
            ".get_result::<",
        ]
        .iter()
        .any(|call| body.contains(call))
    };
    let mut offenders = Vec::new();
    for path in &repositories {
        let text = std::fs::read_to_string(path).expect("readable");
        // Top-level functions: from each `fn` at the start of a line to the next.
        let mut starts: Vec<usize> = text
            .match_indices("\nfn ")
            .chain(text.match_indices("\npub(crate) fn "))
            .chain(text.match_indices("\npub fn "))
            .map(|(at, _)| at)
            .collect();
        starts.sort_unstable();
        for (index, start) in starts.iter().enumerate() {
            let end = starts.get(index + 1).copied().unwrap_or(text.len());
            let body = &text[*start..end];
            if body.contains("conn: &mut DbConnection")
                && runs_a_statement(body)
                && !body.contains("per_backend!")
            {
                let name = body
                    .trim_start()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                offenders.push(format!("{}: {name}", path.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "run these statements inside per_backend!(conn, |conn| …): {offenders:#?}"
    );
}
