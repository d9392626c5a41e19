//! Business-like deals for the field-by-field tests: Cyrillic everywhere,
//! kopecks, every custom field type the relay maps (empty and filled),
//! several contacts, a shared company, files with Cyrillic names, product
//! rows with discount and tax — and what the target must hold for each.

use b24_emulator::{EntityType, Portal};
use serde_json::{Value, json};

use super::record;

pub fn source_fields() -> Value {
    json!([
        {"entity": "deal", "name": "UF_CRM_DELIVERY", "type": "enumeration", "title": "Доставка", "options": [
            {"id": 1, "value": "Курьер"}, {"id": 2, "value": "Почта России"}, {"id": 3, "value": "Самовывоз"}]},
        {"entity": "deal", "name": "UF_CRM_COLORS", "type": "enumeration", "multiple": true, "title": "Цвета", "options": [
            {"id": 10, "value": "Красный"}, {"id": 11, "value": "Синий"}]},
        {"entity": "deal", "name": "UF_CRM_TAGS", "type": "string", "multiple": true, "title": "Метки"},
        {"entity": "deal", "name": "UF_CRM_NOTE", "type": "string", "title": "Примечание"},
        {"entity": "deal", "name": "UF_CRM_QTY", "type": "integer", "title": "Количество мест"},
        {"entity": "deal", "name": "UF_CRM_WEIGHT", "type": "double", "title": "Вес, кг"},
        {"entity": "deal", "name": "UF_CRM_URGENT", "type": "boolean", "title": "Срочно"},
        {"entity": "deal", "name": "UF_CRM_SHIP_DATE", "type": "date", "title": "Дата отгрузки"},
        {"entity": "deal", "name": "UF_CRM_CALL_AT", "type": "datetime", "title": "Перезвонить"},
        {"entity": "deal", "name": "UF_CRM_BUDGET", "type": "money", "title": "Бюджет"},
        {"entity": "deal", "name": "UF_CRM_SITE", "type": "url", "title": "Сайт"},
        {"entity": "deal", "name": "UF_CRM_MANAGER", "type": "employee", "title": "Менеджер"},
        {"entity": "deal", "name": "UF_CRM_PARTY", "type": "crm", "title": "Плательщик", "entityTypes": ["CONTACT", "COMPANY"]},
        {"entity": "deal", "name": "UF_CRM_DOCS", "type": "file", "multiple": true, "title": "Документы"},
        {"entity": "deal", "name": "UF_CRM_ESB_DEAL_ID", "type": "string", "title": "Сделка в ESB"}
    ])
}

pub fn target_fields() -> Value {
    json!([
        // Other ids, other case and spacing: matched by text.
        {"entity": "deal", "name": "UF_CRM_SHIPPING", "type": "enumeration", "title": "Способ доставки", "options": [
            {"id": 71, "value": "курьер"}, {"id": 72, "value": "почта  россии"}, {"id": 73, "value": "САМОВЫВОЗ"}]},
        {"entity": "deal", "name": "UF_CRM_COLORS", "type": "enumeration", "multiple": true, "title": "Цвета", "options": [
            {"id": 201, "value": "синий"}, {"id": 202, "value": "красный"}]},
        {"entity": "deal", "name": "UF_CRM_TAGS", "type": "string", "multiple": true, "title": "Метки"},
        {"entity": "deal", "name": "UF_CRM_NOTES", "type": "string", "multiple": true, "title": "Примечания"},
        {"entity": "deal", "name": "UF_CRM_QTY", "type": "integer", "title": "Мест"},
        {"entity": "deal", "name": "UF_CRM_WEIGHT", "type": "double", "title": "Вес"},
        {"entity": "deal", "name": "UF_CRM_URGENT", "type": "boolean", "title": "Срочно"},
        {"entity": "deal", "name": "UF_CRM_SHIP_DATE", "type": "date", "title": "Отгрузка"},
        {"entity": "deal", "name": "UF_CRM_CALL_AT", "type": "datetime", "title": "Звонок"},
        {"entity": "deal", "name": "UF_CRM_BUDGET", "type": "money", "title": "Бюджет"},
        {"entity": "deal", "name": "UF_CRM_SITE", "type": "url", "title": "Сайт"},
        {"entity": "deal", "name": "UF_CRM_MANAGER", "type": "employee", "title": "Менеджер"},
        {"entity": "deal", "name": "UF_CRM_PARTY", "type": "crm", "title": "Плательщик", "entityTypes": ["CONTACT", "COMPANY"]},
        {"entity": "deal", "name": "UF_CRM_FILES", "type": "file", "multiple": true, "title": "Файлы"}
    ])
}

