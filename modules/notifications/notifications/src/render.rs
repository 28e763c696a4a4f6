//! The e-mails' templates, kept in the module: a subject, a text body and an HTML body per
//! template, as plain Rust format strings. Everything a customer sees comes from the
//! event's payload (spec §5: a consumer never calls back).

use catalog_contract::StockLow;
use chassis::money::Money;
use orders_contract::{Order, RejectionReason};

/// An e-mail ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    pub(crate) subject: String,
    pub(crate) text: String,
    pub(crate) html: String,
}

/// The templates, by name (the `template` of a delivery).
pub(crate) mod template {
    pub(crate) const ORDER_CONFIRMED: &str = "order_confirmed";
    pub(crate) const ORDER_REJECTED: &str = "order_rejected";
    pub(crate) const ORDER_CANCELLED: &str = "order_cancelled";
    pub(crate) const PAYMENT_REFUNDED: &str = "payment_refunded";
    pub(crate) const STOCK_LOW: &str = "stock_low";
}

/// `12.34 EUR` from minor units.
pub(crate) fn money(amount: &Money) -> String {
    let sign = if amount.amount < 0 { "-" } else { "" };
    let abs = amount.amount.unsigned_abs();
    format!("{sign}{}.{:02} {}", abs / 100, abs % 100, amount.currency)
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

fn lines_text(order: &Order) -> String {
    order
        .lines
        .iter()
        .map(|line| {
            format!(
                "  {} x {} ({}) at {} = {}\n",
                line.quantity,
                line.name,
                line.sku,
                money(&line.unit_price),
                money(&line.line_total)
            )
        })
        .collect()
}

fn lines_html(order: &Order) -> String {
    order
        .lines
        .iter()
        .map(|line| {
            format!(
                "<tr><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td></tr>\n",
                line.quantity,
                escape(&line.name),
                escape(&line.sku),
                escape(&money(&line.unit_price)),
                escape(&money(&line.line_total))
            )
        })
        .collect()
}

fn html_page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body>\n<h1>{title}</h1>\n{body}<p>Thank you for shopping with Bazaar.</p>\n</body></html>\n",
        title = escape(title),
    )
}

fn order_table(order: &Order) -> String {
    format!(
        "<table>\n<tr><th>Qty</th><th>Item</th><th>Unit price</th><th>Total</th></tr>\n{}\
         <tr><td colspan=\"3\"><strong>Total</strong></td><td><strong>{}</strong></td></tr>\n</table>\n",
        lines_html(order),
        escape(&money(&order.total))
    )
}

/// Why an order was rejected, in words.
fn reason_text(order: &Order) -> String {
    match order.rejection_reason {
        Some(reason) => {
            let code = reason.as_str();
            let words = match reason {
                RejectionReason::OutOfStock => "some items are out of stock",
                RejectionReason::PaymentDeclined => "the payment was declined",
                RejectionReason::DependencyUnavailable => "the shop could not complete it in time",
            };
            format!("{words} ({code})")
        }
        None => "it could not be completed".into(),
    }
}

pub(crate) fn order_confirmed(order: &Order) -> Rendered {
    let title = format!("Your order {} is confirmed", order.id);
    Rendered {
        text: format!(
            "Hello,\n\nyour order {id} is confirmed.\n\n{lines}\nTotal: {total}\n\n\
             Thank you for shopping with Bazaar.\n",
            id = order.id,
            lines = lines_text(order),
            total = money(&order.total),
        ),
        html: html_page(
            &title,
            &format!(
                "<p>Your order <code>{}</code> is confirmed.</p>\n{}",
                order.id,
                order_table(order)
            ),
        ),
        subject: title,
    }
}

pub(crate) fn order_rejected(order: &Order) -> Rendered {
    let title = format!("Your order {} could not be placed", order.id);
    let reason = reason_text(order);
    Rendered {
        text: format!(
            "Hello,\n\nwe could not place your order {id}: {reason}.\nNothing was charged.\n\n\
             {lines}\nTotal: {total}\n\nThank you for shopping with Bazaar.\n",
            id = order.id,
            lines = lines_text(order),
            total = money(&order.total),
        ),
        html: html_page(
            &title,
            &format!(
                "<p>We could not place your order <code>{}</code>: {}.</p>\n\
                 <p>Nothing was charged.</p>\n{}",
                order.id,
                escape(&reason),
                order_table(order)
            ),
        ),
        subject: title,
    }
}

pub(crate) fn order_cancelled(order: &Order) -> Rendered {
    let title = format!("Your order {} was cancelled", order.id);
    Rendered {
        text: format!(
            "Hello,\n\nyour order {id} was cancelled. The payment of {total} is refunded.\n\n\
             {lines}\nTotal: {total}\n\nThank you for shopping with Bazaar.\n",
            id = order.id,
            lines = lines_text(order),
            total = money(&order.total),
        ),
        html: html_page(
            &title,
            &format!(
                "<p>Your order <code>{}</code> was cancelled. The payment of {} is refunded.</p>\n{}",
                order.id,
                escape(&money(&order.total)),
                order_table(order)
            ),
        ),
        subject: title,
    }
}

