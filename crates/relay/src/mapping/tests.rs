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
    typed(field, kind, false, options)
}

fn typed(field: &str, kind: &str, multiple: bool, options: &[(&str, &str)]) -> FieldCatalog {
    let items: Vec<Value> = options
        .iter()
        .map(|(id, value)| json!({"ID": id, "VALUE": value}))
        .collect();
    parse_catalog(
        &json!({"fields": {field: {"type": kind, "title": format!("Title of {field}"), "isMultiple": multiple, "items": items,
        "settings": {"CONTACT": "Y", "COMPANY": "Y", "DEAL": "Y", "LEAD": "N"}}}}),
    )
}

fn with(mut a: FieldCatalog, b: FieldCatalog) -> FieldCatalog {
    a.extend(b);
    a
}

/// Plans the route against both catalogues and maps `deal`.
fn map(
    r: &Route,
    source: &FieldCatalog,
    target: &FieldCatalog,
    deal: &Map<String, Value>,
    resolved: &Resolved,
) -> Result<MappedDeal, Vec<MappingError>> {
    let catalogs = Catalogs {
        source: Some(source),
        target: Some(target),
    };
    let plans = plan_fields(r, catalogs)?;
    map_deal(r, &plans, deal, resolved, None)
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
        json!({"title": "T", "opportunity": 12.5, "stageId": "C2:PREPARATION", "categoryId": 2, "isManualOpportunity": "Y"}),
    );
    let plans = plan_fields(&r, Catalogs::default()).unwrap();
    let mapped = map_deal(&r, &plans, &source, &Resolved::default(), Some(9)).unwrap();
    assert_eq!(mapped.fields["title"], "T");
    assert_eq!(mapped.fields["opportunity"], 12.5);
    assert_eq!(
        mapped.fields["isManualOpportunity"], "Y",
        "the amount keeps its kind"
    );
    assert_eq!(mapped.fields["sourceId"], "PARTNER");
    assert_eq!(mapped.fields["assignedById"], 9);
    assert_eq!(mapped.on_create["categoryId"], 3);
    assert_eq!(mapped.on_create["stageId"], "C3:NEW");
    assert!(!mapped.fields.contains_key("stageId"));
    let won = deal(json!({"stageId": "C2:WON"}));
    let mapped = map_deal(&r, &plans, &won, &Resolved::default(), None).unwrap();
    assert_eq!(mapped.fields["stageId"], "C3:WON");
}

#[test]
fn list_values_by_label_and_by_table() {
    let r = route(
        r#"fields = { ufCrm_A = "ufCrm_B", ufCrm_C = "ufCrm_D" }
values.ufCrm_B = { match = "label" }
values.ufCrm_D = { "45" = "101" }"#,
    );
    let source = with(
        typed(
            "ufCrm_A",
            "enumeration",
            true,
            &[("1", "Gold"), ("2", "Silver")],
        ),
        catalog("ufCrm_C", "enumeration", &[("45", "Courier")]),
    );
    let target = with(
        typed(
            "ufCrm_B",
            "enumeration",
            true,
            &[("71", "silver"), ("72", "Gold ")],
        ),
        catalog("ufCrm_D", "enumeration", &[("101", "Kurier")]),
    );
    let resolved = Resolved::default();
    let mapped = map(
        &r,
        &source,
        &target,
        &deal(json!({"ufCrm_A": [1], "ufCrm_C": "45"})),
        &resolved,
    )
    .unwrap();
    assert_eq!(mapped.fields["ufCrm_B"], json!([72]));
    assert_eq!(mapped.fields["ufCrm_D"], 101);
    let mapped = map(
        &r,
        &source,
        &target,
        &deal(json!({"ufCrm_A": [2, 1], "ufCrm_C": null})),
        &resolved,
    )
    .unwrap();
    assert_eq!(mapped.fields["ufCrm_B"], json!([71, 72]));
    assert_eq!(mapped.fields["ufCrm_D"], Value::Null);
}

