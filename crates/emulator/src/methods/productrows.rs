//! Product rows of deals: `crm.item.productrow.list/set` (camelCase) and the
//! deprecated `crm.deal.productrows.get/set` (UPPER_CASE). `set` replaces all
//! rows, and a deal without a manual amount takes the rows' sum.

use serde_json::{Map, Value, json};

use super::{Call, MethodResult, Output};
use crate::error::ApiError;
use crate::fields::EntityType;
use crate::filter;
use crate::params::{as_f64, as_i64, as_list, get_ci, number, scalar_text};
use crate::store::State;
use crate::store::values::Api;

pub fn dispatch(method: &str, call: &Call<'_>) -> Option<MethodResult> {
    Some(match method {
        "crm.item.productrow.list" => item_list(call),
        "crm.item.productrow.set" => item_set(call),
        "crm.deal.productrows.get" => legacy_get(call),
        "crm.deal.productrows.set" => legacy_set(call),
        _ => return None,
    })
}

/// Row fields: camelCase name, UPPER_CASE name, numeric or not, default.
const ROW_FIELDS: &[(&str, &str, bool, &str)] = &[
    ("productId", "PRODUCT_ID", true, "0"),
    ("productName", "PRODUCT_NAME", false, ""),
    ("price", "PRICE", true, "0"),
    ("quantity", "QUANTITY", true, "1"),
    ("discountTypeId", "DISCOUNT_TYPE_ID", true, "2"),
    ("discountRate", "DISCOUNT_RATE", true, "0"),
    ("discountSum", "DISCOUNT_SUM", true, "0"),
    ("taxRate", "TAX_RATE", true, ""),
    ("taxIncluded", "TAX_INCLUDED", false, "N"),
    ("measureCode", "MEASURE_CODE", true, "796"),
    ("measureName", "MEASURE_NAME", false, "pcs"),
    ("sort", "SORT", true, "10"),
];

fn owner_prefix(entity: EntityType) -> &'static str {
    match entity {
        EntityType::Deal => "D",
        EntityType::Contact => "C",
        EntityType::Company => "CO",
    }
}

