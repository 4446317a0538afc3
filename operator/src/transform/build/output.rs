//! The output DataStream a Transform creates and owns, and the check that a DataStream
//! someone else declared can hold the Transform's output.

use std::collections::{BTreeMap, BTreeSet};

use weir_crds::data_stream::{Access, CleanupPolicy, DataStreamSpec, EventTime};
use weir_crds::schema::{FieldSpec, FieldType, Schema};
use weir_crds::{DataStream, Transform};
use weir_sql::{CompiledTransform, StreamKind};

use super::{TRANSFORM_LABEL, owner_ref};

/// Why a compiled output cannot be declared as a DataStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputError(pub String);

/// The output DataStream the Transform creates and owns: the compiled schema (with the
/// classifications of the input columns each output column derives from), key, kind and
/// event time, and `spec.output`'s topic settings.
pub fn output_data_stream(
    tf: &Transform,
    compiled: &CompiledTransform,
    inputs: &[&DataStream],
) -> Result<DataStream, OutputError> {
    let out = &tf.spec.output;
    let mut fields = Vec::new();
    for (field, lineage) in compiled
        .output_schema
        .fields()
        .iter()
        .zip(&compiled.lineage)
    {
        let mut spec = field_spec(field).map_err(|e| {
            OutputError(format!(
                "output column {:?}: {e}; CAST it to a DataStream type",
                field.name()
            ))
        })?;
        let mut classes = BTreeSet::new();
        for (source, column) in &lineage.sources {
            let Some(ds) = inputs
                .iter()
                .find(|d| weir_crds::compile::id_of(&d.metadata) == *source)
            else {
                continue;
            };
            if let Some(f) = ds.spec.schema.field(column) {
                classes.extend(f.classification.iter().cloned());
            }
        }
        spec.classification = classes.into_iter().collect();
        fields.push(spec);
    }
    let changelog = compiled.output_kind == StreamKind::Changelog;
    let cleanup_policy = out.cleanup_policy.unwrap_or(if changelog {
        CleanupPolicy::Compact
    } else {
        CleanupPolicy::Delete
    });
    let partitions = out
        .partitions
        .unwrap_or_else(|| inputs.iter().map(|d| d.spec.partitions).max().unwrap_or(1));
    let spec = DataStreamSpec {
        description: out
            .description
            .clone()
            .unwrap_or_else(|| tf.spec.description.clone()),
        owner: tf.spec.owner.clone(),
        topic: None,
        partitions,
        replication_factor: out.replication_factor,
        retention: out.retention.clone(),
        retention_size: None,
        cleanup_policy,
        config: BTreeMap::new(),
        config_ownership: Default::default(),
        format: Default::default(),
        schema: Schema { fields },
        key: if changelog {
            compiled.output_key.clone()
        } else {
            Vec::new()
        },
        event_time: compiled.output_event_time.as_ref().map(|f| EventTime {
            field: f.clone(),
            max_out_of_orderness: None,
            max_future_skew: None,
        }),
        access: (!out.readers.is_empty()).then(|| Access {
            readers: out.readers.clone(),
        }),
        deletion_policy: out.deletion_policy,
        kafka: None,
    };
    let mut ds = DataStream::new(&out.name, spec);
    ds.metadata.namespace = tf.metadata.namespace.clone();
    ds.metadata.owner_references = owner_ref(tf).map(|o| vec![o]);
    ds.metadata.labels = Some(BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".into(),
            crate::FIELD_MANAGER.into(),
        ),
        (
            TRANSFORM_LABEL.into(),
            tf.metadata.name.clone().unwrap_or_default(),
        ),
    ]));
    Ok(ds)
}

fn field_spec(field: &arrow_schema::Field) -> Result<FieldSpec, String> {
    use arrow_schema::DataType as T;
    let mut spec = FieldSpec {
        name: field.name().clone(),
        type_: FieldType::String,
        nullable: field.is_nullable(),
        description: None,
        classification: Vec::new(),
        precision: None,
        scale: None,
        fields: Vec::new(),
        items: None,
    };
    spec.type_ = match field.data_type() {
        T::Utf8 | T::LargeUtf8 | T::Utf8View => FieldType::String,
        T::Int8 | T::Int16 | T::Int32 | T::UInt8 | T::UInt16 => FieldType::Int,
        T::Int64 | T::UInt32 => FieldType::Bigint,
        T::Float16 | T::Float32 | T::Float64 => FieldType::Double,
        T::Boolean => FieldType::Boolean,
        T::Decimal128(p, s) => {
            spec.precision = Some(*p);
            spec.scale = Some(*s);
            FieldType::Decimal
        }
        T::Date32 | T::Date64 => FieldType::Date,
        T::Timestamp(_, _) => FieldType::Timestamp,
        T::Binary | T::LargeBinary | T::BinaryView => FieldType::Bytes,
        T::Struct(children) => {
            spec.fields = children
                .iter()
                .map(|c| field_spec(c))
                .collect::<Result<_, _>>()?;
            FieldType::Struct
        }
        T::List(item) | T::LargeList(item) => {
            let mut item = field_spec(item)?;
            item.name = String::new();
            spec.items = Some(Box::new(item));
            FieldType::List
        }
        other => return Err(format!("type {other} has no DataStream field type")),
    };
    Ok(spec)
}

