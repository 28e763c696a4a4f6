//! How a delivery travels: SMTP (lettre), an `.eml` file, or a signed webhook POST.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::signature;
use crate::target::{self, CheckedResolver, TargetError, TargetPolicy};

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Worth trying again (timeouts, refused connections, 5xx, …).
    Transient(String),
    /// Will never work (an address that does not parse, a deleted webhook): give up now.
    Permanent(String),
}

/// An e-mail to send, as stored.
#[derive(Debug, Clone)]
pub(crate) struct Mail<'a> {
    pub(crate) id: &'a str,
    pub(crate) to: &'a str,
    pub(crate) subject: &'a str,
    pub(crate) text: &'a str,
    pub(crate) html: &'a str,
}

/// Builds the MIME message: `multipart/alternative` with the text and the HTML body.
pub(crate) fn message(from: &str, mail: &Mail<'_>) -> Result<Message, Failure> {
    let from: Mailbox = from
        .parse()
        .map_err(|error| Failure::Permanent(format!("sender {from:?}: {error}")))?;
    let to: Mailbox = mail
        .to
        .parse()
        .map_err(|error| Failure::Permanent(format!("recipient {:?}: {error}", mail.to)))?;
    let domain = from.email.domain().to_owned();
    Message::builder()
        .from(from)
        .to(to)
        .subject(mail.subject)
        .message_id(Some(format!("<{}@{domain}>", mail.id)))
        .multipart(MultiPart::alternative_plain_html(
            mail.text.to_owned(),
            mail.html.to_owned(),
        ))
        .map_err(|error| Failure::Permanent(format!("cannot build the message: {error}")))
}

/// Where e-mails go.
#[derive(Clone)]
pub(crate) enum Mailer {
    /// The transport, and the longest wait for one message (`notifications.smtp_timeout`).
    Smtp(Result<AsyncSmtpTransport<Tokio1Executor>, String>, Duration),
    /// `<data_dir>/outbox-mail/`.
    File(Result<Arc<FileWriter>, String>),
}

/// A file to write, and whom to tell when it is written.
type FileJob = (
    String,
    Vec<u8>,
    tokio::sync::oneshot::Sender<std::io::Result<()>>,
);

/// The one thread that writes the `.eml` files of a folder, one after the other.
///
/// Creating a file locks the folder, and where creating one is slow (ext4 without a
/// journal, after many files were deleted, scans past every inode freed in the last
/// minutes) writers in parallel only spin on that lock, taking the CPU the rest of the
/// process needs; one writer draining a queue also spares a hand-off to a blocking thread
/// per file. The thread ends when the last `Mailer` using it is dropped.
pub(crate) struct FileWriter {
    folder: PathBuf,
    jobs: std::sync::mpsc::SyncSender<FileJob>,
}

/// Most `.eml` files waiting for the writer. Each sender waits for its file and holds an
/// e-mail slot meanwhile, so the queue never holds more than `notifications.concurrency`;
/// the bound makes that a fact of the queue too: past it a send fails as transient (the
/// delivery is retried later), never queues without end.
const MAX_QUEUED_FILES: usize = 1024;

impl FileWriter {
    fn start(folder: PathBuf) -> Result<Self, String> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<FileJob>(MAX_QUEUED_FILES);
        let target = folder.clone();
        std::thread::Builder::new()
            .name("eml-writer".into())
            .spawn(move || {
                for (name, bytes, done) in queue {
                    let _caller_gone = done.send(write_eml(&target, &name, &bytes));
                }
            })
            .map_err(|error| format!("cannot start the .eml writer: {error}"))?;
        Ok(Self { folder, jobs })
    }

    async fn write(&self, name: String, bytes: Vec<u8>) -> std::io::Result<()> {
        let (done, written) = tokio::sync::oneshot::channel();
        let stopped = || std::io::Error::other("the .eml writer has stopped");
        self.jobs
            .try_send((name, bytes, done))
            .map_err(|error| match error {
                std::sync::mpsc::TrySendError::Full(_) => std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!("{MAX_QUEUED_FILES} .eml files are waiting to be written"),
                ),
                std::sync::mpsc::TrySendError::Disconnected(_) => stopped(),
            })?;
        written.await.map_err(|_| stopped())?
    }
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailer::Smtp(..) => f.write_str("Mailer::Smtp"),
            Mailer::File(Ok(writer)) => {
                f.debug_tuple("Mailer::File").field(&writer.folder).finish()
            }
            Mailer::File(Err(error)) => f.debug_tuple("Mailer::File").field(error).finish(),
        }
    }
}

