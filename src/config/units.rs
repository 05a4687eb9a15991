//! Sizes ("64KiB") and durations ("500ms", "off") as the config file writes
//! them, with errors that show the expected form.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let text = String::deserialize(d)?;
    let parsed: bytesize::ByteSize = text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid size `{text}` (write it like \"64KiB\" or \"1MiB\")"
        ))
    })?;
    // bytesize saturates ("16EiB" is u64::MAX); anything near that would
    // overflow the sums made with these sizes (head + body, reservations).
    if parsed.as_u64() > MAX_SIZE {
        return Err(serde::de::Error::custom(format!(
            "size `{text}` too large (at most 1TiB)"
        )));
    }
    usize::try_from(parsed.as_u64()).map_err(|_| serde::de::Error::custom("size too large"))
}

/// Largest size a config value may name.
const MAX_SIZE: u64 = 1 << 40;

pub(super) fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    size(d).map(Some)
}

/// A duration, or "off" (also "0s") for none.
pub(super) fn optional_duration_or_off<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim() == "off" {
        return Ok(None);
    }
    let parsed = humantime::parse_duration(&text).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid duration `{text}` (write it like \"500ms\", \"30s\" or \"1h\", or \"off\")"
        ))
    })?;
    Ok(Some(parsed).filter(|d| !d.is_zero()))
}

pub(super) fn optional_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid duration `{text}` (write it like \"500ms\", \"30s\" or \"1h\")"
        ))
    })
}
