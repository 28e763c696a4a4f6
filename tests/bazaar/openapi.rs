//! Bazaar's OpenAPI document, checked by the tools its users run against a live
//! `bazaar serve`: it validates (openapi-spec-validator), a client generated from it
//! (openapi-python-client) places an order, and schemathesis finds no answer the document
//! does not describe. The Python tools are pinned in `tests/openapi/requirements.txt` and
//! installed on first use by `.ci/python-tools`; where they cannot be installed these tests
//! fail in CI and skip elsewhere, saying why.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

use crate::cli::{Server, start_with};
use crate::orders::create_product;
use crate::support::{ADMIN_TOKEN, PostgresDatabases, SERVICE_TOKEN, http};

/// Every check schemathesis has for what an API answers and accepts, as the issue lists.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,negative_data_rejection,positive_data_acceptance";
/// Bounds the run: cases per operation, and a fixed seed so that CI runs the same cases
/// each time (a wider search: `BAZAAR_SCHEMATHESIS_SEED` and `..._EXAMPLES`).
const DEFAULT_EXAMPLES: &str = "40";
const DEFAULT_SEED: &str = "1";
/// No tool run may take longer than this, in seconds.
const TOOL_TIMEOUT: &str = "600";

fn openapi_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi")
}

/// The folder of the tools' executables, installed on first use by `.ci/python-tools`;
/// `None` (after printing why) when they cannot be had outside CI.
fn python_tools() -> Option<PathBuf> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let tools = INSTALLED.get_or_init(|| {
        if let Some(bin) = std::env::var_os("BAZAAR_TEST_PYTHON_TOOLS") {
            return Ok(PathBuf::from(bin));
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let installed = Command::new("bash")
            .arg(root.join(".ci/python-tools"))
            .output()
            .map_err(|error| format!("bash does not run: {error}"))?;
        if !installed.status.success() {
            return Err(format!(".ci/python-tools failed: {}", text(&installed)));
        }
        Ok(root.join("target/python-tools/bin"))
    });
    let message = match tools {
        Ok(bin) if bin.join("schemathesis").exists() => return Some(bin.clone()),
        Ok(bin) => format!("the OpenAPI tools are not in {}", bin.display()),
        Err(why) => why.clone(),
    };
    if std::env::var("CI").is_ok_and(|value| value == "true" || value == "1") {
        panic!("{message}: these tests must run in CI");
    }
    eprintln!("SKIPPED: {message}");
    None
}

/// Runs one of the tools, bounded by [`TOOL_TIMEOUT`], with the tools first on `PATH`, in
/// `dir` (schemathesis keeps a cache in its working folder).
fn run_tool(
    tools: &Path,
    dir: &Path,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let path = std::env::var("PATH").unwrap_or_default();
    Command::new("timeout")
        .current_dir(dir)
        .arg(TOOL_TIMEOUT)
        .arg(tools.join(program))
        .args(args)
        .env("PATH", format!("{}:{path}", tools.display()))
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|error| panic!("{program} does not run: {error}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn serve(dir: &Path, env: &[(&str, &str)]) -> (Server, String) {
    let mut all = vec![("BAZAAR__AUTH__SERVICE_TOKEN", SERVICE_TOKEN)];
    all.extend_from_slice(env);
    let server = start_with(dir, &all);
    let base = format!("http://127.0.0.1:{}", server.port);
    (server, base)
}

async fn document(base: &str) -> Value {
    http()
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON")
}

fn operations_in(doc: &Value) -> usize {
    doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, serde_json::Map::len))
        .sum()
}

