// The event plumbing's tables, present in every module's database
// (migrations/chassis/). Only the chassis touches them.

diesel::table! {
    outbox (seq) {
        seq -> BigInt,
        event_id -> Text,
        event_type -> Text,
        event_key -> Text,
        occurred_at -> Timestamp,
        envelope -> Text,
        published_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    inbox (consumer, event_id) {
        consumer -> Text,
        event_id -> Text,
        handled_at -> Timestamp,
    }
}

diesel::table! {
    dead_letters (id) {
        id -> Text,
        consumer -> Text,
        event_id -> Text,
        event_type -> Text,
        event_key -> Text,
        envelope -> Text,
        error -> Text,
        attempts -> BigInt,
        failed_at -> Timestamp,
        replayed_at -> Nullable<Timestamp>,
    }
}
