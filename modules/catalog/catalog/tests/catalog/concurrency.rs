//! Stock under contention: no interleaving of concurrent reservations oversells, and a
//! reservation repeated for the same order takes stock once — on both backends. On
//! PostgreSQL each test spreads its concurrent calls round-robin over 4 instances of the
//! catalog, each with its own `Database` on the one test database, as 4 replicas of the
//! module would (one handle's writes may be run one after the other); on SQLite, whose file
//! belongs to one process, they all go through one instance.

use catalog_contract::{CatalogError, Reservation, ReservationStatus, StockLine};
use chassis::db::Backend;
use chassis::module::LocalModule as _;
use futures::future::join_all;
use uuid::Uuid;

use crate::support::{self, product, racing_instances, stock_of};

async fn fifty_orders_for_ten_units(backend: Backend) {
    let Some(catalog) = support::local_instances(backend, racing_instances(backend)).await else {
        return;
    };
    let item = product(&catalog.module, "Contended", 10).await;
    let attempts = (0..50).map(|i| {
        let port = catalog.instance(i).port();
        let line = StockLine {
            product_id: item.id,
            quantity: 1,
        };
        tokio::spawn(async move { port.reserve(Uuid::new_v4(), &[line]).await })
    });
    let outcomes: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(|joined| joined.expect("task ran"))
        .collect();
    let reserved = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(reserved, 10, "exactly the stock is reserved");
    for outcome in outcomes.iter().filter(|outcome| outcome.is_err()) {
        assert_eq!(
            outcome,
            &Err(CatalogError::OutOfStock {
                product_id: item.id
            })
        );
    }
    let stock = stock_of(&catalog.module, &item).await;
    assert_eq!(
        (stock.on_hand, stock.reserved, stock.available),
        (10, 10, 0)
    );
}

