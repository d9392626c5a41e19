use serde_json::json;

use super::*;

fn seeded() -> State {
    let seed: Seed = serde_json::from_value(json!({
        "pipelines": [{"id": 5, "name": "Wholesale", "stages": [
            {"id": "C5:NEW", "name": "New"},
            {"id": "C5:WON", "name": "Won", "semantics": "S"}
        ]}],
        "userFields": [{"entity": "deal", "name": "UF_CRM_COLOR", "type": "enumeration",
            "options": [{"id": 45, "value": "Red"}, {"id": 46, "value": "Blue"}]}]
    }))
    .unwrap();
    State::from_seed(&seed).unwrap()
}

const ITEM: WriteCtx = WriteCtx {
    user_id: 3,
    api: Api::Item,
    original_uf_names: false,
};
const LEGACY: WriteCtx = WriteCtx {
    user_id: 3,
    api: Api::Legacy,
    original_uf_names: false,
};

fn fields(value: serde_json::Value) -> Record {
    value.as_object().unwrap().clone()
}

#[test]
fn new_deal_starts_in_first_stage_of_general_pipeline_with_defaults() {
    let mut state = seeded();
    let (id, change) = state
        .add(EntityType::Deal, &fields(json!({"title": "A"})), ITEM)
        .unwrap();
    let deal = state.get(EntityType::Deal, id).unwrap();
    assert_eq!(deal["stageId"], "NEW");
    assert_eq!(deal["categoryId"], 0);
    assert_eq!(deal["stageSemanticId"], "P");
    assert_eq!(deal["assignedById"], 3);
    assert_eq!(deal["currencyId"], "RUB");
    assert!(change.added);
    assert_eq!(change.stage_after.as_deref(), Some("NEW"));
}

#[test]
fn stage_implies_pipeline_and_conflicts_are_rejected() {
    let mut state = seeded();
    let (id, _) = state
        .add(
            EntityType::Deal,
            &fields(json!({"stageId": "C5:NEW"})),
            ITEM,
        )
        .unwrap();
    assert_eq!(state.get(EntityType::Deal, id).unwrap()["categoryId"], 5);
    let err = state
        .add(
            EntityType::Deal,
            &fields(json!({"categoryId": 0, "stageId": "C5:NEW"})),
            ITEM,
        )
        .unwrap_err();
    assert_eq!(err.code, "CRM_FIELD_ERROR_VALUE_NOT_VALID");
    assert!(
        state
            .add(
                EntityType::Deal,
                &fields(json!({"stageId": "C9:NEW"})),
                ITEM
            )
            .is_err()
    );
    let change = state
        .update(
            EntityType::Deal,
            id,
            &fields(json!({"stageId": "C5:WON"})),
            ITEM,
        )
        .unwrap();
    assert_eq!(change.stage_before.as_deref(), Some("C5:NEW"));
    assert_eq!(change.stage_after.as_deref(), Some("C5:WON"));
    let deal = state.get(EntityType::Deal, id).unwrap();
    assert_eq!(
        (deal["closed"].as_str(), deal["stageSemanticId"].as_str()),
        (Some("Y"), Some("S"))
    );
}

#[test]
fn moving_to_another_pipeline_without_stage_takes_its_first_stage() {
    let mut state = seeded();
    let (id, _) = state
        .add(EntityType::Deal, &fields(json!({})), ITEM)
        .unwrap();
    let change = state
        .update(
            EntityType::Deal,
            id,
            &fields(json!({"CATEGORY_ID": "5"})),
            LEGACY,
        )
        .unwrap();
    assert_eq!(
        (change.category_before, change.category_after),
        (Some(0), Some(5))
    );
    assert_eq!(
        state.get(EntityType::Deal, id).unwrap()["stageId"],
        "C5:NEW"
    );
}

#[test]
fn legacy_and_item_names_reach_the_same_fields() {
    let mut state = seeded();
    let (id, _) = state
        .add(
            EntityType::Deal,
            &fields(json!({"TITLE": "Legacy", "UF_CRM_COLOR": "46", "ORIGIN_ID": "77"})),
            LEGACY,
        )
        .unwrap();
    let deal = state.get(EntityType::Deal, id).unwrap();
    assert_eq!(deal["title"], "Legacy");
    assert_eq!(deal["ufCrm_COLOR"], 46);
    assert_eq!(deal["originId"], "77");
    let ctx = RenderCtx {
        base_url: "http://x".into(),
        auth_path: "/rest/1/s".into(),
        access_token: None,
    };
    let legacy = state.render(EntityType::Deal, deal, Api::Legacy, &ctx, false);
    assert_eq!(legacy["ID"], json!(id.to_string()));
    assert_eq!(legacy["UF_CRM_COLOR"], "46");
    assert_eq!(legacy["OPPORTUNITY"], "0.00");
    let item = state.render(EntityType::Deal, deal, Api::Item, &ctx, false);
    assert_eq!(item["id"], json!(id));
    assert_eq!(item["entityTypeId"], 2);
}

#[test]
fn unknown_fields_are_ignored_and_read_only_fields_are_not_written() {
    let mut state = seeded();
    let (id, _) = state
        .add(
            EntityType::Deal,
            &fields(json!({"bogus": 1, "id": 999, "createdBy": 77})),
            ITEM,
        )
        .unwrap();
    let deal = state.get(EntityType::Deal, id).unwrap();
    assert_eq!(deal["id"], json!(id));
    assert_eq!(deal["createdBy"], 3);
    assert!(deal.get("bogus").is_none());
}

#[test]
fn seed_rejects_stages_outside_their_pipeline() {
    let seed: Seed = serde_json::from_value(
        json!({"pipelines": [{"id": 5, "name": "x", "stages": [{"id": "NEW", "name": "n"}]}]}),
    )
    .unwrap();
    assert!(State::from_seed(&seed).unwrap_err().contains("C5:"));
}