/// The route's mapping (goes into `[[route]]`).
pub const ROUTE: &str = r#"fields = { title = "title", opportunity = "opportunity", currencyId = "currencyId", comments = "comments", ufCrm_DELIVERY = "ufCrm_SHIPPING", ufCrm_COLORS = "ufCrm_COLORS", ufCrm_TAGS = "ufCrm_TAGS", ufCrm_NOTE = "ufCrm_NOTES", ufCrm_QTY = "ufCrm_QTY", ufCrm_WEIGHT = "ufCrm_WEIGHT", ufCrm_URGENT = "ufCrm_URGENT", ufCrm_SHIP_DATE = "ufCrm_SHIP_DATE", ufCrm_CALL_AT = "ufCrm_CALL_AT", ufCrm_BUDGET = "ufCrm_BUDGET", ufCrm_SITE = "ufCrm_SITE", ufCrm_MANAGER = "ufCrm_MANAGER", ufCrm_PARTY = "ufCrm_PARTY", ufCrm_DOCS = "ufCrm_FILES" }
files = ["ufCrm_DOCS"]
"#;

pub fn source_seed() -> Value {
    json!({
        "currency": "RUB",
        "users": [
            {"id": 1, "name": "Админ", "email": "admin@partner.test"},
            {"id": 5, "name": "Ольга", "lastName": "Смирнова", "email": "olga@example.com"},
            {"id": 6, "name": "Пётр", "lastName": "Иванов", "email": "Petr.Ivanov@Example.com"}
        ],
        "pipelines": [{"id": 2, "name": "Партнёры", "stages": [
            {"id": "C2:NEW", "name": "Новая"},
            {"id": "C2:PREPARATION", "name": "Передать"},
            {"id": "C2:WON", "name": "Успех", "semantics": "S"}
        ]}],
        "userFields": source_fields(),
        "companies": [{"title": "ООО «Ромашка»", "fm": [{"typeId": "PHONE", "value": "+7 495 000-00-01", "valueType": "WORK"}]}],
        "contacts": [
            {"name": "Анна", "lastName": "Кузнецова", "post": "Главный бухгалтер", "companyId": 1,
             "fm": [{"typeId": "EMAIL", "value": "anna@romashka.ru", "valueType": "WORK"}]},
            {"name": "Иван", "lastName": "Петров", "companyId": 1,
             "fm": [{"typeId": "PHONE", "value": "+7 916 123-45-67", "valueType": "MOBILE"}]}
        ]
    })
}

pub fn target_seed() -> Value {
    json!({
        "currency": "RUB",
        "users": [
            {"id": 1, "name": "Admin", "email": "admin@esb.test"},
            {"id": 17, "name": "Ольга", "email": "olga@example.com"},
            {"id": 23, "name": "Пётр", "email": "Petr.Ivanov@Example.com"}
        ],
        "pipelines": [{"id": 3, "name": "От партнёров", "stages": [
            {"id": "C3:NEW", "name": "Новая"},
            {"id": "C3:WON", "name": "Успех", "semantics": "S"}
        ]}],
        "userFields": target_fields()
    })
}