impl Mailer {
    /// SMTP to `smtp_url` when set (plain `smtp://`, STARTTLS with `?tls=required`, TLS
    /// with `smtps://`), else files under `<data_dir>/outbox-mail/`.
    pub(crate) fn new(smtp_url: Option<&str>, data_dir: &Path, timeout: Duration) -> Self {
        match smtp_url {
            Some(url) => {
                chassis::remote::install_tls_provider();
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map(|builder| builder.timeout(Some(timeout)).build())
                    .map_err(|error| format!("notifications.smtp_url: {error}"));
                Mailer::Smtp(transport, timeout)
            }
            None => Mailer::File(FileWriter::start(data_dir.join("outbox-mail")).map(Arc::new)),
        }
    }

    pub(crate) async fn send(&self, message: Message, id: &str) -> Result<(), Failure> {
        match self {
            Mailer::Smtp(Err(error), _) => Err(Failure::Transient(error.clone())),
            // lettre's own timeout bounds connecting only: a server that accepts and then
            // never answers would hold the attempt, and its e-mail slot, for good.
            Mailer::Smtp(Ok(transport), timeout) => {
                match tokio::time::timeout(*timeout, transport.send(message)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(error)) if error.is_permanent() => {
                        Err(Failure::Permanent(format!("SMTP: {error}")))
                    }
                    Ok(Err(error)) => Err(Failure::Transient(format!("SMTP: {error}"))),
                    Err(_) => Err(Failure::Transient(format!(
                        "SMTP: timed out after {timeout:?}"
                    ))),
                }
            }
            Mailer::File(Err(error)) => Err(Failure::Transient(error.clone())),
            Mailer::File(Ok(writer)) => writer
                .write(format!("{id}.eml"), message.formatted())
                .await
                .map_err(|error| Failure::Transient(format!("file channel: {error}"))),
        }
    }
}

/// Writes `<folder>/<name>` whole or not at all: a retry overwrites the same file, so one
/// message is one file.
/// The folder is made when a write finds it missing, not checked before every file.
fn write_eml(folder: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let partial = folder.join(format!(".{name}.partial"));
    if let Err(error) = std::fs::write(&partial, bytes) {
        if error.kind() != std::io::ErrorKind::NotFound {
            return Err(error);
        }
        std::fs::create_dir_all(folder)?;
        std::fs::write(&partial, bytes)?;
    }
    std::fs::rename(&partial, folder.join(name))
}

/// POSTs events to webhooks, to targets the policy allows only.
#[derive(Debug, Clone)]
pub(crate) struct WebhookSender {
    client: Result<reqwest::Client, String>,
    policy: TargetPolicy,
}

impl WebhookSender {
    pub(crate) fn new(timeout: Duration, policy: TargetPolicy) -> Self {
        chassis::remote::install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Bazaar-Webhooks/1")
            // Names are resolved, checked and connected to in one place: the address the
            // policy allowed is the one connected to, whatever the name resolves to later.
            .dns_resolver(CheckedResolver { policy, timeout })
            // Through a proxy (HTTP_PROXY in the environment) the proxy would resolve the
            // name and connect, past the check: webhooks always go direct.
            .no_proxy()
            .build()
            .map_err(|error| format!("cannot build the webhook client: {error}"));
        Self { client, policy }
    }

