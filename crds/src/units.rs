//! Durations and sizes as people write them in Weir's resources: one parser for each, used
//! by the operator, the worker, the CLI and the tests, so that `7d` or `10Gi` means the
//! same everywhere and a value too large for its use is an error, never clamped.

use std::time::Duration;

/// Reads a duration such as `7d`, `12h`, `1h30m` or `500ms`.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration such as 7d, 12h or 30m ({e})"))
}

/// Reads a duration as whole milliseconds; one longer than 64-bit milliseconds hold is an
/// error.
pub fn duration_ms(text: &str) -> Result<i64, String> {
    let d = duration(text)?;
    i64::try_from(d.as_millis()).map_err(|_| format!("{text:?} is too long"))
}

/// Reads a size such as `10Gi`, `500Mi`, `1G` or `4096` (bytes) as bytes: decimal units
/// `K`, `M`, `G`, `T` and binary ones `Ki`, `Mi`, `Gi`, `Ti`, as Kubernetes quantities.
pub fn size_bytes(text: &str) -> Result<i64, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 10Gi or 500Mi"))?;
    let factor: i64 = match unit {
        "" => 1,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?} (use K, M, G, T, Ki, Mi, Gi or Ti)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them_and_never_clamp() {
        assert_eq!(duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(duration_ms("12h"), Ok(43_200_000));
        assert_eq!(duration_ms("500ms"), Ok(500));
        assert_eq!(duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(duration_ms("soon").is_err());
        let e = duration_ms("300000000000000000s").expect_err("too long");
        assert!(e.ends_with("is too long"), "{e}");
    }

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(size_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(size_bytes("2G"), Ok(2_000_000_000));
        assert_eq!(size_bytes("4096"), Ok(4096));
        assert!(
            size_bytes("1Pi")
                .expect_err("unit")
                .contains("unknown unit")
        );
        assert!(
            size_bytes("9999999999Ti")
                .expect_err("big")
                .ends_with("is too large")
        );
    }
}
