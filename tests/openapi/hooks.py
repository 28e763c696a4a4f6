"""Schemathesis hooks for Bazaar's API test (tests/bazaar/openapi.rs).

A few rules depend on the server's state or surroundings, which no schema can say. These
hooks make generated requests meet them and change nothing else:

- POST /orders names products the test created (BAZAAR_PRODUCT_IDS), each once: an
  unknown product is 422 unknown_product, and a product named twice is 422 (spec §3).
- POST /orders: an Idempotency-Key belongs to the first body sent with it, another body
  is 422 idempotency_key_reused; each key is made unique to its body.
- POST /internal/catalog/reservations/{order_id} names each product once.
- POST /notifications/webhooks: the target's host must resolve to an address the target
  policy allows; the test machine has no DNS, so the URL becomes one on a public address
  literal (TEST-NET-3, never answered).

Only parts generated to fit the schema are changed, and only into values that fit it
too, so a case generated to break the schema still breaks it.
"""

import hashlib
import json
import os
import uuid

import schemathesis

PRODUCT_IDS = json.loads(os.environ.get("BAZAAR_PRODUCT_IDS", "[]"))


def digest(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def fits_schema(case, location: str) -> bool:
    """Whether this part of the case was generated to fit the schema."""
    meta = case.meta
    if meta is None:
        return True
    info = meta.components.get(location)
    return info is None or info.mode == "positive"


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """Runs on every request of every phase, just before it is sent."""
    method, path = case.operation.method.upper(), case.operation.path
    body = case.body
    if method == "POST" and path == "/orders":
        if fits_schema(case, "body") and isinstance(body, dict):
            for position, line in enumerate(body.get("lines", [])):
                if position < len(PRODUCT_IDS):
                    line["product_id"] = PRODUCT_IDS[position]
        key = (case.headers or {}).get("Idempotency-Key")
        if fits_schema(case, "header") and isinstance(key, str):
            case.headers["Idempotency-Key"] = digest(key, body) + key[:247].rstrip()
    elif method == "POST" and path == "/internal/catalog/reservations/{order_id}":
        if fits_schema(case, "body") and isinstance(body, dict):
            seen = set()
            for line in body.get("lines", []):
                if line["product_id"].lower() in seen:
                    line["product_id"] = str(uuid.uuid4())
                seen.add(line["product_id"].lower())
    elif method == "POST" and path == "/notifications/webhooks":
        if fits_schema(case, "body") and isinstance(body, dict):
            body["url"] = f"http://203.0.113.7/hooks/{digest(body.get('url'))}"