#[test]
fn labels_match_across_case_and_white_space_in_every_script() {
    let r = route(r#"fields = { ufCrm_SHIP = "ufCrm_SHIP" }"#);
    let source = catalog(
        "ufCrm_SHIP",
        "enumeration",
        &[("1", "Курьер"), ("2", "Почта России")],
    );
    let target = catalog(
        "ufCrm_SHIP",
        "enumeration",
        &[("9", "курьер"), ("10", " почта\u{a0}россии ")],
    );
    let resolved = Resolved::default();
    for (source_id, target_id) in [(1, 9), (2, 10)] {
        let mapped = map(
            &r,
            &source,
            &target,
            &deal(json!({"ufCrm_SHIP": source_id})),
            &resolved,
        )
        .unwrap();
        assert_eq!(mapped.fields["ufCrm_SHIP"], target_id);
    }
}

#[test]
fn unmappable_values_name_field_value_and_fix() {
    let r = route(
        r#"fields = { ufCrm_A = "ufCrm_B", ufCrm_C = "ufCrm_D" }
values.ufCrm_D = { "45" = "101" }"#,
    );
    let source = with(
        catalog("ufCrm_A", "enumeration", &[("1", "Gold"), ("3", "Bronze")]),
        catalog("ufCrm_C", "enumeration", &[("45", "x"), ("46", "y")]),
    );
    let target = with(
        catalog("ufCrm_B", "enumeration", &[("72", "Gold")]),
        catalog("ufCrm_D", "enumeration", &[("101", "x")]),
    );
    let errors = map(
        &r,
        &source,
        &target,
        &deal(json!({"ufCrm_A": 3, "ufCrm_C": 46})),
        &Resolved::default(),
    )
    .unwrap_err();
    assert_eq!(
        errors.len(),
        2,
        "every field that cannot map is reported: {errors:?}"
    );
    assert_eq!(errors[0].field, "ufCrm_A");
    assert!(
        errors[0].to_string().contains("3 (\"Bronze\")"),
        "{}",
        errors[0]
    );
    assert!(errors[1].to_string().contains("\"46\" = "), "{}", errors[1]);
    let people = errors[0].for_people(crate::messages::Language::Ru);
    assert_eq!(
        people,
        "обратитесь к администратору: в поле «Title of ufCrm_B» на целевом портале нет варианта «Bronze»"
    );
}

#[test]
fn money_and_numbers_convert_by_the_target_type() {
    let r =
        route(r#"fields = { ufCrm_M = "ufCrm_N", opportunity = "ufCrm_P", ufCrm_Q = "ufCrm_R" }"#);
    let source = with(
        with(
            catalog("ufCrm_M", "money", &[]),
            catalog("opportunity", "double", &[]),
        ),
        catalog("ufCrm_Q", "string", &[]),
    );
    let target = with(
        with(
            catalog("ufCrm_N", "double", &[]),
            catalog("ufCrm_P", "money", &[]),
        ),
        catalog("ufCrm_R", "double", &[]),
    );
    let source_deal = deal(
        json!({"ufCrm_M": "300.45|RUB", "opportunity": 1234.56, "currencyId": "RUB", "ufCrm_Q": "1 234,50"}),
    );
    let mapped = map(&r, &source, &target, &source_deal, &Resolved::default()).unwrap();
    assert_eq!(mapped.fields["ufCrm_N"], 300.45);
    assert_eq!(mapped.fields["ufCrm_P"], "1234.56|RUB");
    assert_eq!(mapped.fields["ufCrm_R"], 1234.5);
    let errors = map(
        &r,
        &source,
        &target,
        &deal(json!({"ufCrm_Q": "about 5"})),
        &Resolved::default(),
    )
    .unwrap_err();
    assert!(
        errors[0].to_string().contains("not a valid double"),
        "{}",
        errors[0]
    );
}

#[test]
fn single_and_multiple_follow_the_documented_rule() {
    let r = route(
        r#"fields = { ufCrm_ONE = "ufCrm_MANY", ufCrm_TAGS = "ufCrm_TEXT", ufCrm_NUMS = "ufCrm_NUM" }"#,
    );
    let source = with(
        with(
            catalog("ufCrm_ONE", "string", &[]),
            typed("ufCrm_TAGS", "string", true, &[]),
        ),
        typed("ufCrm_NUMS", "integer", true, &[]),
    );
    let target = with(
        with(
            typed("ufCrm_MANY", "string", true, &[]),
            catalog("ufCrm_TEXT", "string", &[]),
        ),
        catalog("ufCrm_NUM", "integer", &[]),
    );
    let mapped = map(
        &r,
        &source,
        &target,
        &deal(json!({"ufCrm_ONE": "a", "ufCrm_TAGS": ["x", "y"], "ufCrm_NUMS": [7]})),
        &Resolved::default(),
    )
    .unwrap();
    assert_eq!(mapped.fields["ufCrm_MANY"], json!(["a"]));
    assert_eq!(mapped.fields["ufCrm_TEXT"], "x, y");
    assert_eq!(mapped.fields["ufCrm_NUM"], 7);
    // Cleared: [] for a multiple target, null for a single one; a create leaves both out.
    let cleared = map(
        &r,
        &source,
        &target,
        &deal(json!({"ufCrm_ONE": "", "ufCrm_TAGS": [], "ufCrm_NUMS": null})),
        &Resolved::default(),
    )
    .unwrap();
    assert_eq!(cleared.fields["ufCrm_MANY"], json!([]));
    assert_eq!(cleared.fields["ufCrm_TEXT"], Value::Null);
    assert_eq!(cleared.fields["ufCrm_NUM"], Value::Null);
    let create = cleared.for_create();
    assert!(
        !create.contains_key("ufCrm_MANY") && !create.contains_key("ufCrm_TEXT"),
        "{create:?}"
    );
    let errors = map(
        &r,
        &source,
        &target,
        &deal(json!({"ufCrm_NUMS": [1, 2]})),
        &Resolved::default(),
    )
    .unwrap_err();
    assert_eq!(*errors[0].problem, Problem::TooManyValues { count: 2 });
}

#[test]
fn lists_become_text_and_text_becomes_lists_by_label() {
    let r = route(r#"fields = { ufCrm_L = "ufCrm_T", ufCrm_S = "ufCrm_L2" }"#);
    let source = with(
        catalog("ufCrm_L", "enumeration", &[("45", "Самовывоз")]),
        catalog("ufCrm_S", "string", &[]),
    );
    let target = with(
        catalog("ufCrm_T", "string", &[]),
        catalog("ufCrm_L2", "enumeration", &[("8", "САМОВЫВОЗ")]),
    );
    let mapped = map(
        &r,
        &source,
        &target,
        &deal(json!({"ufCrm_L": "45", "ufCrm_S": "самовывоз"})),
        &Resolved::default(),
    )
    .unwrap();
    assert_eq!(
        mapped.fields["ufCrm_T"], "Самовывоз",
        "the label, not the id"
    );
    assert_eq!(mapped.fields["ufCrm_L2"], 8);
}

#[test]
fn employees_travel_by_e_mail_and_bindings_through_links() {
    let r = route(
        r#"fields = { ufCrm_MANAGER = "ufCrm_MANAGER", ufCrm_WHO = "ufCrm_WHO_TEXT", ufCrm_PARTY = "ufCrm_PARTY" }
responsible = { match = "email" }"#,
    );
    let source = with(
        with(
            catalog("ufCrm_MANAGER", "employee", &[]),
            catalog("ufCrm_WHO", "employee", &[]),
        ),
        typed("ufCrm_PARTY", "crm", true, &[]),
    );
    let target = with(
        with(
            catalog("ufCrm_MANAGER", "employee", &[]),
            catalog("ufCrm_WHO_TEXT", "string", &[]),
        ),
        typed("ufCrm_PARTY", "crm", true, &[]),
    );
    let mut resolved = Resolved::default();
    resolved.source_users.insert(
        9,
        SourceUser {
            name: "Olga Petrova".into(),
            email: Some("Olga@Example.com".into()),
        },
    );
    resolved
        .target_users
        .insert("olga@example.com".into(), Some(17));
    resolved.records.insert((CrmKind::Contact, 5), json!(51));
    resolved.records.insert(
        (CrmKind::Company, 3),
        json!("$result[company_add][item][id]"),
    );
    let source_deal =
        deal(json!({"ufCrm_MANAGER": 9, "ufCrm_WHO": "9", "ufCrm_PARTY": ["C_5", "CO_3"]}));
    let mapped = map(&r, &source, &target, &source_deal, &resolved).unwrap();
    assert_eq!(
        mapped.fields["ufCrm_MANAGER"], 17,
        "user 9 on the source is user 17 on the target"
    );
    assert_eq!(mapped.fields["ufCrm_WHO_TEXT"], "Olga Petrova");
    assert_eq!(
        mapped.fields["ufCrm_PARTY"],
        json!(["C_51", "CO_$result[company_add][item][id]"])
    );
    let plans = plan_fields(
        &r,
        Catalogs {
            source: Some(&source),
            target: Some(&target),
        },
    )
    .unwrap();
    assert_eq!(
        needs(&plans, &source_deal)
            .users
            .into_iter()
            .collect::<Vec<_>>(),
        [9]
    );
    // A user missing on the target, a lead, a record never transferred.
    let mut unknown = resolved.clone();
    unknown.target_users.insert("olga@example.com".into(), None);
    let errors = map(
        &r,
        &source,
        &target,
        &deal(json!({"ufCrm_MANAGER": 9, "ufCrm_PARTY": ["L_4", "D_8"]})),
        &unknown,
    )
    .unwrap_err();
    assert!(
        matches!(*errors[0].problem, Problem::NoSuchUser { .. }),
        "{errors:?}"
    );
    assert!(
        matches!(*errors[1].problem, Problem::LeadLink { .. }),
        "{errors:?}"
    );
    let errors = map(
        &r,
        &source,
        &target,
        &deal(json!({"ufCrm_PARTY": ["D_8"]})),
        &resolved,
    )
    .unwrap_err();
    assert_eq!(
        *errors[0].problem,
        Problem::NotTransferred {
            kind: CrmKind::Deal,
            id: 8
        }
    );
}

#[test]
fn types_that_cannot_map_are_refused_before_any_value() {
    for (from, to) in [
        ("enumeration", "integer"),
        ("employee", "integer"),
        ("crm", "string"),
        ("file", "string"),
        ("string", "employee"),
    ] {
        let r = route(r#"fields = { ufCrm_X = "ufCrm_Y" }"#);
        let source = catalog("ufCrm_X", from, &[("1", "a")]);
        let target = catalog("ufCrm_Y", to, &[("1", "a")]);
        let errors = plan_fields(
            &r,
            Catalogs {
                source: Some(&source),
                target: Some(&target),
            },
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{from} -> {to}");
    }
    let r = route(r#"fields = { ufCrm_X = "ufCrm_GONE", ufCrm_NONE = "title" }"#);
    let source = catalog("ufCrm_X", "string", &[]);
    let target = catalog("title", "string", &[]);
    let errors = plan_fields(
        &r,
        Catalogs {
            source: Some(&source),
            target: Some(&target),
        },
    )
    .unwrap_err();
    assert!(
        matches!(*errors[0].problem, Problem::NoSourceField { .. }),
        "{errors:?}"
    );
    assert!(
        matches!(*errors[1].problem, Problem::NoTargetField { .. }),
        "{errors:?}"
    );
}

#[test]
fn dates_booleans_and_urls_travel() {
    let r = route(
        r#"fields = { ufCrm_D = "ufCrm_D", ufCrm_DT = "ufCrm_DAY", ufCrm_B = "ufCrm_B", ufCrm_U = "ufCrm_U" }"#,
    );
    let source = with(
        with(
            catalog("ufCrm_D", "date", &[]),
            catalog("ufCrm_DT", "datetime", &[]),
        ),
        with(
            catalog("ufCrm_B", "boolean", &[]),
            catalog("ufCrm_U", "url", &[]),
        ),
    );
    let target = with(
        with(
            catalog("ufCrm_D", "date", &[]),
            catalog("ufCrm_DAY", "date", &[]),
        ),
        with(
            catalog("ufCrm_B", "boolean", &[]),
            catalog("ufCrm_U", "url", &[]),
        ),
    );
    let mapped = map(&r, &source, &target, &deal(json!({"ufCrm_D": "2024-05-28", "ufCrm_DT": "2024-05-28T12:15:21+03:00", "ufCrm_B": "N", "ufCrm_U": "https://пример.рф/a"})), &Resolved::default()).unwrap();
    assert_eq!(mapped.fields["ufCrm_D"], "2024-05-28");
    assert_eq!(mapped.fields["ufCrm_DAY"], "2024-05-28");
    assert_eq!(
        mapped.fields["ufCrm_B"], "N",
        "a no is a value, not an empty field"
    );
    assert_eq!(mapped.fields["ufCrm_U"], "https://пример.рф/a");
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
