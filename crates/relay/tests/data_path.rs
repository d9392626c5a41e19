//! The data path with real business data, field by field: every custom
//! field type empty and filled, Cyrillic, kopecks, several contacts, files
//! with Cyrillic names, product rows with discount and tax; clearing values
//! on the source; messages in the portal's language; and what costs
//! requests (a plain new deal, the relay's own echo).

mod common;

use std::time::Duration;

use b24_emulator::EntityType;
use b24_relay::{Config, JobState, Relay};
use common::corpus::{self, assert_fields};
use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

async fn start_relay(config_text: &str) -> (Relay, String) {
    let relay = Relay::start(Config::parse(config_text).unwrap())
        .await
        .expect("relay starts");
    let url = format!("http://{}", relay.addr);
    (relay, url)
}

async fn jobs_in(relay: &Relay, state: JobState) -> Vec<b24_relay::Job> {
    relay.store.jobs(Some(state), 1000).await.unwrap()
}

async fn idle(relay: &Relay) -> bool {
    jobs_in(relay, JobState::Pending).await.is_empty()
        && jobs_in(relay, JobState::Running).await.is_empty()
}

fn comments_on(portal: &b24_emulator::Portal, deal: i64) -> Vec<String> {
    portal
        .admin()
        .timeline_comments()
        .iter()
        .filter(|c| c.get("ENTITY_ID") == Some(&json!(deal.to_string())))
        .map(|c| {
            c.get("COMMENT")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

fn by_origin(
    target: &b24_emulator::Portal,
    entity: EntityType,
    source_id: i64,
) -> Vec<serde_json::Map<String, Value>> {
    target
        .admin()
        .records(entity)
        .into_iter()
        .filter(|r| r.get("originId") == Some(&json!(source_id.to_string())))
        .collect()
}

fn corpus_options() -> Options {
    Options {
        mapping: Some(corpus::ROUTE),
        partner_extra: "language = \"ru\"",
        ..Options::fast()
    }
}

/// Every deal of the corpus arrives as the mapping says, field by field;
/// clearing values on the source clears them on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_deals_arrive_field_by_field_and_clearing_travels() {
    let (source, target) = start_corpus_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &source, &target, &corpus_options());
    let (relay, url) = start_relay(&text).await;
    let [full, empty, shared] = corpus::insert_deals(&source, SOURCE_SECRET).await;
    for deal in [full, empty, shared] {
        assert_eq!(post_rule(&url, deal).await, 200);
    }
    wait_until("every deal is transferred", WAIT, async || {
        jobs_in(&relay, JobState::Done).await.len() == 3 && idle(&relay).await
    })
    .await;
    assert!(jobs_in(&relay, JobState::Failed).await.is_empty());

    // The full deal, every field.
    let deals = by_origin(&target, EntityType::Deal, full);
    assert_eq!(deals.len(), 1);
    let deal = &deals[0];
    assert_fields("full deal", deal, &corpus::expected_full(23));
    // Contacts: both, the primary first; the company; the binding field
    // points at the target's copy of the contact.
    let contacts = target.admin().records(EntityType::Contact);
    let companies = target.admin().records(EntityType::Company);
    assert_eq!(contacts.len(), 2, "{contacts:?}");
    assert_eq!(companies.len(), 1, "{companies:?}");
    let target_of = |source_id: i64| {
        contacts
            .iter()
            .find(|c| c.get("originId") == Some(&json!(source_id.to_string())))
            .map(|c| c["id"].clone())
            .unwrap()
    };
    assert_eq!(deal["contactIds"], json!([target_of(2), target_of(1)]));
    assert_eq!(deal["contactId"], target_of(2));
    assert_eq!(deal["companyId"], companies[0]["id"]);
    assert_eq!(deal["ufCrm_PARTY"], json!(format!("C_{}", target_of(1))));
    for contact in &contacts {
        assert_eq!(
            contact["companyId"], companies[0]["id"],
            "contact linked to its company"
        );
    }
    let anna = contacts.iter().find(|c| c["name"] == "Анна").unwrap();
    assert_eq!(anna["lastName"], "Кузнецова");
    assert_eq!(anna["post"], "Главный бухгалтер");
    // Files: real names and content.
    let files: Vec<(String, Vec<u8>)> = deal["ufCrm_FILES"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| target.admin().file(id.as_i64().unwrap()).unwrap())
        .collect();
    assert_eq!(
        files,
        vec![
            ("Договор №42.pdf".to_owned(), corpus::CONTRACT.to_vec()),
            ("Счёт-фактура.xlsx".to_owned(), corpus::INVOICE.to_vec())
        ]
    );
    // Product rows: the same prices, discounts and taxes, kopeck for kopeck.
    let id = deal["id"].as_i64().unwrap();
    let source_rows = source.admin().product_rows(EntityType::Deal, full);
    let target_rows = target.admin().product_rows(EntityType::Deal, id);
    assert_eq!(target_rows.len(), 2);
    for (s, t) in source_rows.iter().zip(&target_rows) {
        for key in [
            "productName",
            "price",
            "quantity",
            "discountTypeId",
            "discountRate",
            "discountSum",
            "taxRate",
            "taxIncluded",
            "priceExclusive",
            "priceNetto",
            "priceBrutto",
            "measureName",
        ] {
            assert_eq!(t[key], s[key], "row field {key}");
        }
    }
    assert_eq!(target_rows[0]["priceBrutto"], json!(100000.01));

    // The empty deal: cleared multiple fields are [], single ones unset.
    let deals = by_origin(&target, EntityType::Deal, empty);
    assert_eq!(deals.len(), 1);
    // As the portal shows it (an unset multiple field reads as []).
    let shown = rest(
        &target,
        TARGET_SECRET,
        "crm.item.get",
        json!({"entityTypeId": 2, "id": deals[0]["id"]}),
    )
    .await;
    let shown = shown["result"]["item"].as_object().unwrap().clone();
    assert_fields("empty deal", &shown, &corpus::expected_empty());
    assert_eq!(shown["assignedById"], 1, "no e-mail match: the fallback");

    // The third deal shares contact and company: nothing created twice.
    let deals = by_origin(&target, EntityType::Deal, shared);
    assert_fields(
        "shared deal",
        &deals[0],
        &json!({"opportunity": 0.01, "ufCrm_SHIPPING": 73, "ufCrm_TAGS": ["срочно"], "ufCrm_URGENT": "N",
                "ufCrm_PARTY": format!("CO_{}", companies[0]["id"]), "ufCrm_MANAGER": null, "assignedById": 23,
                "contactIds": [target_of(1)]}),
    );
    assert_eq!(target.admin().records(EntityType::Contact).len(), 2);
    assert_eq!(target.admin().records(EntityType::Company).len(), 1);

    // Comments in the portal's language.
    let comments = comments_on(&source, full);
    assert!(
        comments
            .iter()
            .any(|c| c.starts_with("Сделка передана в esb: сделка №")),
        "{comments:?}"
    );

    // Clearing on the source: tags, colors, the note, the rows.
    let cleared = rest(&source, SOURCE_SECRET, "crm.item.update", json!({"entityTypeId": 2, "id": full,
        "fields": {"ufCrm_TAGS": [], "ufCrm_COLORS": [], "ufCrm_NOTE": "", "ufCrm_QTY": null, "comments": ""}})).await;
    assert!(cleared["result"]["item"].is_object(), "{cleared}");
    rest(
        &source,
        SOURCE_SECRET,
        "crm.item.productrow.set",
        json!({"ownerType": "D", "ownerId": full, "productRows": []}),
    )
    .await;
    assert_eq!(post_rule(&url, full).await, 200);
    wait_until("the changes are transferred", WAIT, async || {
        let deal = target.admin().record(EntityType::Deal, id).unwrap();
        deal["ufCrm_TAGS"] == json!([]) && idle(&relay).await
    })
    .await;
    let deal = target.admin().record(EntityType::Deal, id).unwrap();
    assert_fields(
        "cleared deal",
        &deal,
        &json!({"ufCrm_TAGS": [], "ufCrm_COLORS": [], "ufCrm_NOTES": [], "ufCrm_QTY": null, "comments": null,
                "ufCrm_SHIPPING": 72, "title": "Поставка оборудования — ООО «Ромашка»"}),
    );
    assert!(
        target.admin().product_rows(EntityType::Deal, id).is_empty(),
        "rows cleared"
    );
    assert_eq!(
        deal["ufCrm_FILES"].as_array().unwrap().len(),
        2,
        "files kept, not copied again"
    );
    let comments = comments_on(&source, full);
    assert!(
        comments
            .iter()
            .any(|c| c.starts_with("Изменения переданы в сделку №")),
        "{comments:?}"
    );
    assert!(jobs_in(&relay, JobState::Failed).await.is_empty());
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}

/// What a transfer costs: a plain new deal takes two target requests (look
/// up, write) and two source requests (read, write back); the event the
/// relay's own write-back causes costs none; a person's change after it is
/// read and sent as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_deal_costs_two_requests_a_side_and_the_echo_none() {
    let (source, target) = start_fast_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &source, &target, &Options::fast());
    let (relay, url) = start_relay(&text).await;
    source.admin().add_handlers(b24_emulator::HandlerSeed {
        events: vec![b24_emulator::EventHandler {
            event: "ONCRMDEALUPDATE".into(),
            url: format!("{url}/hook/event/partner"),
            application_token: APP_TOKEN.into(),
        }],
        webhook_rules: vec![],
        robots: vec![],
    });
    for (round, title) in ["First", "Second"].into_iter().enumerate() {
        source.admin().reset_request_counts();
        target.admin().reset_request_counts();
        let deal = plain_deal(&source, title, "C2:PREPARATION");
        assert_eq!(post_rule(&url, deal).await, 200);
        wait_until("the transfer and its echo are through", WAIT, async || {
            let skipped = jobs_in(&relay, JobState::Skipped).await;
            skipped
                .iter()
                .filter(|j| {
                    j.message
                        .as_deref()
                        .unwrap_or("")
                        .contains("own write-back")
                })
                .count()
                == round + 1
                && idle(&relay).await
        })
        .await;
        let catalog = if round == 0 { 1 } else { 0 };
        assert_eq!(
            target.admin().request_count("batch"),
            2,
            "target: look up, write"
        );
        assert_eq!(
            target.admin().request_count("crm.item.fields"),
            catalog,
            "cached after the first"
        );
        assert_eq!(target.admin().total_requests(), 2 + catalog);
        assert_eq!(
            source.admin().request_count("batch"),
            2,
            "source: read, write back; the echo is not read"
        );
        assert_eq!(source.admin().total_requests(), 2 + catalog);
        let comments = comments_on(&source, deal);
        assert!(
            comments
                .iter()
                .any(|c| c.starts_with("Transferred to esb as deal #")),
            "{comments:?}"
        );
    }
    // A person's change right after: read and sent.
    let deal = jobs_in(&relay, JobState::Done).await[0].deal_id;
    rest(
        &source,
        SOURCE_SECRET,
        "crm.item.update",
        json!({"entityTypeId": 2, "id": deal, "fields": {"title": "Changed by a person"}}),
    )
    .await;
    wait_until("the change arrives", WAIT, async || {
        target_deals(&target)
            .iter()
            .any(|d| d["title"] == "Changed by a person")
            && idle(&relay).await
    })
    .await;
    assert_eq!(target_deals(&target).len(), 2);
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}