pub(crate) fn payment_refunded(order_id: uuid::Uuid, amount: &Money) -> Rendered {
    let title = format!("Your refund for order {order_id}");
    Rendered {
        text: format!(
            "Hello,\n\n{amount} for your order {order_id} was refunded to your payment method.\n\n\
             Thank you for shopping with Bazaar.\n",
            amount = money(amount),
        ),
        html: html_page(
            &title,
            &format!(
                "<p>{} for your order <code>{order_id}</code> was refunded to your payment \
                 method.</p>\n",
                escape(&money(amount))
            ),
        ),
        subject: title,
    }
}

pub(crate) fn stock_low(stock: &StockLow) -> Rendered {
    let title = format!("Stock low: {} ({})", stock.name, stock.sku);
    Rendered {
        text: format!(
            "Available stock of {name} ({sku}, product {id}) is {available}, below the \
             threshold of {threshold}.\n",
            name = stock.name,
            sku = stock.sku,
            id = stock.product_id,
            available = stock.available,
            threshold = stock.threshold,
        ),
        html: format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
             <body>\n<h1>{title}</h1>\n<p>Available stock of {name} ({sku}, product \
             <code>{id}</code>) is <strong>{available}</strong>, below the threshold of \
             {threshold}.</p>\n</body></html>\n",
            title = escape(&title),
            name = escape(&stock.name),
            sku = escape(&stock.sku),
            id = stock.product_id,
            available = stock.available,
            threshold = stock.threshold,
        ),
        subject: title,
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use orders_contract::{OrderLine, OrderStatus};
    use uuid::Uuid;

    use super::*;

    fn eur(amount: i64) -> Money {
        Money::new(amount, "EUR")
    }

    fn order(status: OrderStatus, reason: Option<RejectionReason>) -> Order {
        Order {
            id: Uuid::new_v4(),
            status,
            customer_email: "ada@example.com".into(),
            lines: vec![OrderLine {
                product_id: Uuid::new_v4(),
                sku: "MUG-1".into(),
                name: "Mug <large> & \"fine\"".into(),
                quantity: 2,
                unit_price: eur(1250),
                line_total: eur(2500),
            }],
            total: eur(2500),
            rejection_reason: reason,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn money_renders_minor_units() {
        assert_eq!(money(&eur(2500)), "25.00 EUR");
        assert_eq!(money(&eur(7)), "0.07 EUR");
        assert_eq!(money(&eur(-1234)), "-12.34 EUR");
    }

    #[test]
    fn a_confirmation_names_order_lines_and_total_in_both_bodies() {
        let order = order(OrderStatus::Confirmed, None);
        let mail = order_confirmed(&order);
        assert!(mail.subject.contains(&order.id.to_string()));
        assert!(mail.subject.contains("confirmed"));
        for body in [&mail.text, &mail.html] {
            assert!(body.contains(&order.id.to_string()), "{body}");
            assert!(body.contains("MUG-1"), "{body}");
            assert!(body.contains("25.00 EUR"), "{body}");
            assert!(body.contains("12.50 EUR"), "{body}");
        }
        assert!(mail.text.contains("Mug <large> & \"fine\""));
        // HTML escapes what the shop's admin typed.
        assert!(
            mail.html
                .contains("Mug &lt;large&gt; &amp; &quot;fine&quot;")
        );
        assert!(!mail.html.contains("<large>"));
    }

    #[test]
    fn a_rejection_gives_the_reason() {
        let order = order(
            OrderStatus::Rejected,
            Some(RejectionReason::PaymentDeclined),
        );
        let mail = order_rejected(&order);
        for body in [&mail.text, &mail.html] {
            assert!(body.contains("payment was declined"), "{body}");
            assert!(body.contains("payment_declined"), "{body}");
            assert!(body.contains(&order.id.to_string()), "{body}");
        }
        let out_of_stock = order_rejected(&self::order(
            OrderStatus::Rejected,
            Some(RejectionReason::OutOfStock),
        ));
        assert!(out_of_stock.text.contains("out_of_stock"));
    }

    #[test]
    fn a_cancellation_and_a_refund_name_the_amount() {
        let order = order(OrderStatus::Cancelled, None);
        let cancelled = order_cancelled(&order);
        assert!(cancelled.subject.contains("cancelled"));
        assert!(cancelled.text.contains("25.00 EUR"));
        let refunded = payment_refunded(order.id, &eur(2500));
        assert!(refunded.text.contains("25.00 EUR"));
        assert!(refunded.html.contains(&order.id.to_string()));
    }

    #[test]
    fn stock_low_names_the_product() {
        let mail = stock_low(&StockLow {
            product_id: Uuid::new_v4(),
            sku: "MUG-1".into(),
            name: "Mug".into(),
            available: 3,
            threshold: 5,
        });
        assert!(mail.subject.contains("MUG-1"));
        assert!(mail.text.contains("is 3, below the threshold of 5"));
        assert!(mail.html.contains("<strong>3</strong>"));
    }
}
