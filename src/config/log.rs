//! `[log]`: the message log's durability, segments and retention.

use serde::Deserialize;

use super::check::range;
use super::ConfigError;
use crate::log::{FsyncMode, MAX_SEGMENT_BYTES};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub fsync: FsyncMode,
    pub segment_bytes: u64,
    pub retain_messages: u64,
    pub retain_bytes: u64,
    pub max_pending: usize,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            fsync: FsyncMode::Batch,
            segment_bytes: 64 << 20,
            retain_messages: 1_000_000,
            retain_bytes: 1 << 30,
            max_pending: 65_536,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub fsync: FsyncMode,
    pub segment_bytes: u64,
    pub retain_messages: u64,
    pub retain_bytes: u64,
    pub max_pending: usize,
}

impl RawLog {
    pub fn validate(&self, file: &str) -> Result<LogConfig, ConfigError> {
        let l = self;
        let log = LogConfig {
            fsync: l.fsync,
            segment_bytes: range!(file, "log", l.segment_bytes, 64 << 10, MAX_SEGMENT_BYTES),
            retain_messages: range!(file, "log", l.retain_messages, 1_000, 1 << 40),
            retain_bytes: range!(file, "log", l.retain_bytes, 1 << 20, 1 << 50),
            max_pending: range!(file, "log", l.max_pending, 16, 1 << 22),
        };
        // Retention drops whole segments.
        if log.retain_bytes < 2 * log.segment_bytes {
            return Err(ConfigError::invalid(
                file,
                "log.retain_bytes",
                format!(
                    "{} must be at least two segments (2 x log.segment_bytes = {}), as retention drops whole segments",
                    log.retain_bytes,
                    2 * log.segment_bytes
                ),
            ));
        }
        Ok(log)
    }
}
