-- Webhook subscriptions. `events` is the JSON array of event types; the secret is the
-- HMAC key of `X-Bazaar-Signature` and is never answered by the API.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);

-- One message to one recipient caused by one event. `dedup_key` is unique: an e-mail's is
-- its template, order (or event) and recipient, a webhook call's its event and webhook, so
-- that no redelivery of an event, nor a second event about the same outcome, sends twice.
-- The worker sends rows whose `next_attempt_at` has come, under a lease (`claimed_until`).
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    dedup_key TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    order_id TEXT,
    channel TEXT NOT NULL CHECK (channel IN ('email', 'file', 'webhook')),
    recipient TEXT NOT NULL,
    template TEXT NOT NULL,
    webhook_id TEXT,
    subject TEXT,
    text_body TEXT,
    html_body TEXT,
    payload TEXT,
    status TEXT NOT NULL CHECK (status IN ('sent', 'retrying', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TIMESTAMP NOT NULL,
    claimed_until TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE INDEX deliveries_order_id ON deliveries (order_id, id);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
