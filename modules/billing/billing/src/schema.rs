// Billing's own tables; mirrors migrations/billing/. No other module has this file.

diesel::table! {
    payments (id) {
        id -> Text,
        order_id -> Text,
        amount -> BigInt,
        currency -> Text,
        status -> Text,
        provider_ref -> Nullable<Text>,
        decline_reason -> Nullable<Text>,
        invoice_id -> Nullable<Text>,
        refunded_amount -> BigInt,
        attempt_started_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        customer_email -> Text,
    }
}

diesel::table! {
    refunds (id) {
        id -> Text,
        payment_id -> Text,
        order_id -> Text,
        amount -> BigInt,
        currency -> Text,
        provider_ref -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    invoices (id) {
        id -> Text,
        number -> Text,
        payment_id -> Text,
        order_id -> Text,
        amount -> BigInt,
        currency -> Text,
        issued_at -> Timestamp,
    }
}

diesel::table! {
    invoice_counters (year) {
        year -> Integer,
        last_number -> BigInt,
    }
}

diesel::joinable!(refunds -> payments (payment_id));
diesel::joinable!(invoices -> payments (payment_id));
diesel::allow_tables_to_appear_in_same_query!(payments, refunds, invoices, invoice_counters);

diesel::table! {
    charge_decisions (order_id) {
        order_id -> Text,
        decision -> Text,
        decided_at -> Timestamp,
    }
}