async fn one_order_reserved_concurrently_takes_stock_once(backend: Backend) {
    let Some(catalog) = support::local_instances(backend, racing_instances(backend)).await else {
        return;
    };
    let item = product(&catalog.module, "Repeated", 10).await;
    let order = Uuid::new_v4();
    let attempts = (0..20).map(|i| {
        let port = catalog.instance(i).port();
        let line = StockLine {
            product_id: item.id,
            quantity: 3,
        };
        tokio::spawn(async move { port.reserve(order, &[line]).await })
    });
    for joined in join_all(attempts).await {
        let reservation = joined
            .expect("task ran")
            .expect("every repeat answers the reservation");
        assert_eq!(reservation.order_id, order);
    }
    assert_eq!(stock_of(&catalog.module, &item).await.reserved, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_reservations_of_stock_ten_reserve_exactly_ten_on_sqlite() {
    fifty_orders_for_ten_units(Backend::Sqlite).await;
}

/// The concurrent calls spread over 4 instances, as 4 replicas of the catalog would make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_reservations_of_stock_ten_reserve_exactly_ten_on_postgres() {
    fifty_orders_for_ten_units(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeating_a_reservation_concurrently_takes_stock_once_on_sqlite() {
    one_order_reserved_concurrently_takes_stock_once(Backend::Sqlite).await;
}

/// The concurrent calls spread over 4 instances, as 4 replicas of the catalog would make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeating_a_reservation_concurrently_takes_stock_once_on_postgres() {
    one_order_reserved_concurrently_takes_stock_once(Backend::Postgres).await;
}

/// Runs `calls` copies of one stock call for `order` at once, `call(i)` making the `i`-th;
/// answers every outcome.
async fn at_once<F, Fut>(calls: usize, call: F) -> Vec<Result<Reservation, CatalogError>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Reservation, CatalogError>> + Send + 'static,
{
    join_all((0..calls).map(|i| tokio::spawn(call(i))))
        .await
        .into_iter()
        .map(|joined| joined.expect("task ran"))
        .collect()
}

async fn repeated_transitions_move_stock_once(backend: Backend) {
    let Some(catalog) = support::local_instances(backend, racing_instances(backend)).await else {
        return;
    };
    let item = product(&catalog.module, "Transitions", 10).await;
    let port = catalog.module.port();
    let order = Uuid::new_v4();
    let line = StockLine {
        product_id: item.id,
        quantity: 3,
    };
    port.reserve(order, &[line]).await.expect("reserves");

    let commits = at_once(8, |i| {
        let port = catalog.instance(i).port();
        async move { port.commit(order).await }
    })
    .await;
    for outcome in commits {
        assert_eq!(
            outcome.expect("every commit answers").status,
            ReservationStatus::Committed
        );
    }
    let stock = stock_of(&catalog.module, &item).await;
    assert_eq!((stock.on_hand, stock.reserved), (7, 0), "sold once");

    let restocks = at_once(8, |i| {
        let port = catalog.instance(i).port();
        async move { port.restock(order).await }
    })
    .await;
    for outcome in restocks {
        assert_eq!(
            outcome.expect("every restock answers").status,
            ReservationStatus::Restocked
        );
    }
    let stock = stock_of(&catalog.module, &item).await;
    assert_eq!((stock.on_hand, stock.reserved), (10, 0), "put back once");

    let other = Uuid::new_v4();
    port.reserve(other, &[line]).await.expect("reserves");
    let releases = at_once(8, |i| {
        let port = catalog.instance(i).port();
        async move { port.release(other).await }
    })
    .await;
    for outcome in releases {
        assert_eq!(
            outcome.expect("every release answers").status,
            ReservationStatus::Released
        );
    }
    let stock = stock_of(&catalog.module, &item).await;
    assert_eq!((stock.on_hand, stock.reserved), (10, 0), "given back once");
}

/// A commit racing a release of the same reservation: exactly one of them moves it, the
/// other answers a conflict naming the winner's status, and the stock shows the winner only.
async fn commit_racing_release_moves_stock_for_the_winner_only(backend: Backend) {
    let Some(catalog) = support::local_instances(backend, racing_instances(backend)).await else {
        return;
    };
    let item = product(&catalog.module, "Race", 100).await;
    let port = catalog.module.port();
    let (mut committed, mut released) = (0, 0);
    for _ in 0..10 {
        let order = Uuid::new_v4();
        let line = StockLine {
            product_id: item.id,
            quantity: 2,
        };
        port.reserve(order, &[line]).await.expect("reserves");
        let calls = (0..8).map(|i| {
            let port = catalog.instance(i).port();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    port.commit(order).await
                } else {
                    port.release(order).await
                }
            })
        });
        let outcomes: Vec<_> = join_all(calls)
            .await
            .into_iter()
            .map(|joined| joined.expect("task ran"))
            .collect();
        let winner = outcomes
            .iter()
            .find_map(|outcome| outcome.as_ref().ok().map(|r| r.status))
            .expect("one call wins");
        for outcome in &outcomes {
            match outcome {
                Ok(reservation) => assert_eq!(reservation.status, winner),
                Err(CatalogError::ReservationConflict { status, .. }) => {
                    assert_eq!(*status, winner, "the loser names the winner's status")
                }
                Err(other) => panic!("unexpected answer {other:?}"),
            }
        }
        match winner {
            ReservationStatus::Committed => committed += 1,
            ReservationStatus::Released => released += 1,
            other => panic!("unexpected winner {other:?}"),
        }
    }
    let stock = stock_of(&catalog.module, &item).await;
    assert_eq!(
        (stock.on_hand, stock.reserved),
        (100 - 2 * committed, 0),
        "{committed} committed, {released} released"
    );
}

