// The catalog's own tables; mirrors migrations/catalog/. No other module has this file.

diesel::table! {
    products (id) {
        id -> Text,
        sku -> Text,
        name -> Text,
        description -> Nullable<Text>,
        price_amount -> BigInt,
        currency -> Text,
        on_hand -> BigInt,
        reserved -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    reservations (order_id) {
        order_id -> Text,
        status -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        /// JSON: `[[product id, quantity], …]`, sorted by product id.
        lines -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(products, reservations);
