//! Fixtures: billing on a throw-away database with a counting simulated gateway, an actix
//! app or server around it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use billing::{
    BillingModule, ChargeOutcome, GatewayCharge, GatewayError, GatewayRefund, MIGRATIONS,
    PaymentGateway, RefundOutcome, SimulatedGateway,
};
use billing_contract::{BillingSettings, ChargeRequest, Money};
use chassis::db::Backend;
use chassis::module::LocalModule;
use chassis::testing::TestDatabase;
pub(crate) use chassis::testing::racing_instances;
use uuid::Uuid;

pub(crate) use chassis::testing::{
    ADMIN_TOKEN, SERVICE_TOKEN, TestServer as RemoteServer, module_app as app,
};

/// How fast the simulated provider and billing's patience are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// How long `tok_slow` takes.
    pub(crate) slow_delay: Duration,
    /// `billing.gateway_timeout`.
    pub(crate) gateway_timeout: Duration,
}

/// The tests' default: `tok_slow` succeeds, quickly.
pub(crate) const QUICK: Timing = Timing {
    slow_delay: Duration::from_millis(100),
    gateway_timeout: Duration::from_secs(1),
};

/// Billing gives up on the gateway before `tok_slow` answers.
pub(crate) const HASTY: Timing = Timing {
    slow_delay: Duration::from_millis(500),
    gateway_timeout: Duration::from_millis(100),
};

/// The simulated gateway, counting the calls it gets per order, and able to crash (panic)
/// in the middle of a charge, as a process dying during the call would.
#[derive(Debug)]
pub(crate) struct CountingGateway {
    inner: SimulatedGateway,
    charges: Mutex<HashMap<Uuid, usize>>,
    refunds: Mutex<HashMap<Uuid, usize>>,
    crash_next_charge: AtomicBool,
}

impl CountingGateway {
    pub(crate) fn new(slow_delay: Duration) -> Self {
        Self {
            inner: SimulatedGateway::new(slow_delay),
            charges: Mutex::default(),
            refunds: Mutex::default(),
            crash_next_charge: AtomicBool::new(false),
        }
    }

    /// Charge calls the provider got for `order_id`.
    pub(crate) fn charges_of(&self, order_id: Uuid) -> usize {
        self.charges
            .lock()
            .expect("lock")
            .get(&order_id)
            .copied()
            .unwrap_or(0)
    }

    /// Refund calls the provider got for `order_id`.
    pub(crate) fn refunds_of(&self, order_id: Uuid) -> usize {
        self.refunds
            .lock()
            .expect("lock")
            .get(&order_id)
            .copied()
            .unwrap_or(0)
    }

    /// The next charge call panics after it was counted.
    pub(crate) fn crash_next_charge(&self) {
        self.crash_next_charge.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl PaymentGateway for CountingGateway {
    async fn charge(&self, charge: &GatewayCharge) -> Result<ChargeOutcome, GatewayError> {
        *self
            .charges
            .lock()
            .expect("lock")
            .entry(charge.idempotency_key)
            .or_default() += 1;
        if self.crash_next_charge.swap(false, Ordering::SeqCst) {
            panic!("simulated crash during the gateway call");
        }
        self.inner.charge(charge).await
    }

    async fn refund(&self, refund: &GatewayRefund) -> Result<RefundOutcome, GatewayError> {
        *self
            .refunds
            .lock()
            .expect("lock")
            .entry(refund.idempotency_key)
            .or_default() += 1;
        self.inner.refund(refund).await
    }
}

/// A billing module on its own database, which lives as long as this value; with
/// [`local_instances`], more instances of it on the same database, sharing its gateway.
pub(crate) struct LocalBilling {
    pub(crate) module: BillingModule,
    /// The instances after `module`, each with a `Database` handle of its own.
    replicas: Vec<BillingModule>,
    /// The one gateway of `module` and its replicas: its counts are of all of them.
    pub(crate) gateway: Arc<CountingGateway>,
    _db: TestDatabase,
}

impl LocalBilling {
    /// Another billing module on the same database, with its own gateway and timing (as a
    /// second process would be).
    pub(crate) fn sibling(&self, timing: Timing) -> BillingModule {
        let gateway = Arc::new(CountingGateway::new(timing.slow_delay));
        module(self.module.database().clone(), timing, gateway)
    }

    /// The instance of the `i`-th of concurrent calls: round-robin over `module` and its
    /// replicas.
    pub(crate) fn instance(&self, i: usize) -> &BillingModule {
        match i % (1 + self.replicas.len()) {
            0 => &self.module,
            n => &self.replicas[n - 1],
        }
    }
}

fn module(
    db: chassis::db::Database,
    timing: Timing,
    gateway: Arc<CountingGateway>,
) -> BillingModule {
    let settings = BillingSettings {
        gateway_timeout: timing.gateway_timeout,
        ..BillingSettings::default()
    };
    BillingModule::with_gateway(db, "EUR", &settings, gateway)
}

/// Billing on a fresh database of `backend`, with the [`QUICK`] timing; `None` when
/// PostgreSQL is unreachable outside CI (the reason is printed).
pub(crate) async fn local(backend: Backend) -> Option<LocalBilling> {
    local_with(backend, QUICK).await
}

pub(crate) async fn local_with(backend: Backend, timing: Timing) -> Option<LocalBilling> {
    local_instances_with(backend, timing, 1).await
}

/// `n` (at least one) billing modules on one fresh database of `backend`, with the
/// [`QUICK`] timing, each with its own `Database` handle (its own pool), as separate
/// processes of the module would have, and all with one gateway.
pub(crate) async fn local_instances(backend: Backend, n: usize) -> Option<LocalBilling> {
    local_instances_with(backend, QUICK, n).await
}

pub(crate) async fn local_instances_with(
    backend: Backend,
    timing: Timing,
    n: usize,
) -> Option<LocalBilling> {
    let db = TestDatabase::new(backend)?;
    let gateway = Arc::new(CountingGateway::new(timing.slow_delay));
    let mut instances = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        // A new pool on the same database each time; the migrations find nothing left to
        // do after the first.
        let database = db.open(MIGRATIONS).await;
        instances.push(module(database, timing, gateway.clone()));
    }
    let module = instances.remove(0);
    Some(LocalBilling {
        module,
        replicas: instances,
        gateway,
        _db: db,
    })
}

pub(crate) fn eur(amount: i64) -> Money {
    Money::new(amount, "EUR")
}

/// Whom the tests' orders belong to.
pub(crate) const CUSTOMER: &str = "ada@example.com";

/// A charge of `amount` euro cents for `order_id` with `token`, for [`CUSTOMER`].
pub(crate) fn charge(order_id: Uuid, amount: i64, token: &str) -> ChargeRequest {
    ChargeRequest {
        order_id,
        amount: eur(amount),
        token: token.into(),
        customer_email: CUSTOMER.into(),
    }
}
