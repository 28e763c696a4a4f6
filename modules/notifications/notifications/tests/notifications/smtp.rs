//! E-mail through SMTP, against a tiny SMTP sink on 127.0.0.1 written here: it speaks
//! EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP and QUIT and keeps what it received.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chassis::db::Backend;
use notifications_contract::{Channel, DeliveryStatus, NotificationsSettings};
use orders_contract::OrderStatus;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::support::{self, all, order, order_event, quick_settings};

/// One message as the sink received it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Received {
    pub(crate) from: String,
    pub(crate) to: Vec<String>,
    pub(crate) data: String,
}

/// A sink on a free port; what it received is in `received`.
pub(crate) struct SmtpSink {
    pub(crate) port: u16,
    pub(crate) received: Arc<Mutex<Vec<Received>>>,
}

impl SmtpSink {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let store = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let _ = session(socket, store).await;
                });
            }
        });
        Self { port, received }
    }
}

async fn session(
    socket: tokio::net::TcpStream,
    store: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink ESMTP ready\r\n").await?;
    let mut current = Received::default();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => write.write_all(b"250-sink\r\n250 8BITMIME\r\n").await?,
            "HELO" => write.write_all(b"250 sink\r\n").await?,
            "MAIL" => {
                current = Received {
                    from: command.clone(),
                    ..Received::default()
                };
                write.write_all(b"250 OK\r\n").await?;
            }
            "RCPT" => {
                current.to.push(command.clone());
                write.write_all(b"250 OK\r\n").await?;
            }
            "DATA" => {
                write.write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    data.push_str(&line);
                }
                current.data = data;
                store
                    .lock()
                    .expect("lock")
                    .push(std::mem::take(&mut current));
                write.write_all(b"250 OK queued\r\n").await?;
            }
            "RSET" | "NOOP" => write.write_all(b"250 OK\r\n").await?,
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => write.write_all(b"502 not implemented\r\n").await?,
        }
    }
}

#[tokio::test]
async fn a_confirmation_goes_through_smtp_with_recipient_subject_and_bodies() {
    let sink = SmtpSink::start().await;
    let settings = NotificationsSettings {
        smtp_url: Some(chassis::secret::SecretUrl::new(format!(
            "smtp://127.0.0.1:{}",
            sink.port
        ))),
        ..quick_settings()
    };
    let local = support::local(Backend::Sqlite, settings)
        .await
        .expect("sqlite");
    let workers = chassis::module::LocalModule::spawn_workers(&local.module);
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    let event = order_event(&order);
    local
        .module
        .service()
        .handle(&event)
        .await
        .expect("handled");
    local
        .module
        .service()
        .handle(&event)
        .await
        .expect("handled");

    let log = local.wait_for(order.id, all(1, DeliveryStatus::Sent)).await;
    assert_eq!(log[0].channel, Channel::Email);
    assert_eq!(log[0].recipient, "ada@example.com");

    let received = sink.received.lock().expect("lock").clone();
    assert_eq!(received.len(), 1, "{received:?}");
    let message = &received[0];
    assert!(
        message.from.contains("<shop@example.com>"),
        "{}",
        message.from
    );
    assert_eq!(message.to.len(), 1);
    assert!(
        message.to[0].contains("<ada@example.com>"),
        "{:?}",
        message.to
    );
    assert!(
        message
            .data
            .contains(&format!("Subject: Your order {} is confirmed", order.id)),
        "{}",
        message.data
    );
    assert!(message.data.contains("text/plain"), "{}", message.data);
    assert!(message.data.contains("text/html"), "{}", message.data);
    assert!(message.data.contains("25.00 EUR"), "{}", message.data);
    assert!(message.data.contains("MUG-1"), "{}", message.data);
    // No file is written when SMTP is configured.
    assert!(local.eml_files().is_empty());
    for worker in workers {
        worker.abort();
    }
}