/// Commits that wait for the writer together move their reservations and the stock in
/// one transaction: on PostgreSQL with one statement for the reservations and one for the
/// stock of both products (each commit alone costs two), on SQLite with the prepared
/// one-row statements (no round trip to save there). Each answers its own lines.
async fn commits_of_one_batch_move_reservations_and_stock_together(backend: Backend) {
    let Some(catalog) = support::local(backend).await else {
        return;
    };
    let module = &catalog.module;
    let (a, b) = (
        product(module, "Batch A", 10).await,
        product(module, "Batch B", 10).await,
    );
    let mut two_lines = vec![line(&a, 2), line(&b, 1)];
    two_lines.sort_by_key(|line| line.product_id);
    let orders = [
        (Uuid::new_v4(), vec![line(&a, 1)]),
        (Uuid::new_v4(), two_lines),
        (Uuid::new_v4(), vec![line(&b, 3)]),
    ];
    let port = module.port();
    for (order, lines) in &orders {
        port.reserve(*order, lines).await.expect("reserves");
    }
    let calls = orders
        .iter()
        .map(|(order, _)| port.commit(*order))
        .collect();
    let (commits, statements, transactions) = in_one_batch(module, calls).await;
    for ((order, lines), committed) in orders.iter().zip(commits) {
        let committed = committed.expect("commits");
        assert_eq!(committed.status, ReservationStatus::Committed);
        assert_eq!(&committed.lines, lines, "order {order}'s own lines");
    }
    let (a_stock, b_stock) = (stock_of(module, &a).await, stock_of(module, &b).await);
    assert_eq!((a_stock.on_hand, a_stock.reserved), (7, 0));
    assert_eq!((b_stock.on_hand, b_stock.reserved), (6, 0));
    assert_eq!(transactions, 1, "the commits' (the holder's had begun)");
    // The holder's `COMMIT`, the commits' `BEGIN` and `COMMIT` (on PostgreSQL the holder's
    // commit begins the next transaction in the same round trip), and the moves.
    let (commit_begin_commit, moves) = match backend {
        Backend::Postgres => (2, 2),
        Backend::Sqlite => (3, 3 + 2),
    };
    assert_eq!(statements, commit_begin_commit + moves);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_of_one_batch_move_reservations_and_stock_together_on_sqlite() {
    commits_of_one_batch_move_reservations_and_stock_together(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_of_one_batch_move_reservations_and_stock_together_on_postgres() {
    commits_of_one_batch_move_reservations_and_stock_together(Backend::Postgres).await;
}

/// A line of `quantity` units of `item`.
fn line(item: &catalog_contract::Product, quantity: u32) -> StockLine {
    StockLine {
        product_id: item.id,
        quantity,
    }
}

/// A reserve of each of `orders`' lines, for a new order each.
fn reserves(
    port: &std::sync::Arc<dyn catalog_contract::Catalog>,
    orders: &[Vec<StockLine>],
) -> Vec<impl std::future::Future<Output = Result<Reservation, CatalogError>> + use<>> {
    orders
        .iter()
        .map(|lines| {
            let (port, lines) = (port.clone(), lines.clone());
            async move { port.reserve(Uuid::new_v4(), &lines).await }
        })
        .collect()
}

/// The writer held while `calls` queue behind it, so that they run as one batch: their
/// outcomes, and the statements and transactions the batch took.
async fn in_one_batch<T, Fut>(
    module: &catalog::CatalogModule,
    calls: Vec<Fut>,
) -> (Vec<T>, u64, u64)
where
    Fut: std::future::Future<Output = T>,
{
    let db = module.database().clone();
    let holder = tokio::spawn({
        let db = db.clone();
        async move {
            db.write(|_conn| {
                std::thread::sleep(std::time::Duration::from_millis(300));
                Ok::<_, chassis::db::DbError>(())
            })
            .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let before = db.work_counts();
    let outcomes = join_all(calls).await;
    holder.await.expect("task ran").expect("the holder commits");
    let after = db.work_counts();
    (
        outcomes,
        after.statements - before.statements,
        after.transactions - before.transactions,
    )
}

/// Reserves that wait for the writer together hold their stock in one statement on
/// PostgreSQL (their holds summed by product) and insert their reservations in one more;
/// one of them short of stock fails the batch's holds, and then each holds at once: it
/// answers `out_of_stock`, the others reserve.
async fn reserves_of_one_batch_hold_stock_together(backend: Backend) {
    let Some(catalog) = support::local(backend).await else {
        return;
    };
    let module = &catalog.module;
    let (a, b) = (
        product(module, "Holds A", 10).await,
        product(module, "Holds B", 10).await,
    );
    let port = module.port();
    let orders = [vec![line(&a, 1)], vec![line(&a, 2)], vec![line(&b, 3)]];
    let (outcomes, statements, transactions) = in_one_batch(module, reserves(&port, &orders)).await;
    for outcome in outcomes {
        assert_eq!(
            outcome.expect("reserves").status,
            ReservationStatus::Reserved
        );
    }
    assert_eq!(transactions, 1, "the reserves' (the holder's had begun)");
    // The holder's `COMMIT` and the reserves' `BEGIN` and `COMMIT` (one round trip fewer
    // on PostgreSQL, whose `COMMIT; BEGIN` is one), then the holds and the reservations:
    // one statement for both on PostgreSQL (the new rows ride with the holds), one a
    // product and one a reservation on SQLite.
    let expected = match backend {
        Backend::Postgres => 2 + 1,
        Backend::Sqlite => 3 + 2 + 3,
    };
    assert_eq!(statements, expected);
    let (a_stock, b_stock) = (stock_of(module, &a).await, stock_of(module, &b).await);
    assert_eq!((a_stock.on_hand, a_stock.reserved), (10, 3));
    assert_eq!((b_stock.on_hand, b_stock.reserved), (10, 3));

    // 7 of A and 7 of B are left: the second asks for more of A than there is.
    let orders = [vec![line(&a, 4)], vec![line(&a, 5)], vec![line(&b, 7)]];
    let (outcomes, _, _) = in_one_batch(module, reserves(&port, &orders)).await;
    let statuses: Vec<Result<ReservationStatus, CatalogError>> = outcomes
        .into_iter()
        .map(|outcome| outcome.map(|reservation| reservation.status))
        .collect();
    assert_eq!(statuses[0], Ok(ReservationStatus::Reserved));
    assert_eq!(
        statuses[1],
        Err(CatalogError::OutOfStock { product_id: a.id })
    );
    assert_eq!(statuses[2], Ok(ReservationStatus::Reserved));
    let (a_stock, b_stock) = (stock_of(module, &a).await, stock_of(module, &b).await);
    assert_eq!((a_stock.on_hand, a_stock.reserved), (10, 7));
    assert_eq!((b_stock.on_hand, b_stock.reserved), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserves_of_one_batch_hold_stock_together_on_sqlite() {
    reserves_of_one_batch_hold_stock_together(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserves_of_one_batch_hold_stock_together_on_postgres() {
    reserves_of_one_batch_hold_stock_together(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_restocks_and_releases_move_stock_once_on_sqlite() {
    repeated_transitions_move_stock_once(Backend::Sqlite).await;
}

/// The concurrent calls spread over 4 instances, as 4 replicas of the catalog would make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_restocks_and_releases_move_stock_once_on_postgres() {
    repeated_transitions_move_stock_once(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_racing_a_release_moves_stock_for_the_winner_only_on_sqlite() {
    commit_racing_release_moves_stock_for_the_winner_only(Backend::Sqlite).await;
}

/// The concurrent calls spread over 4 instances, as 4 replicas of the catalog would make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_racing_a_release_moves_stock_for_the_winner_only_on_postgres() {
    commit_racing_release_moves_stock_for_the_winner_only(Backend::Postgres).await;
}

/// The products concurrent orders price their lines with are read together: twenty
/// lookups asked at once are one statement on PostgreSQL (a current-thread runtime, so
/// that all have asked before the read's task runs), one each on SQLite, where a read is
/// no round trip; each answers its own products, and an unknown one as not found.
async fn product_lookups_of_concurrent_orders_share_a_read(backend: Backend) {
    let Some(catalog) = support::local(backend).await else {
        return;
    };
    let module = &catalog.module;
    let mut products = Vec::new();
    for n in 0..20 {
        products.push(product(module, &format!("Looked up {n}"), 5).await);
    }
    let port = module.port();
    let db = module.database().clone();
    let before = db.work_counts().statements;
    let answers = join_all(products.iter().map(|product| {
        let port = port.clone();
        let id = product.id;
        async move { port.products(&[id]).await }
    }))
    .await;
    let statements = db.work_counts().statements - before;
    for (product, answer) in products.iter().zip(&answers) {
        let found = answer.as_ref().expect("found");
        assert_eq!(
            found.iter().map(|p| (p.id, &p.name)).collect::<Vec<_>>(),
            [(product.id, &product.name)]
        );
    }
    let expected = match backend {
        Backend::Postgres => 1,
        Backend::Sqlite => 20,
    };
    assert_eq!(statements, expected, "statements for twenty lookups");
    let unknown = Uuid::new_v4();
    let missing = port.products(&[products[0].id, unknown]).await;
    assert!(
        matches!(missing, Err(CatalogError::ProductNotFound(id)) if id == unknown),
        "{missing:?}"
    );
}

#[tokio::test]
async fn product_lookups_of_concurrent_orders_share_a_read_on_sqlite() {
    product_lookups_of_concurrent_orders_share_a_read(Backend::Sqlite).await;
}

#[tokio::test]
async fn product_lookups_of_concurrent_orders_share_a_read_on_postgres() {
    product_lookups_of_concurrent_orders_share_a_read(Backend::Postgres).await;
}
