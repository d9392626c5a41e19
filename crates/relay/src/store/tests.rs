use super::*;

async fn open() -> (tempfile::TempDir, Store) {
    open_with(StoreOptions::default()).await
}

async fn open_with(options: StoreOptions) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite_with(&dir.path().join("sub/relay.db"), options)
        .await
        .unwrap();
    (dir, store)
}

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn requests_for_a_waiting_deal_coalesce() {
    let (_dir, store) = open().await;
    let first = store
        .enqueue("partner", 7, "ONCRMDEALUPDATE")
        .await
        .unwrap();
    let again = store
        .enqueue("partner", 7, "ONCRMDEALUPDATE")
        .await
        .unwrap();
    let other = store.enqueue("partner", 8, "rule").await.unwrap();
    assert!(!first.coalesced && again.coalesced);
    assert_eq!(first.job_id, again.job_id);
    assert_ne!(first.job_id, other.job_id);
    assert_eq!(store.job(first.job_id).await.unwrap().unwrap().coalesced, 1);
}

#[tokio::test]
async fn a_deal_is_never_claimed_twice_at_once() {
    let (_dir, store) = open().await;
    store.enqueue("partner", 7, "rule").await.unwrap();
    let claimed = store.claim(LEASE).await.unwrap().unwrap();
    assert_eq!((claimed.state, claimed.attempts), (JobState::Running, 1));
    // A request arriving during the transfer waits for it.
    let queued = store.enqueue("partner", 7, "rule").await.unwrap();
    assert!(!queued.coalesced);
    assert!(store.claim(LEASE).await.unwrap().is_none());
    store
        .finish(claimed.id, JobState::Done, "created", Some(5))
        .await
        .unwrap();
    let next = store.claim(LEASE).await.unwrap().unwrap();
    assert_eq!(next.id, queued.job_id);
    let done = store.job(claimed.id).await.unwrap().unwrap();
    assert_eq!(done.target_deal_id, Some(5));
}

#[tokio::test]
async fn a_lapsed_lease_or_a_restart_makes_the_job_due_again() {
    let (_dir, store) = open_with(StoreOptions {
        max_interruptions: 10,
        interrupted_delay: Duration::ZERO,
        ..StoreOptions::default()
    })
    .await;
    store.enqueue("partner", 1, "rule").await.unwrap();
    let claimed = store.claim(Duration::ZERO).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = store.claim(LEASE).await.unwrap().unwrap();
    // The cut-short attempt is given back and counted apart.
    assert_eq!(
        (again.id, again.attempts, again.interruptions),
        (claimed.id, 1, 1)
    );
    assert_eq!(store.release_running().await.unwrap(), 1);
    let third = store.claim(LEASE).await.unwrap().unwrap();
    assert_eq!((third.attempts, third.interruptions), (1, 2));
}

/// Restarts never use up a job's attempts ("gave up after 11 attempts (max
/// 10)"), an interrupted job goes after the others, and one that the relay
/// keeps stopping on fails after `max_interruptions` with what to do.
#[tokio::test]
async fn interruptions_are_counted_apart_and_limited() {
    let (_dir, store) = open_with(StoreOptions {
        max_interruptions: 3,
        interrupted_delay: Duration::from_secs(3600),
        ..StoreOptions::default()
    })
    .await;
    let first = store.enqueue("partner", 1, "rule").await.unwrap().job_id;
    let second = store.enqueue("partner", 2, "rule").await.unwrap().job_id;
    let claimed = store.claim(LEASE).await.unwrap().unwrap();
    assert_eq!(claimed.id, first);
    store.release_running().await.unwrap();
    // The interrupted job waits; the other one goes first.
    assert_eq!(store.claim(LEASE).await.unwrap().unwrap().id, second);
    assert!(store.claim(LEASE).await.unwrap().is_none());
    let waiting = store.job(first).await.unwrap().unwrap();
    assert_eq!(
        (waiting.state, waiting.attempts, waiting.interruptions),
        (JobState::Pending, 0, 1)
    );

    let (_dir, store) = open_with(StoreOptions {
        max_interruptions: 3,
        interrupted_delay: Duration::ZERO,
        ..StoreOptions::default()
    })
    .await;
    let id = store.enqueue("partner", 1, "rule").await.unwrap().job_id;
    for _ in 0..3 {
        let job = store.claim(LEASE).await.unwrap().unwrap();
        assert_eq!(job.attempts, 1, "interruptions never count as attempts");
        store.release_running().await.unwrap();
    }
    store.claim(LEASE).await.unwrap().unwrap();
    store.release_running().await.unwrap();
    let failed = store.job(id).await.unwrap().unwrap();
    assert_eq!((failed.state, failed.interruptions), (JobState::Failed, 4));
    let message = failed.message.unwrap();
    assert!(message.contains("stopped 4 times"), "{message}");
    assert!(message.contains(&format!("jobs replay {id}")), "{message}");
    assert!(store.claim(LEASE).await.unwrap().is_none());
}