pub const CONTRACT: &[u8] = b"%PDF-1.4 dogovor 42";
pub const INVOICE: &[u8] = b"PK\x03\x04 schet-faktura";

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The deals; returns their ids: full, empty, shared parties.
pub async fn insert_deals(source: &Portal, secret: &str) -> [i64; 3] {
    let admin = source.admin();
    let full = admin
        .insert_record(
            EntityType::Deal,
            &record(json!({
                "title": "Поставка оборудования — ООО «Ромашка»",
                "categoryId": 2, "stageId": "C2:PREPARATION",
                "opportunity": 123456.78, "currencyId": "RUB", "isManualOpportunity": "Y",
                "comments": "Позвонить после 15:00, спросить Анну",
                "assignedById": 5,
                "contactIds": [2, 1], "contactId": 2, "companyId": 1,
                "ufCrm_DELIVERY": 2, "ufCrm_COLORS": [11, 10], "ufCrm_TAGS": ["опт", "безнал"],
                "ufCrm_NOTE": "Этаж 3, без лифта", "ufCrm_QTY": 12, "ufCrm_WEIGHT": 1250.75,
                "ufCrm_URGENT": "Y", "ufCrm_SHIP_DATE": "2025-03-14", "ufCrm_CALL_AT": "2025-03-13T15:30:00+03:00",
                "ufCrm_BUDGET": "150000.50|RUB", "ufCrm_SITE": "https://ромашка.рф/заказ?id=42",
                "ufCrm_MANAGER": 6, "ufCrm_PARTY": "C_1",
                "ufCrm_DOCS": [["Договор №42.pdf", b64(CONTRACT)], ["Счёт-фактура.xlsx", b64(INVOICE)]]
            })),
        )
        .unwrap();
    let empty = admin
        .insert_record(
            EntityType::Deal,
            &record(json!({"title": "Пустая сделка", "categoryId": 2, "stageId": "C2:PREPARATION", "assignedById": 1})),
        )
        .unwrap();
    let shared = admin
        .insert_record(
            EntityType::Deal,
            &record(json!({
                "title": "Вторая поставка", "categoryId": 2, "stageId": "C2:PREPARATION",
                "opportunity": 0.01, "currencyId": "RUB", "assignedById": 6,
                "contactIds": [1], "companyId": 1,
                "ufCrm_DELIVERY": 3, "ufCrm_TAGS": ["срочно"], "ufCrm_URGENT": "N",
                "ufCrm_PARTY": "CO_1"
            })),
        )
        .unwrap();
    let rows = super::rest(source, secret, "crm.item.productrow.set", json!({"ownerType": "D", "ownerId": full, "productRows": [
        {"productName": "Станок токарный ТВ-16", "price": 80000.0, "quantity": 1.0, "discountTypeId": 2, "discountRate": 20.0, "taxRate": 20.0, "taxIncluded": "Y", "measureName": "шт"},
        {"productName": "Доставка и монтаж", "price": 43456.78, "quantity": 1.0, "discountTypeId": 1, "discountSum": 500.0, "taxRate": 0.0, "taxIncluded": "N", "measureName": "усл"}
    ]})).await;
    assert!(rows["result"]["productRows"].is_array(), "{rows}");
    [full, empty, shared]
}

/// What each mapped target field must hold for the full deal (files and
/// parties aside: their ids are the target's).
pub fn expected_full(manager: i64) -> Value {
    json!({
        "title": "Поставка оборудования — ООО «Ромашка»",
        "opportunity": 123456.78, "currencyId": "RUB", "isManualOpportunity": "Y",
        "comments": "Позвонить после 15:00, спросить Анну",
        "categoryId": 3, "stageId": "C3:NEW", "assignedById": 17,
        "ufCrm_SHIPPING": 72, "ufCrm_COLORS": [201, 202], "ufCrm_TAGS": ["опт", "безнал"],
        "ufCrm_NOTES": ["Этаж 3, без лифта"], "ufCrm_QTY": 12, "ufCrm_WEIGHT": 1250.75,
        "ufCrm_URGENT": "Y", "ufCrm_SHIP_DATE": "2025-03-14", "ufCrm_CALL_AT": "2025-03-13T15:30:00+03:00",
        "ufCrm_BUDGET": "150000.50|RUB", "ufCrm_SITE": "https://ромашка.рф/заказ?id=42",
        "ufCrm_MANAGER": manager, "sourceId": "PARTNER"
    })
}

/// The empty deal: every cleared multiple field `[]`, single ones unset.
pub fn expected_empty() -> Value {
    json!({
        "title": "Пустая сделка", "categoryId": 3, "stageId": "C3:NEW",
        "ufCrm_COLORS": [], "ufCrm_TAGS": [], "ufCrm_NOTES": [], "ufCrm_FILES": [], "ufCrm_PARTY": null,
        "ufCrm_SHIPPING": null, "ufCrm_QTY": null, "ufCrm_MANAGER": null, "ufCrm_BUDGET": null
    })
}

/// Every key of `expected` equals the target's value.
pub fn assert_fields(what: &str, target: &serde_json::Map<String, Value>, expected: &Value) {
    for (key, want) in expected.as_object().unwrap() {
        let got = target.get(key).unwrap_or(&Value::Null);
        assert_eq!(got, want, "{what}: field {key}: {target:?}");
    }
}
