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

/// A value written as text in a resource, kept as written (so server-side apply and
/// `kubectl diff` see what the user wrote) and read through one of this module's parsers.
/// The CRD schema checks its shape with `pattern`; the parser checks its range.
macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident, $pattern:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The text as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                Self(text.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                Self(text)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "pattern": $pattern })
            }
        }
    };
}

text_value!(
    /// A duration such as `5s`, `1h30m` or `500ms`.
    DurationText,
    "^([0-9]+(ms|s|m|h|d))+$"
);

impl DurationText {
    /// The duration.
    pub fn get(&self) -> Result<Duration, String> {
        duration(&self.0)
    }

    /// The duration in whole milliseconds.
    pub fn millis(&self) -> Result<i64, String> {
        duration_ms(&self.0)
    }
}

text_value!(
    /// How long Kafka keeps records: a duration such as `7d`, or `-1`/`forever`.
    RetentionText,
    "^(-1|forever|([0-9]+(ms|s|m|h|d|w))+)$"
);

impl RetentionText {
    /// Kafka's `retention.ms`: `-1` for forever.
    pub fn millis(&self) -> Result<i64, String> {
        match self.0.as_str() {
            "-1" | "forever" => Ok(-1),
            other => duration_ms(other),
        }
    }
}

text_value!(
    /// A size such as `10Gi`, `500Mi` or `4096` (bytes).
    SizeText,
    "^[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?$"
);

impl SizeText {
    /// The size in bytes.
    pub fn bytes(&self) -> Result<i64, String> {
        size_bytes(&self.0)
    }
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
    fn typed_values_read_through_the_one_parser_and_keep_the_text() {
        let r: RetentionText = serde_json::from_str(r#""forever""#).unwrap();
        assert_eq!(r.millis(), Ok(-1));
        assert_eq!(RetentionText::from("1w").millis(), Ok(7 * 86_400_000));
        assert_eq!(DurationText::from("1h30m").millis(), Ok(5_400_000));
        assert_eq!(SizeText::from("1Gi").bytes(), Ok(1 << 30));
        assert_eq!(
            serde_json::to_string(&SizeText::from("10Gi")).unwrap(),
            r#""10Gi""#
        );
        let schema = schemars::schema_for!(DurationText);
        assert_eq!(schema.get("type").and_then(|t| t.as_str()), Some("string"));
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
