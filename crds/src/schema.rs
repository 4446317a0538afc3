//! The record schema of a DataStream, and its conversion to an Arrow schema.
//!
//! Field types come from a small documented set: `string`, `int` (32-bit), `bigint`
//! (64-bit), `double`, `boolean`, `decimal` (with `precision` and `scale`), `date`,
//! `timestamp` (UTC, millisecond precision), `bytes`, and the nested `struct` (with
//! `fields`) and `list` (with `items`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, TimeUnit};
use schemars::{JsonSchema, Schema as JsonSchemaObject, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Arrow field metadata key holding a field's classification tags, comma-separated.
pub const CLASSIFICATION_METADATA: &str = "weir.classification";
/// Arrow field metadata key holding a field's description.
pub const DESCRIPTION_METADATA: &str = "weir.description";

/// The default precision of a `decimal` field.
pub const DEFAULT_DECIMAL_PRECISION: u8 = 38;
/// The default scale of a `decimal` field.
pub const DEFAULT_DECIMAL_SCALE: i8 = 9;

/// The fields of a record.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schema {
    /// The record's fields, in order.
    #[schemars(length(min = 1, max = 500))]
    pub fields: Vec<FieldSpec>,
}

/// One field of a record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldSpec {
    /// The field's name: letters, digits and underscores, not starting with a digit.
    /// (A list's `items` need none.)
    #[serde(default)]
    #[schemars(required, transform = without_default)]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,

    /// The field's type.
    #[serde(rename = "type")]
    pub type_: FieldType,

    /// Whether the field may be null or absent. Defaults to true.
    #[serde(default = "default_true")]
    pub nullable: bool,

    /// What the field means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,

    /// Classification tags such as `pii`, which flow along the field's lineage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub classification: Vec<String>,

    /// For `decimal`: the total number of digits (1–38, default 38).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 38), transform = without_format)]
    pub precision: Option<u8>,

    /// For `decimal`: the digits after the point (default 9, at most `precision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 38), transform = without_format)]
    pub scale: Option<i8>,

    /// For `struct`: its fields (each with the same shape as a top-level field). Structs
    /// and lists nest at most three levels below a top-level field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "nested_fields_schema")]
    pub fields: Vec<FieldSpec>,

    /// For `list`: the type of its elements (a field whose name is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_field_schema")]
    pub items: Option<Box<FieldSpec>>,
}

// `name` defaults to empty only so that a list's `items` may omit it; the CRD still
// requires it on every top-level field, and a structural schema may not default it to "".
fn without_default(schema: &mut JsonSchemaObject) {
    schema.remove("default");
}

/// Kubernetes knows no `uint8` or `int8` format and warns about them at every `kubectl
/// apply`; the range already bounds the value.
fn without_format(schema: &mut JsonSchemaObject) {
    schema.remove("format");
}

fn default_true() -> bool {
    true
}

/// How deep `struct` fields and `list` items may nest below a top-level field. The CRD
/// spells out the field schema at every level down to here, so the apiserver checks
/// nested fields as it checks top-level ones (a structural schema cannot be recursive).
pub const MAX_NESTING: usize = 3;

thread_local! {
    static NESTING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The schema of a nested field, one level down, or `None` at [`MAX_NESTING`].
fn nested(generator: &mut SchemaGenerator) -> Option<JsonSchemaObject> {
    let depth = NESTING.with(std::cell::Cell::get);
    if depth >= MAX_NESTING {
        return None;
    }
    NESTING.with(|n| n.set(depth + 1));
    let schema = FieldSpec::json_schema(generator);
    NESTING.with(|n| n.set(depth));
    // The top-level field documents each property; nested copies would repeat it
    // 2^MAX_NESTING times over.
    let mut value = schema.to_value();
    strip_descriptions(&mut value);
    JsonSchemaObject::try_from(value).ok()
}

fn strip_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map
                .get("description")
                .is_some_and(serde_json::Value::is_string)
            {
                map.remove("description");
            }
            map.values_mut().for_each(strip_descriptions);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

fn nested_fields_schema(generator: &mut SchemaGenerator) -> JsonSchemaObject {
    match nested(generator) {
        Some(field) => json_schema!({ "type": "array", "maxItems": 500, "items": field }),
        None => json_schema!({
            "type": "array",
            "maxItems": 0,
            "items": { "type": "object" },
            "description": format!("Fields nest at most {MAX_NESTING} levels deep."),
        }),
    }
}

fn nested_field_schema(generator: &mut SchemaGenerator) -> JsonSchemaObject {
    match nested(generator) {
        Some(field) => field,
        None => json_schema!({
            "type": "object",
            "maxProperties": 0,
            "description": format!("Fields nest at most {MAX_NESTING} levels deep."),
        }),
    }
}

/// The documented set of field types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FieldType {
    /// UTF-8 text.
    String,
    /// A 32-bit signed integer.
    Int,
    /// A 64-bit signed integer.
    Bigint,
    /// A 64-bit floating point number.
    Double,
    /// `true` or `false`.
    Boolean,
    /// An exact decimal number with `precision` digits, `scale` after the point.
    Decimal,
    /// A calendar date.
    Date,
    /// An instant, in UTC, with millisecond precision.
    Timestamp,
    /// Raw bytes (base64 in JSON).
    Bytes,
    /// A nested record with `fields`.
    Struct,
    /// A list of `items`.
    List,
}

