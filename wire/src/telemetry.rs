//! Logging and metrics plumbing of both binaries. Logging: JSON lines by default (what log collectors parse), plain text for people at a
//! terminal. The level comes from `KARTFLOW_LOG` (an `EnvFilter` directive, default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    // pg_walstream logs every cancelled wait at info; the CDC worker cancels one each idle tick
    // and logs what matters (connects, errors) itself.
    let filter = EnvFilter::try_from_env("KARTFLOW_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,pg_walstream=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
}

/// Unwraps a metric definition. Definitions are static, so a failure is a programming error
/// that the binaries' metric tests catch.
pub fn must<T>(r: Result<T, prometheus::Error>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

/// A registry in the Prometheus text exposition format, for `/metrics`.
pub fn render(registry: &prometheus::Registry) -> String {
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&registry.gather(), &mut out) {
        out = format!("# encoding metrics failed: {e}\n");
    }
    out
}
