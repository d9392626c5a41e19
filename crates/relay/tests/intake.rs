//! Intake over real HTTP: what is refused (and never queued), what is
//! queued and coalesced. Workers run but find nothing to transfer from
//! refused requests.

mod common;

use b24_relay::{Config, JobState, Relay};
use common::*;

fn event_body(token: &str, domain: &str, deal: &str) -> String {
    format!(
        "event=ONCRMDEALUPDATE&event_handler_id=1&data[FIELDS][ID]={deal}&ts=1724140800\
&auth[domain]={domain}&auth[client_endpoint]=https://{domain}/rest/\
&auth[server_endpoint]=https://oauth.bitrix.info/rest/&auth[member_id]=a223c6b3710f85df22e9377d6c4f7553\
&auth[application_token]={token}"
    )
}

async fn post(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let response = client()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_refuses_what_it_must_and_queues_the_rest() {
    b24_testkit::install_crypto_provider();
    let (source, target) = start_portals(50, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), &source, &target, &Options::default())
        .metrics_listen("127.0.0.1:0")
        .render();
    let relay = Relay::start(Config::parse(&text).unwrap()).await.unwrap();
    let base = format!("http://{}", relay.addr);
    let second = Relay::start(Config::parse(&text).unwrap()).await;
    assert!(
        matches!(second, Err(b24_relay::StartError::Locked { .. })),
        "a second server on the same store is refused"
    );
    let event_url = format!("{base}/hook/event/partner");
    let rule_url = |secret: &str| format!("{base}/hook/rule/partner{secret}");
    let rule_body = "document_id[0]=crm&document_id[1]=CCrmDocumentDeal&document_id[2]=DEAL_5";

    let refused = [
        (
            post(
                &event_url,
                FORM,
                event_body("wrong-token", "partner.test", "5"),
            )
            .await,
            401,
            "wrong application token",
        ),
        (
            post(&event_url, FORM, event_body(APP_TOKEN, "evil.test", "5")).await,
            401,
            "auth[domain]",
        ),
        (
            post(&event_url, FORM, event_body("", "partner.test", "5")).await,
            401,
            "wrong application token",
        ),
        (
            post(&rule_url("?secret=nope"), FORM, rule_body).await,
            401,
            "secret",
        ),
        (post(&rule_url(""), FORM, rule_body).await, 401, "secret"),
        (
            post(
                &event_url,
                FORM,
                event_body(APP_TOKEN, "partner.test", "abc"),
            )
            .await,
            400,
            "data[FIELDS][ID]",
        ),
        (
            post(&event_url, "application/json", "{not json").await,
            400,
            "invalid JSON",
        ),
        (
            post(
                &rule_url(&format!("?secret={RULE_SECRET}")),
                FORM,
                "document_id[2]=LEAD_5",
            )
            .await,
            400,
            "DEAL_",
        ),
        (
            post(&event_url, FORM, vec![b'a'; 1024 * 1024]).await,
            413,
            "larger than",
        ),
        (
            post(
                &format!("{base}/hook/event/nobody"),
                FORM,
                event_body(APP_TOKEN, "partner.test", "5"),
            )
            .await,
            404,
            "unknown portal",
        ),
    ];
    for ((status, body), expected_status, expected_text) in refused {
        assert_eq!(status, expected_status, "{body}");
        assert!(body.contains(expected_text), "{expected_text}: {body}");
        for secret in [APP_TOKEN, RULE_SECRET, SOURCE_SECRET] {
            assert!(!body.contains(secret), "{body}");
        }
    }
    assert!(
        relay.store.jobs(None, 100).await.unwrap().is_empty(),
        "nothing queued"
    );

    // Valid: form event, JSON event, rule; the same deal coalesces.
    let (status, body) = post(&event_url, FORM, event_body(APP_TOKEN, "partner.test", "5")).await;
    assert_eq!(status, 200, "{body}");
    let json_event = serde_json::json!({
        "event": "ONCRMDEALUPDATE",
        "data": {"FIELDS": {"ID": "6"}},
        "auth": {"domain": "partner.test", "application_token": APP_TOKEN}
    });
    let (status, body) = post(&event_url, "application/json", json_event.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(
        &rule_url(&format!("?secret={RULE_SECRET}")),
        FORM,
        rule_body,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = post(
        &event_url,
        FORM,
        event_body(APP_TOKEN, "partner.test", "5").replace("ONCRMDEALUPDATE", "ONCRMLEADADD"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("ignored"), "{body}");
    let jobs = relay.store.jobs(None, 100).await.unwrap();
    let deals: std::collections::BTreeSet<i64> = jobs.iter().map(|j| j.deal_id).collect();
    assert_eq!(deals, [5, 6].into_iter().collect(), "{jobs:?}");
    assert!(jobs.len() <= 3, "{jobs:?}");
    // Deals 5 and 6 do not exist on the source: permanent failures, no retries.
    let failed = async |relay: &Relay| {
        relay
            .store
            .jobs(Some(JobState::Failed), 100)
            .await
            .unwrap()
            .len()
    };
    wait_until(
        "the jobs end",
        std::time::Duration::from_secs(60),
        async || {
            relay
                .store
                .jobs(Some(JobState::Pending), 100)
                .await
                .unwrap()
                .is_empty()
                && relay
                    .store
                    .jobs(Some(JobState::Running), 100)
                    .await
                    .unwrap()
                    .is_empty()
        },
    )
    .await;
    assert!(failed(&relay).await >= 2);
    let message = relay.store.jobs(Some(JobState::Failed), 1).await.unwrap()[0]
        .message
        .clone()
        .unwrap();
    assert!(message.contains("does not exist"), "{message}");
    let metrics = relay.metrics.render();
    assert!(
        metrics.contains("b24_relay_intake_requests_total{kind=\"event\",status=\"401\"} 3"),
        "{metrics}"
    );
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}

/// What real callers send that the first intake refused: PHP indices in any
/// order, a JSON body under the form content type, a rule secret with `+`;
/// and what it accepted but must not: a lead's document with a DEAL_ id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_reads_bodies_as_bitrix24_and_php_do() {
    b24_testkit::install_crypto_provider();
    let (source, target) = start_portals(50, 2.0).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &source, &target, &Options::default());
    // A secret as a password generator makes it: `+` and `/` (base64).
    let secret = "Ab+c/9+Zq";
    std::fs::write(dir.path().join("partner.rule"), secret).unwrap();
    let relay = Relay::start(Config::parse(&text).unwrap()).await.unwrap();
    let base = format!("http://{}", relay.addr);
    let rule_url = |query: &str| format!("{base}/hook/rule/partner?{query}");
    let document = |parts: [(&str, &str); 3]| {
        parts
            .iter()
            .map(|(index, value)| format!("document_id[{index}]={value}"))
            .collect::<Vec<_>>()
            .join("&")
    };

    // The secret typed literally, percent-encoded, and wrong.
    let reversed = document([("2", "DEAL_31"), ("1", "CCrmDocumentDeal"), ("0", "crm")]);
    let (status, body) = post(&rule_url(&format!("secret={secret}")), FORM, reversed).await;
    assert_eq!(status, 200, "{body}");
    let encoded = "secret=Ab%2Bc%2F9%2BZq";
    let plain = document([("0", "crm"), ("1", "CCrmDocumentDeal"), ("2", "DEAL_32")]);
    let (status, body) = post(&rule_url(encoded), FORM, plain.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(&rule_url("secret=Ab c/9 Zq"), FORM, plain.clone()).await;
    assert_eq!(status, 401, "a space is not a plus");
    let (status, _) = post(&rule_url("secret=Ab"), FORM, plain).await;
    assert_eq!(status, 401);

    // A lead's document is refused even with a DEAL_ id.
    let lead = document([("0", "crm"), ("1", "CCrmDocumentLead"), ("2", "DEAL_103")]);
    let (status, body) = post(&rule_url(&format!("secret={secret}")), FORM, lead).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("CCrmDocumentLead"), "{body}");

    // JSON sent with the form content type (curl -d, many HTTP tools).
    let json_event = serde_json::json!({
        "event": "ONCRMDEALUPDATE",
        "data": {"FIELDS": {"ID": "33"}},
        "auth": {"domain": "partner.test", "application_token": APP_TOKEN}
    });
    let (status, body) = post(
        &format!("{base}/hook/event/partner"),
        FORM,
        json_event.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let mut queued: Vec<i64> = relay
        .store
        .jobs(None, 100)
        .await
        .unwrap()
        .iter()
        .map(|j| j.deal_id)
        .collect();
    queued.sort();
    assert_eq!(queued, [31, 32, 33]);
    relay.shutdown().await;
    source.shutdown().await;
    target.shutdown().await;
}