/// A schema that cannot be turned into Arrow, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.schema.{path}: {message}")]
pub struct SchemaError {
    /// The field's path, such as `fields[2].items`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Schema {
    /// Converts the schema to an Arrow schema. Each field's description and
    /// classification travel in the Arrow field's metadata.
    pub fn to_arrow(&self) -> Result<arrow_schema::Schema, SchemaError> {
        let fields = fields_to_arrow(&self.fields, "fields")?;
        Ok(arrow_schema::Schema::new(fields))
    }

    /// The top-level field with this name.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }
}

fn fields_to_arrow(fields: &[FieldSpec], path: &str) -> Result<Fields, SchemaError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(fields.len());
    for (i, f) in fields.iter().enumerate() {
        let here = format!("{path}[{i}]");
        if !seen.insert(f.name.as_str()) {
            return Err(SchemaError {
                path: here,
                message: format!("duplicate field name {:?}", f.name),
            });
        }
        out.push(field_to_arrow(f, &here)?);
    }
    Ok(Fields::from(out))
}

fn field_to_arrow(f: &FieldSpec, path: &str) -> Result<Field, SchemaError> {
    let err = |message: String| SchemaError {
        path: path.to_owned(),
        message,
    };
    if f.name.is_empty() {
        return Err(err("a field needs a name".into()));
    }
    let mut chars = f.name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !valid_start || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(err(format!(
            "{:?} is not a valid field name (letters, digits and underscores, not starting with a digit)",
            f.name
        )));
    }
    if f.type_ != FieldType::Struct && !f.fields.is_empty() {
        return Err(err(format!(
            "only a struct has fields, not a {:?}",
            f.type_
        )));
    }
    if f.type_ != FieldType::List && f.items.is_some() {
        return Err(err(format!("only a list has items, not a {:?}", f.type_)));
    }
    if f.type_ != FieldType::Decimal && (f.precision.is_some() || f.scale.is_some()) {
        return Err(err("precision and scale apply only to a decimal".into()));
    }
    let data_type = match f.type_ {
        FieldType::String => DataType::Utf8,
        FieldType::Int => DataType::Int32,
        FieldType::Bigint => DataType::Int64,
        FieldType::Double => DataType::Float64,
        FieldType::Boolean => DataType::Boolean,
        FieldType::Decimal => {
            let precision = f.precision.unwrap_or(DEFAULT_DECIMAL_PRECISION);
            let scale = f
                .scale
                .unwrap_or(DEFAULT_DECIMAL_SCALE.min(precision as i8));
            if !(1..=38).contains(&precision) || scale < 0 || scale as u8 > precision {
                return Err(err(format!(
                    "decimal precision must be 1..=38 and scale 0..=precision, got ({precision}, {scale})"
                )));
            }
            DataType::Decimal128(precision, scale)
        }
        FieldType::Date => DataType::Date32,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        FieldType::Bytes => DataType::Binary,
        FieldType::Struct => {
            if f.fields.is_empty() {
                return Err(err("a struct needs at least one field".into()));
            }
            DataType::Struct(fields_to_arrow(&f.fields, &format!("{path}.fields"))?)
        }
        FieldType::List => {
            let items = f
                .items
                .as_deref()
                .ok_or_else(|| err("a list needs items".into()))?;
            let mut items = items.clone();
            items.name = "item".into();
            let item = field_to_arrow(&items, &format!("{path}.items"))?;
            DataType::List(Arc::new(item))
        }
    };
    let mut metadata = HashMap::new();
    if !f.classification.is_empty() {
        metadata.insert(
            CLASSIFICATION_METADATA.to_owned(),
            f.classification.join(","),
        );
    }
    if let Some(d) = &f.description {
        metadata.insert(DESCRIPTION_METADATA.to_owned(), d.clone());
    }
    Ok(Field::new(&f.name, data_type, f.nullable).with_metadata(metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, type_: FieldType) -> FieldSpec {
        FieldSpec {
            name: name.into(),
            type_,
            nullable: true,
            description: None,
            classification: vec![],
            precision: None,
            scale: None,
            fields: vec![],
            items: None,
        }
    }

    #[test]
    fn every_documented_type_maps_to_arrow() {
        let mut list = field("tags", FieldType::List);
        list.items = Some(Box::new(field("", FieldType::String)));
        let mut nested = field("address", FieldType::Struct);
        nested.fields = vec![
            field("city", FieldType::String),
            field("zip", FieldType::Int),
        ];
        let mut email = field("email", FieldType::String);
        email.classification = vec!["pii".into()];
        email.nullable = false;
        let schema = Schema {
            fields: vec![
                email,
                field("n", FieldType::Int),
                field("big", FieldType::Bigint),
                field("d", FieldType::Double),
                field("b", FieldType::Boolean),
                field("price", FieldType::Decimal),
                field("day", FieldType::Date),
                field("ts", FieldType::Timestamp),
                field("raw", FieldType::Bytes),
                nested,
                list,
            ],
        };
        let arrow = schema.to_arrow().expect("valid schema");
        let types: Vec<String> = arrow
            .fields()
            .iter()
            .map(|f| f.data_type().to_string())
            .collect();
        assert_eq!(types[0], "Utf8");
        assert_eq!(types[1], "Int32");
        assert_eq!(types[2], "Int64");
        assert_eq!(types[3], "Float64");
        assert_eq!(types[4], "Boolean");
        assert_eq!(arrow.field(5).data_type(), &DataType::Decimal128(38, 9));
        assert_eq!(arrow.field(6).data_type(), &DataType::Date32);
        assert_eq!(
            arrow.field(7).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
        assert_eq!(arrow.field(8).data_type(), &DataType::Binary);
        assert!(matches!(arrow.field(9).data_type(), DataType::Struct(f) if f.len() == 2));
        assert!(
            matches!(arrow.field(10).data_type(), DataType::List(i) if i.data_type() == &DataType::Utf8)
        );
        assert!(!arrow.field(0).is_nullable());
        assert_eq!(
            arrow
                .field(0)
                .metadata()
                .get(CLASSIFICATION_METADATA)
                .map(String::as_str),
            Some("pii")
        );
    }

    #[test]
    fn a_bad_nested_field_is_reported_with_its_path() {
        let mut list = field("tags", FieldType::List);
        let mut bad_struct = field("inner", FieldType::Struct);
        bad_struct.fields = vec![field("a", FieldType::Int), field("a", FieldType::Int)];
        list.items = Some(Box::new(bad_struct));
        let schema = Schema {
            fields: vec![field("id", FieldType::String), list],
        };
        let err = schema.to_arrow().expect_err("duplicate nested name");
        assert_eq!(err.path, "fields[1].items.fields[1]");
        assert!(
            err.to_string()
                .starts_with("spec.schema.fields[1].items.fields[1]: duplicate")
        );
    }

    #[test]
    fn a_list_without_items_is_an_error() {
        let schema = Schema {
            fields: vec![field("tags", FieldType::List)],
        };
        let err = schema.to_arrow().expect_err("no items");
        assert_eq!(err.message, "a list needs items");
    }

    #[test]
    fn nested_fields_deserialize_from_yaml() {
        let yaml = r#"
fields:
  - { name: id, type: string, nullable: false }
  - name: address
    type: struct
    fields:
      - { name: city, type: string }
  - { name: scores, type: list, items: { type: double } }
  - { name: amount, type: decimal, precision: 10, scale: 2 }
"#;
        let schema: Schema = serde_yaml::from_str(yaml).expect("parse");
        let arrow = schema.to_arrow().expect("valid");
        assert_eq!(arrow.field(3).data_type(), &DataType::Decimal128(10, 2));
    }
}