/// Whether a DataStream someone declared can hold the compiled output: the same columns
/// with the same types in the same order, and for a changelog the same key. `Err` says
/// what differs.
pub fn check_declared_output(
    declared: &DataStream,
    built: &DataStream,
    compiled: &CompiledTransform,
) -> Result<(), String> {
    let have = declared
        .spec
        .schema
        .to_arrow()
        .map_err(|e| format!("its schema is invalid: {e}"))?;
    let want = &compiled.output_schema;
    let names = |s: &arrow_schema::Schema| -> Vec<String> {
        s.fields().iter().map(|f| f.name().clone()).collect()
    };
    if names(&have) != names(want) {
        return Err(format!(
            "its schema has columns [{}] but the SQL produces [{}]",
            names(&have).join(", "),
            names(want).join(", ")
        ));
    }
    for (h, w) in have.fields().iter().zip(want.fields()) {
        let expected = built
            .spec
            .schema
            .field(w.name())
            .map(|f| f.type_)
            .unwrap_or(FieldType::String);
        let declared_type = declared
            .spec
            .schema
            .field(h.name())
            .map(|f| f.type_)
            .unwrap_or(FieldType::String);
        if declared_type != expected {
            return Err(format!(
                "column {:?} is declared {declared_type:?} but the SQL produces {expected:?}",
                w.name()
            ));
        }
        if !h.is_nullable() && w.is_nullable() {
            return Err(format!(
                "column {:?} is declared not nullable but the SQL can produce NULL",
                w.name()
            ));
        }
    }
    if compiled.output_kind == StreamKind::Changelog && declared.spec.key != compiled.output_key {
        return Err(format!(
            "the SQL produces a changelog keyed by [{}] but the DataStream's key is [{}]",
            compiled.output_key.join(", "),
            declared.spec.key.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{compiled, transform, views};
    use super::*;

    #[test]
    fn the_output_carries_schema_key_kind_and_pii_lineage() {
        let ds = views();
        let tf = transform("SELECT url, email, COUNT(*) AS n FROM page_views GROUP BY url, email");
        let c = compiled(&tf, &ds);
        let out = output_data_stream(&tf, &c, &[&ds]).expect("builds");
        assert_eq!(out.spec.key, vec!["url", "email"]);
        assert_eq!(out.spec.cleanup_policy, CleanupPolicy::Compact);
        assert_eq!(out.spec.partitions, 3, "as many partitions as the input");
        let email = out.spec.schema.field("email").expect("email");
        assert_eq!(email.classification, vec!["pii"]);
        assert!(
            out.spec
                .schema
                .field("url")
                .unwrap()
                .classification
                .is_empty()
        );
        assert_eq!(out.spec.schema.field("n").unwrap().type_, FieldType::Bigint);
        assert_eq!(
            out.spec.access.as_ref().map(|a| a.readers.clone()),
            Some(vec!["analytics".to_owned()])
        );
        assert_eq!(out.metadata.owner_references.as_ref().unwrap()[0].uid, "t1");
        // The built schema converts back to what the SQL produces.
        let arrow = out.spec.schema.to_arrow().expect("valid");
        for (a, b) in arrow.fields().iter().zip(c.output_schema.fields()) {
            assert_eq!(a.name(), b.name());
        }
        assert_eq!(check_declared_output(&out, &out, &c), Ok(()));
    }

    #[test]
    fn a_global_aggregate_gets_an_output_kafka_can_create() {
        // One row with the empty group key: keyed by the whole row, so its table can be
        // compacted (a compacted DataStream needs a key) and its topic created.
        let ds = views();
        let tf = transform("SELECT COUNT(*) AS n, MAX(ts) AS last FROM page_views");
        let c = compiled(&tf, &ds);
        let out = output_data_stream(&tf, &c, &[&ds]).expect("builds");
        assert_eq!(out.spec.cleanup_policy, CleanupPolicy::Compact);
        assert_eq!(out.spec.key, vec!["n", "last"]);
        let policy = crate::policy::Policy {
            replication_factor: 1,
            topic_grants: Vec::new(),
            config_allow_list: Vec::new(),
            allowed_bootstrap_servers: Vec::new(),
        };
        crate::data_stream::validated::validate(&out, &policy).expect("a valid DataStream");
    }

    #[test]
    fn a_declared_output_must_match_the_sql() {
        let ds = views();
        let tf = transform("SELECT user_id, url FROM page_views WHERE url <> ''");
        let c = compiled(&tf, &ds);
        let built = output_data_stream(&tf, &c, &[&ds]).expect("builds");
        assert_eq!(built.spec.cleanup_policy, CleanupPolicy::Delete);
        assert!(built.spec.key.is_empty());
        let mut declared = built.clone();
        declared.spec.schema.fields.pop();
        let err = check_declared_output(&declared, &built, &c).unwrap_err();
        assert!(
            err.contains("columns [user_id] but the SQL produces [user_id, url]"),
            "{err}"
        );
        let mut declared = built.clone();
        declared.spec.schema.fields[1].type_ = FieldType::Int;
        let err = check_declared_output(&declared, &built, &c).unwrap_err();
        assert!(err.contains("\"url\" is declared Int"), "{err}");
    }
}
