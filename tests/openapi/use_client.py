"""Places an order through the client that openapi-python-client generated from Bazaar's
/openapi.json (tests/bazaar/openapi.rs runs it).

Usage: use_client.py <base URL> <admin token> <sku>
Prints one JSON line: the product and the order as the generated client parsed them.
"""

import json
import sys

from bazaar_client import AuthenticatedClient, Client
from bazaar_client.api.catalog import create_product, get_product
from bazaar_client.api.orders import get_order, place_order
from bazaar_client.models import (
    Currency,
    NewProduct,
    Order,
    PaymentMethod,
    PlaceOrder,
    PlaceOrderLine,
    Price,
    Product,
)


def main() -> None:
    base, admin_token, sku = sys.argv[1:4]
    admin = AuthenticatedClient(base_url=base, token=admin_token, raise_on_unexpected_status=True)
    public = Client(base_url=base, raise_on_unexpected_status=True)

    product = create_product.sync(
        client=admin,
        body=NewProduct(
            sku=sku,
            name="Generated-client tee",
            price=Price(amount=1999, currency=Currency.EUR),
            stock=5,
        ),
    )
    if not isinstance(product, Product):
        sys.exit(f"creating the product answered {product!r}")

    placed = place_order.sync(
        client=public,
        body=PlaceOrder(
            customer_email="ada@example.com",
            lines=[PlaceOrderLine(product_id=product.id, quantity=2)],
            payment=PaymentMethod(token="tok_visa"),
        ),
        idempotency_key=f"generated-client-{sku}",
    )
    if not isinstance(placed, Order):
        sys.exit(f"placing the order answered {placed!r}")

    order = get_order.sync(client=public, id=placed.id)
    after = get_product.sync(client=public, id=product.id)
    if not isinstance(order, Order) or not isinstance(after, Product):
        sys.exit(f"reading back answered {order!r} and {after!r}")
    print(
        json.dumps(
            {
                "product_id": str(product.id),
                "order_id": str(order.id),
                "status": str(order.status),
                "total": order.total.amount,
                "currency": str(order.total.currency),
                "available": after.stock.available,
            }
        )
    )


if __name__ == "__main__":
    main()
