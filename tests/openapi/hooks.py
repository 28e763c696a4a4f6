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

Only values that are already schema-valid are replaced, by schema-valid ones, so a case
generated to be invalid stays invalid.
"""

import hashlib
import json
import os
import re
import uuid

import schemathesis

PRODUCT_IDS = json.loads(os.environ.get("BAZAAR_PRODUCT_IDS", "[]"))
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$")
WEBHOOK_URL = re.compile(
    r"^\s*[Hh][Tt][Tt][Pp][Ss]?://[^\s\x00/?#@\\]+(?:[/?#][^\s\x00]*)?\s*$"
)


def digest(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def valid_product_line(line) -> bool:
    return isinstance(line, dict) and isinstance(line.get("product_id"), str) and bool(
        UUID.match(line["product_id"])
    )


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """Runs on every request of every phase, just before it is sent."""
    method, path = case.operation.method.upper(), case.operation.path
    body = case.body
    if method == "POST" and path == "/orders":
        if isinstance(body, dict) and isinstance(body.get("lines"), list):
            for position, line in enumerate(body["lines"]):
                if valid_product_line(line) and position < len(PRODUCT_IDS):
                    line["product_id"] = PRODUCT_IDS[position]
        key = (case.headers or {}).get("Idempotency-Key")
        if isinstance(key, str) and len(key) <= 255 and IDEMPOTENCY_KEY.match(key):
            case.headers["Idempotency-Key"] = digest(key, body) + key[:247].rstrip()
    elif method == "POST" and path == "/internal/catalog/reservations/{order_id}":
        if isinstance(body, dict) and isinstance(body.get("lines"), list):
            seen = set()
            for line in body["lines"]:
                if valid_product_line(line):
                    if line["product_id"].lower() in seen:
                        line["product_id"] = str(uuid.uuid4())
                    seen.add(line["product_id"].lower())
    elif method == "POST" and path == "/notifications/webhooks":
        if isinstance(body, dict) and isinstance(body.get("url"), str):
            url = body["url"]
            if len(url) <= 2048 and WEBHOOK_URL.match(url):
                body["url"] = f"http://203.0.113.7/hooks/{digest(url)}"
