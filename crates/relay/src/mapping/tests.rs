use serde_json::json;

use super::*;
use crate::config::Config;

fn route(extra: &str) -> Route {
    let dir = tempfile::tempdir().unwrap();
    let hook = |name: &str, url: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, url).unwrap();
        path.display().to_string()
    };
    let text = format!(
        r#"
listen = "127.0.0.1:0"
store = "sqlite:///tmp/unused.db"
[portal.a]
webhook = {{ file = "{}" }}
[portal.b]
webhook = {{ file = "{}" }}
[[route]]
name = "r"
from = "a"
to = "b"
when = {{ category = 2, stages = ["C2:PREPARATION", "C2:WON"] }}
target = {{ category = 3, stage = "C3:NEW", stages = {{ "C2:WON" = "C3:WON" }} }}
{extra}
"#,
        hook("a", "http://127.0.0.1:1/rest/1/x/"),
        hook("b", "http://127.0.0.1:2/rest/1/y/")
    );
    Config::parse(&text).unwrap().routes.remove(0)
}

fn catalog(field: &str, kind: &str, options: &[(&str, &str)]) -> FieldCatalog {
    let items: Vec<Value> = options
        .iter()
        .map(|(id, value)| json!({"ID": id, "VALUE": value}))
        .collect();
    parse_catalog(&json!({"fields": {field: {"type": kind, "isMultiple": false, "items": items}}}))
}

fn deal(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

#[test]
fn stage_filters_give_a_reason() {
    let r = route("");
    assert!(
        route_accepts(
            &r,
            &deal(json!({"categoryId": 2, "stageId": "C2:PREPARATION"}))
        )
        .is_ok()
    );
    let reason =
        route_accepts(&r, &deal(json!({"categoryId": 2, "stageId": "C2:NEW"}))).unwrap_err();
    assert!(reason.contains("stage C2:NEW"), "{reason}");
    let reason = route_accepts(&r, &deal(json!({"categoryId": 0, "stageId": "NEW"}))).unwrap_err();
    assert!(reason.contains("pipeline 0"), "{reason}");
}

#[test]
fn fields_constants_stage_and_user() {
    let r = route(
        r#"fields = { title = "title", opportunity = "opportunity" }
constants = { sourceId = "PARTNER" }"#,
    );
    let source = deal(
        json!({"title": "T", "opportunity": 12.5, "stageId": "C2:PREPARATION", "categoryId": 2}),
    );
    let mapped = map_deal(&r, &source, Catalogs::default(), Some(9)).unwrap();
    assert_eq!(mapped.fields["title"], "T");
    assert_eq!(mapped.fields["opportunity"], 12.5);
    assert_eq!(mapped.fields["sourceId"], "PARTNER");
    assert_eq!(mapped.fields["assignedById"], 9);
    assert_eq!(mapped.on_create["categoryId"], 3);
    assert_eq!(mapped.on_create["stageId"], "C3:NEW");
    assert!(!mapped.fields.contains_key("stageId"));
    let won = deal(json!({"stageId": "C2:WON"}));
    let mapped = map_deal(&r, &won, Catalogs::default(), None).unwrap();
    assert_eq!(mapped.fields["stageId"], "C3:WON");
}

#[test]
fn list_values_by_label_and_by_table() {
    let r = route(
        r#"fields = { ufCrm_A = "ufCrm_B", ufCrm_C = "ufCrm_D" }
values.ufCrm_B = { match = "label" }
values.ufCrm_D = { "45" = "101" }"#,
    );
    let source = catalog("ufCrm_A", "enumeration", &[("1", "Gold"), ("2", "Silver")]);
    let target = catalog(
        "ufCrm_B",
        "enumeration",
        &[("71", "silver"), ("72", "Gold ")],
    );
    let catalogs = Catalogs {
        source: Some(&source),
        target: Some(&target),
    };
    let mapped = map_deal(
        &r,
        &deal(json!({"ufCrm_A": 1, "ufCrm_C": "45"})),
        catalogs,
        None,
    )
    .unwrap();
    assert_eq!(mapped.fields["ufCrm_B"], 72);
    assert_eq!(mapped.fields["ufCrm_D"], 101);
    let mapped = map_deal(
        &r,
        &deal(json!({"ufCrm_A": [2, 1], "ufCrm_C": null})),
        catalogs,
        None,
    )
    .unwrap();
    assert_eq!(mapped.fields["ufCrm_B"], json!([71, 72]));
    assert_eq!(mapped.fields["ufCrm_D"], Value::Null);
}

#[test]
fn unmappable_values_name_field_and_value() {
    let r = route(
        r#"fields = { ufCrm_A = "ufCrm_B", ufCrm_C = "ufCrm_D" }
values.ufCrm_B = { match = "label" }
values.ufCrm_D = { "45" = "101" }"#,
    );
    let source = catalog("ufCrm_A", "enumeration", &[("1", "Gold"), ("3", "Bronze")]);
    let target = catalog("ufCrm_B", "enumeration", &[("72", "Gold")]);
    let catalogs = Catalogs {
        source: Some(&source),
        target: Some(&target),
    };
    let error = map_deal(&r, &deal(json!({"ufCrm_A": 3})), catalogs, None).unwrap_err();
    assert_eq!(error.field, "ufCrm_A");
    assert!(error.to_string().contains("3 (\"Bronze\")"), "{error}");
    let error = map_deal(
        &r,
        &deal(json!({"ufCrm_A": 1, "ufCrm_C": 46})),
        catalogs,
        None,
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("46") && error.to_string().contains("values.ufCrm_D"),
        "{error}"
    );
}

#[test]
fn money_follows_the_target_type() {
    let r = route(r#"fields = { ufCrm_M = "ufCrm_N", opportunity = "ufCrm_P" }"#);
    let mut target = catalog("ufCrm_N", "double", &[]);
    target.extend(catalog("ufCrm_P", "money", &[]));
    let catalogs = Catalogs {
        source: None,
        target: Some(&target),
    };
    let source = deal(json!({"ufCrm_M": "300|RUB", "opportunity": 12.5, "currencyId": "EUR"}));
    let mapped = map_deal(&r, &source, catalogs, None).unwrap();
    assert_eq!(mapped.fields["ufCrm_N"], 300.0);
    assert_eq!(mapped.fields["ufCrm_P"], "12.5|EUR");
}

#[test]
fn product_rows_travel_as_free_text_rows_and_digests_ignore_key_order() {
    let rows = map_product_rows(&[
        json!({"id": 5, "ownerId": 1, "productId": 77, "productName": "Bolt", "price": 2.0, "quantity": 3.0, "taxRate": null}),
    ]);
    assert_eq!(
        rows,
        vec![json!({"productName": "Bolt", "price": 2.0, "quantity": 3.0})]
    );
    assert_eq!(
        digest(&json!({"a": 1, "b": [1, 2]})),
        digest(&json!({"b": [1, 2], "a": 1}))
    );
    assert_ne!(digest(&json!({"a": 1})), digest(&json!({"a": 2})));
}

#[test]
fn legacy_and_item_field_names_convert_both_ways() {
    for (upper, camel) in [
        ("ID", "id"),
        ("ASSIGNED_BY_ID", "assignedById"),
        ("STAGE_ID", "stageId"),
        ("UF_CRM_LEVEL", "ufCrm_LEVEL"),
        ("UF_CRM_1721244707107", "ufCrm_1721244707107"),
    ] {
        assert_eq!(camel_name(upper), camel);
        assert_eq!(upper_name(camel), upper);
    }
}