fn build_rows(
    state: &mut State,
    owner: (EntityType, i64),
    rows: &[Value],
    api: Api,
) -> Result<Vec<Map<String, Value>>, ApiError> {
    let mut out = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let Value::Object(input) = row else {
            return Err(ApiError::invalid_arg("Product row must be an object"));
        };
        state.next_row_id += 1;
        let mut stored = Map::new();
        stored.insert("id".into(), json!(state.next_row_id));
        stored.insert("ownerId".into(), json!(owner.1));
        stored.insert("ownerType".into(), json!(owner_prefix(owner.0)));
        for (camel, upper, numeric, default) in ROW_FIELDS {
            let key = if api == Api::Item { *camel } else { *upper };
            let raw = get_ci(input, key).cloned();
            let value = match (raw, numeric) {
                (Some(v), true) if !scalar_text(&v).is_empty() => {
                    number(as_f64(&v).ok_or_else(|| ApiError::field_not_valid(key))?)
                }
                (Some(v), false) => json!(scalar_text(&v)),
                _ if *camel == "sort" => json!((index + 1) * 10),
                _ if default.is_empty() => Value::Null,
                _ if *numeric => number(default.parse::<f64>().unwrap_or(0.0)),
                _ => json!(default),
            };
            stored.insert((*camel).into(), value);
        }
        derive_prices(&mut stored);
        out.push(stored);
    }
    Ok(out)
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The prices Bitrix24 derives from `price` (per unit, with discount and,
/// when `taxIncluded` is `Y`, tax): `priceExclusive` (discount, no tax),
/// `priceNetto` (no discount, no tax), `priceBrutto` (no discount, with
/// tax), `priceAccount` (= price), and the per-unit `discountSum` or
/// `discountRate`, each rounded to kopecks in that order. Checked against
/// the answer in b24restdocs
/// `api-reference/crm/universal/product-rows/crm-item-productrow-add.md`:
/// price 80000, 20 % discount, 20 % tax included → exclusive 66666.67,
/// netto 83333.34, brutto 100000.01, discountSum 16666.67.
fn derive_prices(row: &mut Map<String, Value>) {
    let get = |row: &Map<String, Value>, key: &str| row.get(key).and_then(Value::as_f64);
    let price = get(row, "price").unwrap_or(0.0);
    let tax = get(row, "taxRate").unwrap_or(0.0) / 100.0;
    let included = row.get("taxIncluded").and_then(Value::as_str) == Some("Y");
    let exclusive = if included {
        round2(price / (1.0 + tax))
    } else {
        round2(price)
    };
    let netto = if get(row, "discountTypeId") == Some(1.0) {
        let sum = round2(get(row, "discountSum").unwrap_or(0.0));
        let netto = round2(exclusive + sum);
        let rate = if netto > 0.0 {
            round2(sum / netto * 100.0)
        } else {
            0.0
        };
        row.insert("discountRate".into(), number(rate));
        netto
    } else {
        let rate = get(row, "discountRate").unwrap_or(0.0) / 100.0;
        let netto = if rate < 1.0 {
            round2(exclusive / (1.0 - rate))
        } else {
            exclusive
        };
        row.insert("discountSum".into(), number(round2(netto - exclusive)));
        netto
    };
    let brutto = round2(netto * (1.0 + tax));
    row.insert("priceExclusive".into(), number(exclusive));
    row.insert("priceNetto".into(), number(netto));
    row.insert("priceBrutto".into(), number(brutto));
    row.insert("priceAccount".into(), number(price));
}

fn replace_rows(
    call: &Call<'_>,
    entity: EntityType,
    owner_id: i64,
    rows: &[Value],
    api: Api,
) -> Result<Vec<Map<String, Value>>, ApiError> {
    let mut state = call.shared.store();
    if state.get(entity, owner_id).is_none() {
        return Err(match api {
            Api::Item => ApiError::not_found("Owner item not found"),
            Api::Legacy => ApiError::legacy("Not found"),
        });
    }
    let built = build_rows(&mut state, (entity, owner_id), rows, api)?;
    let sum: f64 = built
        .iter()
        .map(|r| r["price"].as_f64().unwrap_or(0.0) * r["quantity"].as_f64().unwrap_or(0.0))
        .sum();
    state.product_rows.insert((entity, owner_id), built.clone());
    if let Some(record) = state
        .records
        .get_mut(&entity)
        .and_then(|r| r.get_mut(&owner_id))
    {
        if record.get("isManualOpportunity").and_then(Value::as_str) != Some("Y") {
            record.insert("opportunity".into(), number(sum));
        }
    }
    Ok(built)
}

fn item_owner(source: &Map<String, Value>) -> Result<(EntityType, i64), ApiError> {
    let owner_type = get_ci(source, "ownerType")
        .or_else(|| get_ci(source, "=ownerType"))
        .map(scalar_text)
        .unwrap_or_default();
    let owner_id = get_ci(source, "ownerId")
        .or_else(|| get_ci(source, "=ownerId"))
        .and_then(as_i64)
        .unwrap_or(0);
    let entity = match owner_type.as_str() {
        "D" => EntityType::Deal,
        _ => {
            return Err(ApiError::invalid_arg(
                "Required fields \"ownerType\" and \"ownerId\" are missing",
            ));
        }
    };
    if owner_id <= 0 {
        return Err(ApiError::invalid_arg(
            "Required fields \"ownerType\" and \"ownerId\" are missing",
        ));
    }
    Ok((entity, owner_id))
}

fn item_set(call: &Call<'_>) -> MethodResult {
    let (entity, owner_id) = item_owner(&call.params.0)?;
    let rows = call
        .params
        .get("productRows")
        .map(as_list)
        .unwrap_or_default();
    let built = replace_rows(call, entity, owner_id, &rows, Api::Item)?;
    Ok(Output::value(json!({"productRows": built})))
}

fn item_list(call: &Call<'_>) -> MethodResult {
    let filter_param = call.params.object("filter");
    let (entity, owner_id) = item_owner(&filter_param)?;
    let state = call.shared.store();
    let rows = state
        .product_rows
        .get(&(entity, owner_id))
        .cloned()
        .unwrap_or_default();
    let mut refs: Vec<&Map<String, Value>> = rows.iter().collect();
    filter::sort(&mut refs, &[("sort".into(), false), ("id".into(), false)]);
    let page = filter::page(refs.len(), call.params.int("start").unwrap_or(0));
    let items: Vec<Value> = refs[page.from..page.to]
        .iter()
        .map(|r| Value::Object((*r).clone()))
        .collect();
    Ok(Output::page(
        json!({"productRows": items}),
        page.next,
        page.total,
    ))
}

fn legacy_row(row: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    out.insert("ID".into(), json!(scalar_text(&row["id"])));
    out.insert("OWNER_ID".into(), json!(scalar_text(&row["ownerId"])));
    out.insert("OWNER_TYPE".into(), row["ownerType"].clone());
    for (camel, upper, _, _) in ROW_FIELDS {
        out.insert(
            (*upper).into(),
            row.get(*camel).cloned().unwrap_or(Value::Null),
        );
    }
    for (camel, upper) in [
        ("priceExclusive", "PRICE_EXCLUSIVE"),
        ("priceNetto", "PRICE_NETTO"),
        ("priceBrutto", "PRICE_BRUTTO"),
        ("priceAccount", "PRICE_ACCOUNT"),
    ] {
        out.insert(upper.into(), row.get(camel).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

fn legacy_get(call: &Call<'_>) -> MethodResult {
    let id = call
        .params
        .int("id")
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::legacy("ID is not defined or invalid."))?;
    let state = call.shared.store();
    if state.get(EntityType::Deal, id).is_none() {
        return Err(ApiError::legacy("Not found"));
    }
    let rows = state
        .product_rows
        .get(&(EntityType::Deal, id))
        .cloned()
        .unwrap_or_default();
    Ok(Output::value(Value::Array(
        rows.iter().map(legacy_row).collect(),
    )))
}

fn legacy_set(call: &Call<'_>) -> MethodResult {
    let id = call
        .params
        .int("id")
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::legacy("ID is not defined or invalid."))?;
    let rows = call.params.get("rows").map(as_list).unwrap_or_default();
    replace_rows(call, EntityType::Deal, id, &rows, Api::Legacy)?;
    Ok(Output::value(json!(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn prices_follow_discount_and_tax_as_the_docs_example() {
        let mut r = row(
            json!({"price": 80000.0, "discountTypeId": 2, "discountRate": 20.0, "taxRate": 20.0, "taxIncluded": "Y"}),
        );
        derive_prices(&mut r);
        assert_eq!(r["priceExclusive"], json!(66666.67));
        assert_eq!(r["priceNetto"], json!(83333.34));
        assert_eq!(r["priceBrutto"], json!(100000.01));
        assert_eq!(r["discountSum"], json!(16666.67));
        assert_eq!(r["priceAccount"], json!(80000));
        // Tax not included, absolute discount of 10.50 per unit.
        let mut r = row(
            json!({"price": 99.5, "discountTypeId": 1, "discountSum": 10.5, "taxRate": 10.0, "taxIncluded": "N"}),
        );
        derive_prices(&mut r);
        assert_eq!(r["priceExclusive"], json!(99.5));
        assert_eq!(r["priceNetto"], json!(110));
        assert_eq!(r["priceBrutto"], json!(121));
        assert_eq!(r["discountRate"], json!(9.55));
        // No discount, no tax: everything is the price.
        let mut r = row(
            json!({"price": 1234.56, "discountTypeId": 2, "discountRate": 0.0, "taxRate": null}),
        );
        derive_prices(&mut r);
        for key in ["priceExclusive", "priceNetto", "priceBrutto"] {
            assert_eq!(r[key], json!(1234.56), "{key}");
        }
    }
}
