//! Numbers an integer column would truncate.
//!
//! arrow-json reads a JSON number into an integer column by parsing it as an integer or,
//! failing that, as a double cast to the integer: `1.9` silently becomes `1`. Weir refuses
//! such a record instead (the worker dead-letters it, `weir test` names it). A number whose
//! value is whole (`3`, `3.0`, `3e2`) is exact and accepted.
//!
//! [`lossy_integer`] finds one in a record's raw JSON with one pass over its bytes (no
//! parsing into values), so the worker can afford it on every record; [`lossy_value`] does
//! the same for a value already parsed. Only top-level fields are checked: an integer
//! inside a `struct` or `list` field is still read as arrow-json reads it.

use arrow::datatypes::{DataType, Schema};

/// The names of `schema`'s top-level integer fields.
pub fn integer_fields(schema: &Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .filter(|f| f.data_type().is_integer())
        .map(|f| f.name().clone())
        .collect()
}

/// Whether a number, written as `text`, is exact in an integer column: no fraction. Text
/// that is not a number, or out of range, is arrow-json's error to report.
fn whole(text: &str) -> bool {
    if !text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return true;
    }
    text.parse::<f64>()
        .map_or(true, |v| v.fract() == 0.0 && v.abs() < 9.3e18)
}

/// The first top-level field of the JSON object `json` that is one of `integers` and holds
/// a number with a fraction: `(field, the number as written)`.
pub fn lossy_integer(json: &[u8], integers: &[String]) -> Option<(String, String)> {
    if integers.is_empty() {
        return None;
    }
    // The current top-level key, as its raw bytes between the quotes (no allocation: this
    // runs on every record) and whether it had escapes.
    let mut key: Option<(&[u8], bool)> = None;
    let mut depth = 0usize;
    let mut in_value = false;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i + 1;
                let (j, escaped) = string_end(json, start);
                if depth == 1 && !in_value {
                    key = Some((&json[start..j.min(json.len())], escaped));
                }
                i = j + 1;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b':' if depth == 1 => in_value = true,
            b',' if depth == 1 => {
                in_value = false;
                key = None;
            }
            b'-' | b'0'..=b'9' if depth == 1 && in_value => {
                let start = i;
                while i < json.len()
                    && matches!(json[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let text = std::str::from_utf8(&json[start..i]).unwrap_or_default();
                if !whole(text)
                    && let Some(name) = key.and_then(|k| integer_named(k, integers))
                {
                    return Some((name, text.to_owned()));
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Where the JSON string whose contents start at `start` ends (the index of its closing
/// quote, or the end of `json` if it has none), and whether it has escapes. Jumps from
/// quote or backslash to the next with SIMD search: strings are most of a record's bytes.
fn string_end(json: &[u8], start: usize) -> (usize, bool) {
    let mut j = start;
    let mut escaped = false;
    while let Some(k) = memchr::memchr2(b'"', b'\\', json.get(j..).unwrap_or_default()) {
        if json[j + k] == b'"' {
            return (j + k, escaped);
        }
        // A backslash escapes the byte after it (which may be a quote).
        escaped = true;
        j += k + 2;
    }
    (json.len(), escaped)
}

/// The integer field a raw JSON key (the bytes between its quotes) names, if any.
fn integer_named((raw, escaped): (&[u8], bool), integers: &[String]) -> Option<String> {
    let name = if escaped {
        let mut quoted = Vec::with_capacity(raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(raw);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted).ok()?
    } else {
        std::str::from_utf8(raw).ok()?.to_owned()
    };
    integers.contains(&name).then_some(name)
}

/// Whether `value`, bound for a column of `data_type`, is a number that column would
/// truncate.
pub fn lossy_value(value: &serde_json::Value, data_type: &DataType) -> bool {
    match value {
        serde_json::Value::Number(n) if data_type.is_integer() && n.is_f64() => {
            !whole(&n.to_string())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints() -> Vec<String> {
        vec!["price".into(), "qty".into()]
    }

    #[test]
    fn a_fraction_in_an_integer_field_is_found_with_its_field() {
        let found = lossy_integer(br#"{"name": "a", "price": 1.9, "qty": 2}"#, &ints());
        assert_eq!(found, Some(("price".into(), "1.9".into())));
        assert_eq!(
            lossy_integer(br#"{"qty":-2.5e-1}"#, &ints()),
            Some(("qty".into(), "-2.5e-1".into()))
        );
    }

    #[test]
    fn whole_numbers_strings_and_other_fields_pass() {
        for ok in [
            r#"{"price": 3, "qty": 3.0, "ratio": 0.5}"#,
            r#"{"price": 3e2, "note": "price: 1.9", "v1.9": 1.9}"#,
            r#"{"nested": {"price": 1.9}, "list": [1.5], "price": -7}"#,
            r#"{"na\"me": "x\\", "price": 1}"#,
            r#"{"price": null, "qty": "1.9"}"#,
            "not json at all 1.9",
            // Cut off inside a string, after a backslash: the scan ends, nothing is read.
            r#"{"price": 1, "note": "a\"#,
            r#"{"price": 1, "note": "a\\"#,
        ] {
            assert_eq!(lossy_integer(ok.as_bytes(), &ints()), None, "{ok}");
        }
        assert_eq!(lossy_integer(br#"{"price": 1.9}"#, &[]), None);
    }

    #[test]
    fn an_escaped_key_is_read_as_json_reads_it() {
        let ints = vec!["pr\"ice".to_owned()];
        assert_eq!(
            lossy_integer(br#"{"pr\"ice": 0.5}"#, &ints),
            Some(("pr\"ice".into(), "0.5".into()))
        );
    }

    #[test]
    fn a_parsed_value_is_checked_the_same_way() {
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("json");
        assert!(lossy_value(&v("1.9"), &DataType::Int64));
        assert!(!lossy_value(&v("1.0"), &DataType::Int32));
        assert!(!lossy_value(&v("1.9"), &DataType::Float64));
        assert!(!lossy_value(&v("19"), &DataType::Int64));
    }
}
