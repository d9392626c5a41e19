//! Which deals a backfill moves: the route's `when`, narrowed by
//! `--stage` and `--since`, as a list filter in the portal's dialect.

use b24_cli_support::exit::UsageError;
use b24_client::IdScan;
use serde_json::{Value, json};

use crate::config::Route;
use crate::transfer::Dialect;

/// The filter a backfill scans with, checked against the route.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub category: Option<i64>,
    /// Empty: any stage.
    pub stages: Vec<String>,
    /// As sent to the portal (`YYYY-MM-DDT00:00:00` for a bare date).
    pub since: Option<String>,
}

impl Selection {
    /// The route's `when`, narrowed by `--stage` and `--since`; a stage
    /// the route does not take, or a malformed date, is a usage error.
    pub fn of(route: &Route, stages: &[String], since: Option<&str>) -> Result<Self, UsageError> {
        if !route.when_stages.is_empty() {
            if let Some(bad) = stages.iter().find(|s| !route.when_stages.contains(s)) {
                return Err(UsageError(format!(
                    "--stage {bad}: route `{}` only takes deals in {} (its `when.stages`); a backfill cannot move deals the route would not",
                    route.name,
                    route.when_stages.join(", ")
                )));
            }
        }
        let stages = if stages.is_empty() {
            route.when_stages.clone()
        } else {
            let mut chosen: Vec<String> = stages.to_vec();
            chosen.dedup();
            chosen
        };
        let since = since.map(parse_since).transpose()?;
        Ok(Self {
            category: route.when_category,
            stages,
            since,
        })
    }

    /// The filter as people read it, and as the store tells runs apart.
    pub fn describe(&self) -> String {
        format!(
            "category {}, stages {}, created {}",
            self.category
                .map_or_else(|| "any".to_owned(), |c| c.to_string()),
            if self.stages.is_empty() {
                "any".to_owned()
            } else {
                self.stages.join("|")
            },
            self.since
                .as_deref()
                .map_or_else(|| "any time".to_owned(), |s| format!("since {s}"))
        )
    }

    /// The list filter in the portal's dialect.
    pub fn filter(&self, dialect: Dialect) -> Value {
        let (category, stage, created) = match dialect {
            Dialect::Item => ("=categoryId", "@stageId", ">=createdTime"),
            Dialect::Legacy => ("=CATEGORY_ID", "@STAGE_ID", ">=DATE_CREATE"),
        };
        let mut filter = serde_json::Map::new();
        if let Some(c) = self.category {
            filter.insert(category.into(), json!(c));
        }
        if !self.stages.is_empty() {
            filter.insert(stage.into(), json!(self.stages));
        }
        if let Some(since) = &self.since {
            filter.insert(created.into(), json!(since));
        }
        Value::Object(filter)
    }

    pub(super) fn scan(&self, dialect: Dialect) -> IdScan {
        match dialect {
            Dialect::Item => IdScan::items(2, self.filter(dialect), &["id"]),
            Dialect::Legacy => IdScan::legacy("crm.deal.list", self.filter(dialect), &["ID"]),
        }
    }
}

/// `YYYY-MM-DD` (midnight in the portal's time zone) or RFC 3339.
pub fn parse_since(text: &str) -> Result<String, UsageError> {
    let bad = || {
        UsageError(format!(
            "--since {text}: write a date as YYYY-MM-DD (2024-03-01) or an RFC 3339 time (2024-03-01T09:00:00+03:00)"
        ))
    };
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range.clone())
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
            .then(|| text[range].parse::<u32>().unwrap_or(0))
    };
    let date_ok = b.len() >= 10
        && b[4] == b'-'
        && b[7] == b'-'
        && digits(0..4).is_some()
        && digits(5..7).is_some_and(|m| (1..=12).contains(&m))
        && digits(8..10).is_some_and(|d| (1..=31).contains(&d));
    if !date_ok {
        return Err(bad());
    }
    if b.len() == 10 {
        return Ok(format!("{text}T00:00:00"));
    }
    let time_ok = b.len() >= 19
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':'
        && digits(11..13).is_some_and(|h| h < 24)
        && digits(14..16).is_some_and(|m| m < 60)
        && digits(17..19).is_some_and(|s| s < 61);
    if !time_ok {
        return Err(bad());
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        rest = &fraction[n..];
    }
    let zone_ok = rest.eq_ignore_ascii_case("z")
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':'
            && rest[1..3].bytes().all(|c| c.is_ascii_digit())
            && rest[4..6].bytes().all(|c| c.is_ascii_digit()));
    if !zone_ok {
        return Err(bad());
    }
    Ok(format!("{}T{}", &text[..10], &text[11..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_or_an_rfc3339_time() {
        assert_eq!(parse_since("2024-03-01").unwrap(), "2024-03-01T00:00:00");
        assert_eq!(
            parse_since("2024-03-01T09:30:00+03:00").unwrap(),
            "2024-03-01T09:30:00+03:00"
        );
        assert_eq!(
            parse_since("2024-03-01 09:30:00.5Z").unwrap(),
            "2024-03-01T09:30:00.5Z"
        );
        for bad in [
            "",
            "01.03.2024",
            "2024-13-01",
            "2024-03-01T25:00:00Z",
            "2024-03-01T09:30",
            "2024-03-01T09:30:00",
            "yesterday",
        ] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
