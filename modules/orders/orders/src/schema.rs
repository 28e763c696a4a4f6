// The orders module's own tables; mirrors migrations/orders/. No other module has this file.

diesel::table! {
    orders (id) {
        id -> Text,
        status -> Text,
        customer_email -> Text,
        total_amount -> BigInt,
        currency -> Text,
        rejection_reason -> Nullable<Text>,
        payment_token -> Nullable<Text>,
        saga_step -> Nullable<Text>,
        saga_attempts -> BigInt,
        saga_next_at -> Nullable<Timestamp>,
        saga_deadline -> Timestamp,
        saga_owner -> Nullable<Text>,
        saga_lease_until -> Nullable<Timestamp>,
        saga_error -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        /// JSON: the lines in order (`repository::LineRow`).
        lines -> Text,
    }
}

diesel::table! {
    idempotency_keys (idempotency_key) {
        idempotency_key -> Text,
        request_hash -> Text,
        order_id -> Text,
        created_at -> Timestamp,
    }
}

diesel::joinable!(idempotency_keys -> orders (order_id));
diesel::allow_tables_to_appear_in_same_query!(orders, idempotency_keys);
