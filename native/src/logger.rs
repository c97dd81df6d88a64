//! The `log` crate's records to Envoy's log (its `dynamic_modules` logger), so the core's logs
//! read the same as in the wasm build.

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::ffi::abi::{self, LogLevel};

struct EnvoyLog;

static LOGGER: EnvoyLog = EnvoyLog;

fn level(l: Level) -> LogLevel {
    match l {
        Level::Error => LogLevel::Error,
        Level::Warn => LogLevel::Warn,
        Level::Info => LogLevel::Info,
        Level::Debug => LogLevel::Debug,
        Level::Trace => LogLevel::Trace,
    }
}

impl Log for EnvoyLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        abi::log_enabled(level(metadata.level()))
    }

    fn log(&self, record: &Record<'_>) {
        let l = level(record.level());
        if abi::log_enabled(l) {
            abi::log(l, &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once per process; a second call is a no-op).
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Trace);
    }
}