#[tokio::test]
async fn every_cursor_and_currency_in_the_document_says_what_the_server_takes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, base) = serve(dir.path(), &[("BAZAAR__SHOP__CURRENCY", "CHF")]);
    let doc = document(&base).await;
    let mut cursors = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if parameter["name"] == "cursor" {
                    cursors += 1;
                    assert_eq!(
                        parameter["schema"]["pattern"],
                        chassis::page::CURSOR_PATTERN,
                        "{method} {path}"
                    );
                }
            }
        }
    }
    assert_eq!(cursors, 5, "every list takes a cursor");
    assert_eq!(
        doc["components"]["schemas"]["Currency"]["enum"],
        serde_json::json!(["CHF"]),
        "the shop's one currency"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_validates_and_a_generated_client_places_an_order() {
    let Some(tools) = python_tools() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, base) = serve(dir.path(), &[]);
    let document_path = dir.path().join("openapi.json");
    let body = serde_json::to_vec_pretty(&document(&base).await).expect("serializes");
    std::fs::write(&document_path, body).expect("writes the document");
    let document_arg = document_path.to_str().expect("UTF-8 path");

    let validated = run_tool(
        &tools,
        dir.path(),
        "openapi-spec-validator",
        &[document_arg],
        &[],
    );
    assert!(validated.status.success(), "{}", text(&validated));
    assert!(text(&validated).contains("OK"), "{}", text(&validated));

    let client_dir = dir.path().join("client");
    let generated = run_tool(
        &tools,
        dir.path(),
        "openapi-python-client",
        &[
            "generate",
            "--path",
            document_arg,
            "--output-path",
            client_dir
                .join("bazaar_client")
                .to_str()
                .expect("UTF-8 path"),
            "--meta",
            "none",
        ],
        &[],
    );
    let said = text(&generated);
    assert!(generated.status.success(), "{said}");
    assert!(!said.to_lowercase().contains("warning"), "{said}");

    let script = openapi_dir().join("use_client.py");
    let used = run_tool(
        &tools,
        dir.path(),
        "python",
        &[
            script.to_str().expect("UTF-8 path"),
            &base,
            ADMIN_TOKEN,
            "GENERATED-1",
        ],
        &[("PYTHONPATH", client_dir.to_str().expect("UTF-8 path"))],
    );
    assert!(used.status.success(), "{}", text(&used));
    let answer: Value =
        serde_json::from_slice(&used.stdout).unwrap_or_else(|_| panic!("{}", text(&used)));
    assert_eq!(answer["status"], "confirmed", "{answer}");
    assert_eq!(answer["total"], 3998, "two at 19.99");
    assert_eq!(answer["currency"], "EUR");
    assert_eq!(answer["available"], 3, "five on hand, two sold");

    // The server agrees with what the generated client parsed.
    let order: Value = http()
        .get(format!(
            "{base}/orders/{}",
            answer["order_id"].as_str().expect("id")
        ))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["lines"][0]["product_id"], answer["product_id"]);
}

/// Runs schemathesis against a server with every module on `env`'s databases.
async fn schemathesis_finds_nothing(env: &[(&str, &str)]) {
    let Some(tools) = python_tools() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, base) = serve(dir.path(), env);
    // POST /orders names these (tests/openapi/hooks.py): one per line an order may have.
    let client = http();
    let mut products = Vec::new();
    for n in 0..100 {
        let sku = format!("FUZZ-{n}");
        products.push(create_product(&client, &base, &sku, 1_000_000_000, 100).await);
    }
    let product_ids = serde_json::to_string(&products).expect("serializes");
    let examples =
        std::env::var("BAZAAR_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| DEFAULT_EXAMPLES.into());
    let seed = std::env::var("BAZAAR_SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    let config = openapi_dir().join("schemathesis.toml");
    let hooks_dir = openapi_dir();
    let schema = format!("{base}/openapi.json");
    let report = dir.path().join("report");
    let ran = run_tool(
        &tools,
        dir.path(),
        "schemathesis",
        &[
            "--config-file",
            config.to_str().expect("UTF-8 path"),
            "run",
            &schema,
            "--checks",
            CHECKS,
            "--max-examples",
            &examples,
            "--seed",
            &seed,
            "--workers",
            "1",
            "--report-dir",
            report.to_str().expect("UTF-8 path"),
        ],
        &[
            ("BAZAAR_ADMIN_TOKEN", ADMIN_TOKEN),
            ("BAZAAR_SERVICE_TOKEN", SERVICE_TOKEN),
            ("BAZAAR_PRODUCT_IDS", &product_ids),
            ("SCHEMATHESIS_HOOKS", "hooks"),
            ("PYTHONPATH", hooks_dir.to_str().expect("UTF-8 path")),
            ("NO_COLOR", "1"),
        ],
    );
    let said = text(&ran);
    assert!(ran.status.success(), "schemathesis found failures:\n{said}");
    // Every operation was reached, in every phase.
    let operations = operations_in(&document(&base).await);
    assert!(
        said.contains(&format!("Tested: {operations}")),
        "{operations} operations: {said}"
    );
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        assert!(said.contains(&format!("✅ {phase}")), "{phase}: {said}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_on_sqlite() {
    schemathesis_finds_nothing(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_on_postgresql() {
    let Some(databases) =
        PostgresDatabases::new(&["CATALOG", "ORDERS", "BILLING", "NOTIFICATIONS"])
    else {
        return;
    };
    schemathesis_finds_nothing(&databases.env()).await;
}