#[tokio::test]
async fn an_smtp_server_that_is_down_means_retrying_then_failed() {
    // A port nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let settings = NotificationsSettings {
        smtp_url: Some(chassis::secret::SecretUrl::new(format!(
            "smtp://127.0.0.1:{port}"
        ))),
        ..quick_settings()
    };
    let local = support::local(Backend::Sqlite, settings)
        .await
        .expect("sqlite");
    let workers = chassis::module::LocalModule::spawn_workers(&local.module);
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    local
        .module
        .service()
        .handle(&order_event(&order))
        .await
        .expect("handled");
    let log = local
        .wait_for(order.id, all(1, DeliveryStatus::Failed))
        .await;
    assert_eq!(log[0].attempts, 3);
    assert!(
        log[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("SMTP")),
        "{log:?}"
    );
    for worker in workers {
        worker.abort();
    }
}

/// An SMTP server that accepts the connection and then never answers fails the attempt
/// after `notifications.smtp_timeout`, like one that is down: the attempt, and the e-mail
/// slot it holds, do not hang.
#[tokio::test]
async fn an_smtp_server_that_never_answers_fails_the_attempt_after_smtp_timeout() {
    let (port, _accepted) = support::hanging_server().await;
    let settings = NotificationsSettings {
        smtp_url: Some(chassis::secret::SecretUrl::new(format!(
            "smtp://127.0.0.1:{port}"
        ))),
        smtp_timeout: Duration::from_millis(300),
        max_attempts: 1,
        ..quick_settings()
    };
    let local = support::local(Backend::Sqlite, settings)
        .await
        .expect("sqlite");
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    local
        .module
        .service()
        .handle(&order_event(&order))
        .await
        .expect("handled");
    let log = local
        .wait_for(order.id, all(1, DeliveryStatus::Failed))
        .await;
    assert_eq!(
        log[0].last_error.as_deref(),
        Some("SMTP: timed out after 300ms"),
        "{log:?}"
    );
}

/// The handler sends an e-mail itself only with a free e-mail slot (`notifications.concurrency`):
/// while an SMTP server that never answers holds the only one, the next order's e-mail is
/// recorded, left unattempted, and attempted by the worker once the slot is free. The
/// worker's poll is an hour away: the freed slot itself wakes it, because an e-mail was
/// left for it.
#[tokio::test]
async fn an_e_mail_waits_for_a_free_e_mail_slot() {
    let (port, accepted) = support::hanging_server().await;
    let settings = NotificationsSettings {
        smtp_url: Some(chassis::secret::SecretUrl::new(format!(
            "smtp://127.0.0.1:{port}"
        ))),
        smtp_timeout: Duration::from_millis(500),
        concurrency: 1,
        max_attempts: 1,
        poll_interval: Duration::from_secs(3600),
        ..quick_settings()
    };
    let local = support::local(Backend::Sqlite, settings)
        .await
        .expect("sqlite");
    let service = local.module.service();
    let workers = chassis::module::LocalModule::spawn_workers(&local.module);
    let first = order(OrderStatus::Confirmed, "ada@example.com");
    service.handle(&order_event(&first)).await.expect("handled");
    // The first e-mail's session hangs, holding the only slot until `smtp_timeout`.
    support::wait_for_connections(&accepted, 1).await;

    let second = order(OrderStatus::Confirmed, "bob@example.com");
    service
        .handle(&order_event(&second))
        .await
        .expect("handled");
    // Long enough for an attempt to be made, well within the 500 ms of `smtp_timeout`.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let log = local
        .module
        .port()
        .deliveries(second.id)
        .await
        .expect("log");
    assert_eq!(
        (log.len(), log[0].status, log[0].attempts),
        (1, DeliveryStatus::Retrying, 0),
        "no slot, so not attempted yet: {log:?}"
    );
    local
        .wait_for(second.id, |log| log.iter().any(|d| d.attempts == 1))
        .await;
    for worker in workers {
        worker.abort();
    }
}
