//! `bazaar demo`: sample products for a new user to look at.

use catalog_contract::Money;
use chassis::page::PageRequest;

/// (sku, name, description, price in cents, stock)
const PRODUCTS: &[(&str, &str, &str, i64, i64)] = &[
    (
        "TEE-BLK-M",
        "Black T-shirt, M",
        "Organic cotton, 180 g/m²",
        1999,
        40,
    ),
    (
        "TEE-WHT-M",
        "White T-shirt, M",
        "Organic cotton, 180 g/m²",
        1999,
        35,
    ),
    (
        "HOODIE-GRY-L",
        "Grey hoodie, L",
        "Brushed fleece, kangaroo pocket",
        4900,
        12,
    ),
    ("MUG-ENAMEL", "Enamel mug", "Camp mug, 350 ml", 1250, 60),
    ("CAP-NAVY", "Navy cap", "Adjustable strap", 1500, 25),
    ("SOCKS-3P", "Socks, 3 pairs", "Merino blend", 1800, 50),
    ("TOTE-NAT", "Canvas tote", "Natural canvas, 10 l", 900, 80),
    ("STICKERS", "Sticker pack", "Eight vinyl stickers", 400, 3),
];

/// Adds the sample products if the catalog is empty; answers how many were added.
pub(crate) async fn fill(
    service: &catalog::CatalogService,
    currency: &str,
) -> anyhow::Result<usize> {
    let first = service
        .list_products(
            None,
            PageRequest {
                limit: 1,
                after: None,
            },
        )
        .await?;
    if !first.items.is_empty() {
        return Ok(0);
    }
    for (sku, name, description, amount, stock) in PRODUCTS {
        service
            .create_product(catalog::NewProduct {
                sku: (*sku).into(),
                name: (*name).into(),
                description: Some((*description).into()),
                price: Money {
                    amount: *amount,
                    currency: currency.into(),
                },
                stock: Some(*stock),
            })
            .await?;
    }
    Ok(PRODUCTS.len())
}