/// A graceful stop gives the job back as it was: due at once, nothing
/// counted.
#[tokio::test]
async fn a_released_job_is_due_at_once_and_counts_nothing() {
    let (_dir, store) = open().await;
    let id = store.enqueue("partner", 1, "rule").await.unwrap().job_id;
    store.claim(LEASE).await.unwrap().unwrap();
    store.release(id).await.unwrap();
    let job = store.claim(LEASE).await.unwrap().unwrap();
    assert_eq!((job.id, job.attempts, job.interruptions), (id, 1, 0));
}

#[tokio::test]
async fn retry_waits_and_replay_requeues_failed_jobs() {
    let (_dir, store) = open().await;
    let id = store.enqueue("partner", 1, "rule").await.unwrap().job_id;
    store.claim(LEASE).await.unwrap().unwrap();
    store
        .retry_later(id, Duration::from_secs(3600), "portal down")
        .await
        .unwrap();
    assert!(store.claim(LEASE).await.unwrap().is_none(), "not due yet");
    assert_eq!(
        store.job(id).await.unwrap().unwrap().state,
        JobState::Pending
    );
    assert!(matches!(
        store.replay(id).await,
        Err(StoreError::NotReplayable { .. })
    ));

    let failed = store.enqueue("partner", 2, "rule").await.unwrap().job_id;
    store.claim(LEASE).await.unwrap().unwrap();
    store
        .finish(failed, JobState::Failed, "bad value", None)
        .await
        .unwrap();
    assert_eq!(
        store.jobs(Some(JobState::Failed), 10).await.unwrap().len(),
        1
    );
    assert_eq!(store.replay_failed().await.unwrap(), 1);
    assert!(
        store
            .jobs(Some(JobState::Failed), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let replayed = store.claim(LEASE).await.unwrap().unwrap();
    assert_eq!((replayed.deal_id, replayed.trigger.as_str()), (2, "replay"));
    let stats = store.stats().await.unwrap();
    assert!(stats.oldest_pending_age.is_some());
}

#[tokio::test]
async fn links_remember_creates_in_flight_and_copied_files() {
    let (_dir, store) = open().await;
    let key = LinkKey {
        kind: LinkKind::Deal,
        source_portal: "partner",
        source_id: 9,
        target_portal: "esb",
    };
    assert_eq!(store.link(&key).await.unwrap(), None);
    store.mark_creating(&key).await.unwrap();
    assert_eq!(
        store.link(&key).await.unwrap(),
        Some(Link {
            target_id: None,
            synced_hash: None
        })
    );
    store.set_link(&key, 44, Some("abc")).await.unwrap();
    store.mark_creating(&key).await.unwrap();
    assert_eq!(store.link(&key).await.unwrap().unwrap().target_id, Some(44));
    store
        .add_copied_files(&key, "ufCrm_DOCS", &[3, 1, 3])
        .await
        .unwrap();
    assert_eq!(
        store.copied_files(&key, "ufCrm_DOCS").await.unwrap(),
        vec![1, 3]
    );
}

#[tokio::test]
async fn attempts_are_kept_in_order() {
    let (_dir, store) = open().await;
    let id = store.enqueue("partner", 1, "rule").await.unwrap().job_id;
    for (number, outcome) in [(2, "done"), (1, "retry")] {
        let attempt = Attempt {
            number,
            started_at_ms: 10,
            finished_at_ms: 25,
            outcome: outcome.into(),
            message: format!("try {number}"),
        };
        store.record_attempt(id, &attempt).await.unwrap();
    }
    let attempts = store.attempts(id).await.unwrap();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry", "done"]);
    assert!(store.attempts(id + 1).await.unwrap().is_empty());
}

#[tokio::test]
async fn rule_runs_wait_for_their_job_and_follow_it_when_merged() {
    let (_dir, store) = open().await;
    let queued = store
        .enqueue_rule_call("partner", 7, "W1", "token-1", "p2e")
        .await
        .unwrap();
    let job = store.claim(LEASE).await.unwrap().unwrap();
    assert_eq!((job.id, job.trigger.as_str()), (queued.job_id, "app-rule"));
    // Not ended yet: nothing to answer.
    assert!(
        store
            .rule_calls_to_answer("partner", None)
            .await
            .unwrap()
            .is_empty()
    );
    // A second run while the first job runs waits for the next job; the
    // first job's retry merges into it, and so does its run.
    let second = store
        .enqueue_rule_call("partner", 7, "W2", "token-2", "p2e")
        .await
        .unwrap();
    assert_ne!(second.job_id, job.id);
    store
        .retry_later(job.id, Duration::ZERO, "busy")
        .await
        .unwrap();
    let next = store.claim(LEASE).await.unwrap().unwrap();
    assert_eq!(next.id, second.job_id);
    store
        .finish(next.id, JobState::Done, "created", Some(9))
        .await
        .unwrap();
    let calls = store.rule_calls_to_answer("partner", None).await.unwrap();
    let workflows: Vec<&str> = calls.iter().map(|c| c.workflow_id.as_str()).collect();
    assert_eq!(workflows, ["W1", "W2"]);
    assert!(calls.iter().all(|c| c.job_id == next.id));
    assert!(!format!("{:?}", calls[0]).contains("token-1"));
    store.finish_rule_call(calls[0].id, None).await.unwrap();
    store
        .finish_rule_call(calls[1].id, Some("refused"))
        .await
        .unwrap();
    assert!(
        store
            .rule_calls_to_answer("partner", None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn runs_of_a_superseded_job_move_to_the_pending_one() {
    let (_dir, store) = open().await;
    store
        .enqueue_rule_call("partner", 7, "W1", "token-1", "p2e")
        .await
        .unwrap();
    let running = store.claim(LEASE).await.unwrap().unwrap();
    let pending = store
        .enqueue("partner", 7, "ONCRMDEALUPDATE")
        .await
        .unwrap();
    // The process dies; at start-up the running job is superseded.
    store.release_running().await.unwrap();
    assert_eq!(
        store.job(running.id).await.unwrap().unwrap().state,
        JobState::Done
    );
    let next = store.claim(LEASE).await.unwrap().unwrap();
    assert_eq!(next.id, pending.job_id);
    store
        .finish(next.id, JobState::Failed, "broken", None)
        .await
        .unwrap();
    let calls = store.rule_calls_to_answer("partner", None).await.unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].job_id, pending.job_id);
}

#[tokio::test]
async fn installs_keep_tokens_and_a_refresh_replaces_them() {
    let (_dir, store) = open().await;
    assert!(store.app_install("partner").await.unwrap().is_none());
    let pair = |a: &str, r: &str| b24_client::TokenPair {
        access_token: Secret::new(a),
        refresh_token: Secret::new(r),
    };
    let install = AppInstall {
        client_endpoint: "https://p.test/rest/".into(),
        domain: "p.test".into(),
        member_id: "m1".into(),
        scopes: "crm,bizproc".into(),
        application_token: Secret::new("app-1"),
        tokens: pair("a1", "r1"),
        server_endpoint: Some("https://oauth.bitrix24.tech/rest/".into()),
        reinstall_reason: None,
        updated_at_ms: 0,
    };
    store.save_app_install("partner", &install).await.unwrap();
    store
        .save_app_tokens("partner", &pair("a2", "r2"))
        .await
        .unwrap();
    store
        .mark_reinstall_needed("partner", "invalid_grant")
        .await
        .unwrap();
    let stored = store.app_install("partner").await.unwrap().unwrap();
    assert_eq!(stored.tokens, pair("a2", "r2"));
    assert_eq!(stored.reinstall_reason.as_deref(), Some("invalid_grant"));
    let shown = format!("{stored:?}");
    for secret in ["a2", "r2", "app-1"] {
        assert!(!shown.contains(&format!("\"{secret}\"")), "{shown}");
    }
    // A new install clears the flag.
    store.save_app_install("partner", &install).await.unwrap();
    let again = store.app_install("partner").await.unwrap().unwrap();
    assert_eq!(
        (again.reinstall_reason, again.tokens),
        (None, pair("a1", "r1"))
    );
}

#[tokio::test]
async fn the_store_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.db");
    let store = Store::open_sqlite(&fresh).await.unwrap();
    store.enqueue("partner", 7, "rule").await.unwrap();
    assert_eq!(mode(&fresh), 0o600);
    assert_eq!(mode(&dir.path().join("fresh.db-wal")), 0o600);

    // A store an admin created world-readable loses group and other access.
    let existing = dir.path().join("existing.db");
    drop(Store::open_sqlite(&existing).await.unwrap());
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
    Store::open_sqlite(&existing).await.unwrap();
    assert_eq!(mode(&existing), 0o600);
}
