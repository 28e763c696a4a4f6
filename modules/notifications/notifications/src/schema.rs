// Notifications' own tables; mirrors migrations/notifications/. No other module has this file.

diesel::table! {
    webhooks (id) {
        id -> Text,
        url -> Text,
        events -> Text,
        secret -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    deliveries (id) {
        id -> Text,
        dedup_key -> Text,
        event_id -> Text,
        event_type -> Text,
        order_id -> Nullable<Text>,
        channel -> Text,
        recipient -> Text,
        template -> Text,
        webhook_id -> Nullable<Text>,
        subject -> Nullable<Text>,
        text_body -> Nullable<Text>,
        html_body -> Nullable<Text>,
        payload -> Nullable<Text>,
        status -> Text,
        attempts -> BigInt,
        last_error -> Nullable<Text>,
        next_attempt_at -> Timestamp,
        claimed_until -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::allow_tables_to_appear_in_same_query!(webhooks, deliveries);
