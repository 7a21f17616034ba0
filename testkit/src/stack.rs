//! Connection settings of the local data stack (`hack/stack.env`, overridable from the
//! environment) and reachability checks with actionable failures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The stack's defaults, compiled in so a test run needs no shell to have sourced anything.
const STACK_ENV: &str = include_str!("../../hack/stack.env");

const HOW_TO_START: &str = "start the local stack with `make dev-up` (`make test` does this \
     itself), or point the tests at your own servers with KAFKA_BOOTSTRAP / DATABASE_URL";

/// Where the tests find Kafka and PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub kafka_bootstrap: String,
    pub database_url: String,
}

/// Parses `KEY=VALUE` lines, skipping blanks and `#` comments.
fn parse_env_file(text: &str) -> HashMap<&str, &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

fn resolve(
    defaults: &HashMap<&str, &str>,
    key: &str,
    env: impl Fn(&str) -> Option<String>,
) -> String {
    env(key)
        .filter(|v| !v.is_empty())
        .or_else(|| defaults.get(key).map(|v| (*v).to_owned()))
        .unwrap_or_default()
}

/// The local S3-compatible store (`hack/s3/s3.sh`) for savepoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// `http://host:port`.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Settings {
    /// The `AWS_*` variables a worker reads for `s3://` savepoint URLs (plain HTTP on loopback,
    /// path-style requests).
    pub fn aws_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", self.region.as_str()),
            ("AWS_ACCESS_KEY_ID", self.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

/// The S3 settings in force (environment first, then `hack/stack.env`), after checking the
/// server accepts connections.
///
/// # Panics
/// When nothing listens at the endpoint, with a message saying how to start it.
#[track_caller]
pub fn s3() -> S3Settings {
    let defaults = parse_env_file(STACK_ENV);
    let env = |k: &str| std::env::var(k).ok();
    let s = S3Settings {
        endpoint: resolve(&defaults, "S3_ENDPOINT", env),
        bucket: resolve(&defaults, "S3_BUCKET", env),
        region: resolve(&defaults, "S3_REGION", env),
        access_key: resolve(&defaults, "S3_ACCESS_KEY", env),
        secret_key: resolve(&defaults, "S3_SECRET_KEY", env),
    };
    let host_port = s.endpoint.trim_start_matches("http://");
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
    assert!(
        reachable,
        "no S3 server at {} (S3_ENDPOINT). This test needs the local one: start the local stack \
         with `make dev-up` (`make test` does this itself)",
        s.endpoint
    );
    s
}

/// The settings in force: environment first, then `hack/stack.env`.
pub fn settings() -> Settings {
    let defaults = parse_env_file(STACK_ENV);
    let env = |k: &str| std::env::var(k).ok();
    Settings {
        kafka_bootstrap: resolve(&defaults, "KAFKA_BOOTSTRAP", env),
        database_url: resolve(&defaults, "DATABASE_URL", env),
    }
}

/// A name no other test (or earlier run) uses: topics, slots and groups stay independent.
pub fn unique_name(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}_{}_{seq}_{:x}",
        std::process::id(),
        nanos % 0xffff_ffff
    )
}

/// The Kafka bootstrap address, after checking a broker answers a metadata request.
///
/// # Panics
/// When no broker answers within 10 s, with a message saying how to start one.
#[track_caller]
pub fn kafka_bootstrap() -> String {
    let bootstrap = settings().kafka_bootstrap;
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("socket.connection.setup.timeout.ms", "3000")
        .create()
    {
        Ok(c) => c,
        Err(e) => panic!("cannot create a Kafka client for {bootstrap}: {e}"),
    };
    if let Err(e) = consumer.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "Kafka is not reachable at {bootstrap} (KAFKA_BOOTSTRAP): {e}.\n\
             This test needs a real broker: {HOW_TO_START}."
        );
    }
    bootstrap
}

/// A connected PostgreSQL client; its connection task runs on the current tokio runtime.
///
/// # Panics
/// When PostgreSQL does not accept the connection, with a message saying how to start it.
pub async fn postgres() -> tokio_postgres::Client {
    let url = settings().database_url;
    let connect = tokio_postgres::connect(&url, tokio_postgres::NoTls);
    let (client, connection) = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => panic!(
            "PostgreSQL is not reachable at {} (DATABASE_URL): {e}.\n\
             This test needs a real server: {HOW_TO_START}.",
            redact(&url)
        ),
        Err(_) => panic!(
            "PostgreSQL at {} (DATABASE_URL) did not answer within 10 s: {HOW_TO_START}.",
            redact(&url)
        ),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("PostgreSQL connection closed: {e}");
        }
    });
    client
}

/// Hides the password of a `postgres://user:password@host` URL in messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_parsing_skips_comments_and_blanks() {
        let m = parse_env_file("# c\n\nA=1\n B = two \nnoequals\n");
        assert_eq!(m.get("A"), Some(&"1"));
        assert_eq!(m.get("B"), Some(&"two"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn environment_overrides_the_file_and_empty_means_unset() {
        let d = parse_env_file("K=file");
        assert_eq!(resolve(&d, "K", |_| Some("env".into())), "env");
        assert_eq!(resolve(&d, "K", |_| Some(String::new())), "file");
        assert_eq!(resolve(&d, "K", |_| None), "file");
    }

    #[test]
    fn the_checked_in_stack_file_names_both_servers() {
        let d = parse_env_file(STACK_ENV);
        assert!(d.contains_key("KAFKA_BOOTSTRAP"));
        assert!(d.contains_key("DATABASE_URL"));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:1/db"),
            "postgres://u:***@h:1/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("t"), unique_name("t"));
    }
}
