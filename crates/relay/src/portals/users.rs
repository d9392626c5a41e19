//! Users of one portal as the relay needs them: on a target, the active
//! user with an e-mail (responsible users and employee fields are matched
//! by e-mail); on a source, a user's name and e-mail by id. Both cached
//! for the field cache's time to live, "no such user" included.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mapping::{SourceUser, scalar};

pub struct UserDirectory {
    ttl: Duration,
    by_email: std::sync::Mutex<HashMap<String, (Instant, Option<i64>)>>,
    by_id: std::sync::Mutex<HashMap<i64, (Instant, SourceUser)>>,
}

/// The cache key of an e-mail: trimmed, lower case.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

impl UserDirectory {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            by_email: std::sync::Mutex::new(HashMap::new()),
            by_id: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// A cached target user for `email`: `Some(None)` is a cached "none".
    pub fn cached_email(&self, email: &str) -> Option<Option<i64>> {
        let cache = self.by_email.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&email_key(email))
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, id)| *id)
    }

    /// Remembers the answer of `user.get {FILTER: {EMAIL, ACTIVE}}`.
    pub fn remember_email(&self, email: &str, users: &Value) -> Option<i64> {
        let found = users
            .as_array()
            .and_then(|users| users.first())
            .and_then(|user| scalar(&user["ID"]).parse::<i64>().ok());
        self.by_email
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(email_key(email), (Instant::now(), found));
        found
    }

    pub fn cached_user(&self, id: i64) -> Option<SourceUser> {
        let cache = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&id)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, user)| user.clone())
    }

    /// Remembers users from a `user.get` answer; returns how many.
    pub fn remember_users(&self, users: &Value) -> usize {
        let mut cache = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let mut count = 0;
        for user in users.as_array().into_iter().flatten() {
            let Some(id) = crate::portals::id_of(user.get("ID")) else {
                continue;
            };
            let name = [scalar(&user["NAME"]), scalar(&user["LAST_NAME"])]
                .into_iter()
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let email = Some(scalar(&user["EMAIL"])).filter(|e| !e.is_empty());
            cache.insert(id, (Instant::now(), SourceUser { name, email }));
            count += 1;
        }
        count
    }
}
