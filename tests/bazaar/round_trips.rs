//! What one order costs each module's database, counted, not timed: the statements sent
//! (on PostgreSQL each is a round trip, `BEGIN` and `COMMIT` included) and the transactions
//! begun, from the whole of an order's work — the saga, the outbox relays, the consumers and
//! the e-mail. On PostgreSQL round trips are what an order costs (BENCHMARKS.md, "Orders on
//! PostgreSQL"), so these numbers are pinned: a change that adds one fails here, and is
//! either taken back or made knowingly, with the pin.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chassis::testing::metric_by_label;
use serde_json::Value;

use crate::orders::{create_product, order_body};
use crate::support;

/// Statements and transactions, by module.
type Work = BTreeMap<String, (u64, u64)>;

/// What each module's database has run so far, from `/metrics`.
async fn work(http: &reqwest::Client, base: &str) -> Work {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("answers")
        .text()
        .await
        .expect("text");
    let statements = metric_by_label(&text, "bazaar_db_statements_total", "module");
    let transactions = metric_by_label(&text, "bazaar_db_transactions_total", "module");
    statements
        .into_iter()
        .map(|(module, count)| {
            let begun = transactions.get(&module).copied().expect("both counters");
            // Counts, rendered as integers: exact in an f64 far beyond these tests.
            (module, (count as u64, begun as u64))
        })
        .collect()
}

/// The work done once nothing has changed for a while: every background step an order
/// set off (relays, consumers, the e-mail) has run.
async fn settled_work(http: &reqwest::Client, base: &str) -> Work {
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut last = work(http, base).await;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(500) {
        assert!(Instant::now() < give_up, "the databases never went quiet");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = work(http, base).await;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    last
}

/// Places `orders` orders one after the other, each left to finish all its work before
/// the next, and answers what each cost, by module.
async fn cost_of_orders(env: &[(&str, &str)], orders: usize) -> Vec<Work> {
    // `bazaar serve` in a process of its own, so that its `/metrics` count its databases
    // only; with no safety-net polls during the count: only what an order sets off runs.
    let quiet = [
        ("BAZAAR__EVENTS__POLL_INTERVAL", "1h"),
        ("BAZAAR__ORDERS__RECOVERY_INTERVAL", "1h"),
        ("BAZAAR__NOTIFICATIONS__POLL_INTERVAL", "1h"),
    ];
    let env: Vec<(&str, &str)> = quiet.iter().chain(env).copied().collect();
    let data = tempfile::tempdir().expect("tempdir");
    let server = tokio::task::block_in_place(|| crate::cli::start_with(data.path(), &env));
    let base = format!("http://127.0.0.1:{}", server.port);
    let http = support::http();
    let product = create_product(&http, &base, "ROUND-TRIPS", 1_000, 250).await;
    let mut costs = Vec::new();
    let mut before = settled_work(&http, &base).await;
    for _ in 0..orders {
        let order: Value = http
            .post(format!("{base}/orders"))
            .json(&order_body(&product, 1, "tok_visa"))
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("json");
        assert_eq!(order["status"], "confirmed", "{order}");
        let after = settled_work(&http, &base).await;
        costs.push(
            after
                .iter()
                .map(|(module, (statements, transactions))| {
                    let (statements_before, transactions_before) =
                        before.get(module).copied().unwrap_or_default();
                    (
                        module.clone(),
                        (
                            statements - statements_before,
                            transactions - transactions_before,
                        ),
                    )
                })
                .collect(),
        );
        before = after;
    }
    costs
}

/// Every order but the first costs the same, and what it costs is `expected`: (module,
/// statements, transactions). The first is the year's first invoice, which creates the
/// year's invoice counter: one statement more in billing.
fn assert_costs(costs: &[Work], expected: &[(&str, u64, u64)]) {
    let expected: Work = expected
        .iter()
        .map(|(module, statements, transactions)| {
            ((*module).to_owned(), (*statements, *transactions))
        })
        .collect();
    for (n, cost) in costs.iter().enumerate().skip(1) {
        assert_eq!(
            cost, &expected,
            "order {n}: (statements, transactions) by module, every order's: {costs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_costs_each_sqlite_database_a_pinned_number_of_statements_and_transactions() {
    let costs = cost_of_orders(&[], 4).await;
    // SQLite: the same statements as PostgreSQL's below, but for a transaction's new rows,
    // which SQLite inserts kind by kind (billing's payment and decision, invoice and outbox
    // row; notifications' delivery and inbox record) where PostgreSQL sends one statement.
    // Each write here is alone, so a transaction of its own; under load the writes waiting
    // for a database's writer share one `BEGIN` and `COMMIT`.
    assert_costs(
        &costs,
        &[
            ("billing", 19, 5),
            ("catalog", 9, 2),
            ("notifications", 9, 2),
            ("orders", 16, 5),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_costs_each_postgres_database_a_pinned_number_of_round_trips_and_transactions() {
    let Some(databases) =
        support::PostgresDatabases::new(&["CATALOG", "BILLING", "ORDERS", "NOTIFICATIONS"])
    else {
        return;
    };
    let costs = cost_of_orders(&databases.env(), 4).await;
    // Per order, each write alone (so a transaction of its own: under load the writes
    // waiting for a database's writer share one `BEGIN` and `COMMIT`). A transaction's
    // new rows go in with its last update, as parts of that one statement:
    // - catalog 8: the products' lookup; reserve: BEGIN, UPDATE product … RETURNING with
    //   the INSERT of the reservation (its lines in its row) as one statement, COMMIT;
    //   commit: BEGIN, UPDATE reservation … RETURNING its lines, UPDATE product, COMMIT.
    // - billing 16: the pending payment: BEGIN, INSERT payment and the charge's decision
    //   (which a void meets; left to the end of the transaction: one statement for the
    //   new rows of every kind), COMMIT; the capture: BEGIN, UPDATE counter … RETURNING,
    //   UPDATE payment … RETURNING with the INSERT of the invoice and the outbox row (one
    //   statement), COMMIT; the relay: BEGIN, SELECT rows (the statement takes the
    //   outbox's advisory lock first, held already: the relay publishes the outbox),
    //   COMMIT; BEGIN, UPDATE published, COMMIT; and a look for rows that waited behind
    //   the batch (BEGIN, SELECT rows, COMMIT). (A claim from the floor, once the outbox
    //   has a thousand rows, also looks for pending rows of its keys below it: not here.)
    // - orders 15: BEGIN, INSERT order (its lines in its row), COMMIT; BEGIN, UPDATE
    //   order … RETURNING with the INSERT of the outbox row, COMMIT; the relay's 9.
    // - notifications 8: the webhooks, read for each of the two events; BEGIN, INSERT
    //   delivery and inbox record (left to the end of the transaction, one statement; a
    //   key already there rolls it back), COMMIT; BEGIN, the delivery's
    //   UPDATE once sent, COMMIT. (The e-mail worker does not look
    //   for due deliveries after each e-mail: none were left for it.)
    assert_costs(
        &costs,
        &[
            ("billing", 16, 5),
            ("catalog", 8, 2),
            ("notifications", 8, 2),
            ("orders", 15, 5),
        ],
    );
}