/// The responsible user hears of a failure (and, with notify = "always",
/// of every transfer) personally; comments speak to a sales manager, with
/// no command in them; `jobs show` keeps the technical chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_hear_what_happened_in_words_they_can_act_on() {
    let (source, target) = start_fast_portals().await;
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        route_extra: "notify = \"always\"",
        ..Options::fast()
    };
    let text = config_text(dir.path(), &source, &target, &options);
    let (relay, url) = start_relay(&text).await;
    let good = plain_deal(&source, "Pallets", "C2:PREPARATION");
    let bronze = source
        .admin()
        .insert_record(EntityType::Deal, &record(json!({"title": "Bronze deal", "categoryId": 2, "stageId": "C2:PREPARATION", "ufCrm_LEVEL": 3, "assignedById": 5})))
        .unwrap();
    for deal in [good, bronze] {
        assert_eq!(post_rule(&url, deal).await, 200);
    }
    wait_until("both jobs end", WAIT, async || {
        jobs_in(&relay, JobState::Failed).await.len() == 1 && idle(&relay).await
    })
    .await;
    let failure = comments_on(&source, bronze);
    assert_eq!(
        failure,
        [
            "The deal could not be transferred to esb: ask your administrator: option «Bronze» is missing in field «UF_CRM_TIER» on the target portal."
        ]
    );
    let notes = source.admin().notifications();
    let to_olga: Vec<String> = notes
        .iter()
        .filter(|n| n["to"] == 5)
        .map(|n| n["message"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        to_olga
            .iter()
            .any(|m| m.contains("«Pallets»") && m.contains("was transferred to esb")),
        "{to_olga:?}"
    );
    assert!(
        to_olga
            .iter()
            .any(|m| m.contains("«Bronze deal»") && m.contains("option «Bronze» is missing")),
        "{to_olga:?}"
    );
    for text in failure.iter().chain(&to_olga) {
        assert!(
            !text.contains("b24-relay") && !text.contains("replay"),
            "{text}"
        );
    }
    let failed = jobs_in(&relay, JobState::Failed).await.remove(0);
    let shown = b24_relay::cli::jobs_output(
        Config::parse(&text).unwrap(),
        b24_relay::cli::JobsAction::Show { id: failed.id },
    )
    .await
    .unwrap();
    assert!(
        shown.iter().any(|l| l.contains("[mapping, permanent]")
            && l.contains("ufCrm_LEVEL → ufCrm_TIER")
            && l.contains("values")),
        "{shown:?}"
    );
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}
