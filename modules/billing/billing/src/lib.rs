//! The billing module: payments, refunds and invoices (work in progress).