    /// POSTs `body` (the event's envelope JSON) to `url`, signed under `secret`. Any 2xx
    /// answer is a success.
    ///
    /// A failure says timed out, could not connect or the HTTP status, never the OS's
    /// error: whoever may register webhooks reads the log, and a detailed connection error
    /// would tell them which ports are open where the server stands.
    pub(crate) async fn post(&self, url: &str, secret: &str, body: &str) -> Result<(), Failure> {
        let not_allowed = |why: &TargetError| {
            Failure::Permanent(format!("POST {url}: target not allowed: {why}"))
        };
        let parsed = url::Url::parse(url)
            .map_err(|_| Failure::Permanent(format!("POST {url}: not a URL")))?;
        // An address literal is connected to without a lookup, so the resolver never sees
        // it: check it here. A name is checked by the resolver, on every connection.
        self.policy
            .check_url(&parsed)
            .map_err(|why| not_allowed(&why))?;
        let client = self
            .client
            .as_ref()
            .map_err(|e| Failure::Transient(e.clone()))?;
        let signature = signature::sign(secret, body.as_bytes());
        let answer = client
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(signature::HEADER, signature)
            .body(body.to_owned())
            .send()
            .await
            .map_err(|error| match target::target_error(&error) {
                Some(refused @ TargetError::Refused(_)) => not_allowed(refused),
                Some(TargetError::Unresolved(why)) => {
                    Failure::Transient(format!("POST {url}: {why}"))
                }
                None => {
                    let what = if error.is_timeout() {
                        "timed out"
                    } else if error.is_connect() {
                        "could not connect"
                    } else {
                        "request failed"
                    };
                    Failure::Transient(format!("POST {url}: {what}"))
                }
            })?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure::Transient(format!(
                "POST {url}: HTTP {}",
                status.as_u16()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail<'a>(to: &'a str) -> Mail<'a> {
        Mail {
            id: "0193-abc",
            to,
            subject: "Your order 42 is confirmed",
            text: "plain body",
            html: "<p>html body</p>",
        }
    }

    #[test]
    fn a_message_has_both_bodies() {
        let message =
            message("Bazaar <shop@example.com>", &mail("ada@example.com")).expect("builds");
        let text = String::from_utf8(message.formatted()).expect("utf-8");
        assert!(text.contains("To: ada@example.com"), "{text}");
        assert!(
            text.contains("Subject: Your order 42 is confirmed"),
            "{text}"
        );
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(
            text.contains("text/plain") && text.contains("text/html"),
            "{text}"
        );
        assert!(text.contains("plain body") && text.contains("<p>html body</p>"));
        assert!(
            text.contains("Message-ID: <0193-abc@example.com>"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_address_is_a_permanent_failure() {
        let failure = message("shop@example.com", &mail("not an address")).expect_err("bad");
        assert!(matches!(failure, Failure::Permanent(_)), "{failure:?}");
    }

    #[tokio::test]
    async fn the_file_channel_writes_one_eml_per_message_even_when_retried() {
        let folder = tempfile::tempdir().expect("tempdir");
        let mailer = Mailer::new(None, folder.path(), Duration::from_secs(1));
        for _ in 0..2 {
            let message = message("shop@example.com", &mail("ada@example.com")).expect("builds");
            mailer.send(message, "0193-abc").await.expect("written");
        }
        let files: Vec<_> = std::fs::read_dir(folder.path().join("outbox-mail"))
            .expect("folder")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(files, vec![std::ffi::OsString::from("0193-abc.eml")]);
    }

    /// A listener on 127.0.0.1 counting the connections it accepts (and holding them).
    async fn counting_listener() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        (port, accepted)
    }

    fn sender(allow_private: bool) -> WebhookSender {
        WebhookSender::new(Duration::from_millis(300), TargetPolicy { allow_private })
    }

    #[tokio::test]
    async fn a_delivery_to_a_disallowed_target_fails_for_good_without_connecting() {
        let (port, accepted) = counting_listener().await;
        // The address literal is checked before the request, the name by the resolver.
        for url in [
            format!("http://127.0.0.1:{port}/hook"),
            format!("http://localhost:{port}/hook"),
            format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        ] {
            let failure = sender(false)
                .post(&url, "s", "{}")
                .await
                .expect_err("refused");
            let Failure::Permanent(message) = &failure else {
                panic!("{url}: {failure:?}");
            };
            assert!(
                message.starts_with(&format!("POST {url}: target not allowed: ")),
                "{message}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_metadata_host_is_never_called_even_with_private_targets_allowed() {
        let failure = sender(true)
            .post(
                "http://metadata.google.internal/computeMetadata/v1/",
                "s",
                "{}",
            )
            .await
            .expect_err("refused");
        assert!(
            matches!(&failure, Failure::Permanent(message) if message.contains("target not allowed")),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn an_allowed_name_is_connected_to_through_the_checking_resolver() {
        let (port, accepted) = counting_listener().await;
        let url = format!("http://localhost:{port}/hook");
        let failure = sender(true).post(&url, "s", "{}").await.expect_err("hangs");
        assert_eq!(
            failure,
            Failure::Transient(format!("POST {url}: timed out"))
        );
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_closed_port_is_logged_as_could_not_connect_and_nothing_more() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        let url = format!("http://127.0.0.1:{port}/hook");
        let failure = sender(true)
            .post(&url, "s", "{}")
            .await
            .expect_err("closed");
        assert_eq!(
            failure,
            Failure::Transient(format!("POST {url}: could not connect"))
        );
    }
}
