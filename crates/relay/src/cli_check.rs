//! `b24-relay check`: what each portal grants and offers against what the
//! configured routes need — scopes, methods (with the `crm.deal.*` twins an
//! old box is served with), the mapping against live fields, and stages.

use std::collections::BTreeSet;

use anyhow::bail;

use crate::app::Parts;
use crate::config::{Config, Route, ValueRule};
use crate::mapping::FieldCatalog;

fn methods_for(config: &Config, portal: &str) -> Vec<&'static str> {
    let mut methods = BTreeSet::new();
    for route in config.routes.iter().filter(|r| r.from == portal) {
        methods.extend(["batch", "crm.item.get", "crm.status.list"]);
        if route.products {
            methods.insert("crm.item.productrow.list");
        }
        if route.writeback_comment {
            methods.insert("crm.timeline.comment.add");
        }
        if route.writeback_field.is_some() {
            methods.insert("crm.item.update");
        }
        if route.responsible.is_some() {
            methods.insert("user.get");
        }
        if !route.values.is_empty() {
            methods.insert("crm.item.fields");
        }
    }
    for route in config.routes.iter().filter(|r| r.to == portal) {
        methods.extend([
            "batch",
            "crm.item.add",
            "crm.item.update",
            "crm.item.list",
            "crm.status.list",
        ]);
        if route.products {
            methods.insert("crm.item.productrow.set");
        }
        if route.contact || route.company {
            methods.insert("crm.duplicate.findbycomm");
        }
        if route.responsible.is_some() {
            methods.insert("user.get");
        }
        if !route.values.is_empty() {
            methods.insert("crm.item.fields");
        }
    }
    methods.into_iter().collect()
}

/// Stage ids of a deal pipeline (`crm.status.list`, `DEAL_STAGE[_N]`).
async fn pipeline_stages(
    portal: &crate::portals::PortalHandle,
    category: i64,
) -> Result<BTreeSet<String>, b24_client::Error> {
    let entity = match category {
        0 => "DEAL_STAGE".to_owned(),
        n => format!("DEAL_STAGE_{n}"),
    };
    let response = portal
        .client
        .call(
            "crm.status.list",
            &serde_json::json!({"filter": {"ENTITY_ID": entity}}),
        )
        .await?;
    Ok(response
        .result
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|status| status["STATUS_ID"].as_str().map(str::to_owned))
        .collect())
}

/// The deprecated method a box without `crm.item.*` is served with.
fn legacy_twin(method: &str) -> Option<&'static str> {
    Some(match method {
        "crm.item.get" => "crm.deal.get",
        "crm.item.add" => "crm.deal.add",
        "crm.item.update" => "crm.deal.update",
        "crm.item.list" => "crm.deal.list",
        "crm.item.fields" => "crm.deal.fields",
        "crm.item.productrow.list" => "crm.deal.productrows.get",
        "crm.item.productrow.set" => "crm.deal.productrows.set",
        _ => return None,
    })
}

/// The relay needs a `crm.item.*` method or its `crm.deal.*` twin: keeps
/// whichever is usable (the item one when both are), so that only real gaps
/// are reported.
fn accept_legacy_twins(report: &mut b24_client::CheckReport) {
    let usable = |report: &b24_client::CheckReport, method: &str| {
        report
            .methods
            .iter()
            .any(|m| m.method == method && m.status == b24_client::MethodStatus::Available)
    };
    let mut dropped: BTreeSet<String> = BTreeSet::new();
    for check in &report.methods {
        if let Some(twin) = legacy_twin(&check.method) {
            let keep_item = usable(report, &check.method) || !usable(report, twin);
            dropped.insert(if keep_item {
                twin.to_owned()
            } else {
                check.method.clone()
            });
        }
    }
    report
        .methods
        .retain(|m| !dropped.contains(m.method.as_str()));
}

/// Problems of a route's mapping against the portals' live deal fields.
pub fn mapping_problems(
    route: &Route,
    source: &FieldCatalog,
    target: &FieldCatalog,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (from, to) in &route.fields {
        if !source.contains_key(from) {
            problems.push(format!(
                "route {}: source field {from} does not exist on {}",
                route.name, route.from
            ));
        }
        match target.get(to) {
            None => problems.push(format!(
                "route {}: target field {to} does not exist on {}",
                route.name, route.to
            )),
            Some(info) if info.read_only => problems.push(format!(
                "route {}: target field {to} is read-only",
                route.name
            )),
            Some(_) => {}
        }
    }
    for (field, rule) in &route.values {
        let Some(info) = target.get(field) else {
            continue;
        };
        if let ValueRule::Table(table) = rule {
            for (from, to) in table {
                if !info.options.iter().any(|(id, _)| id == to) {
                    problems.push(format!(
                        "route {}: values.{field}: \"{from}\" maps to {to}, which is not an option of {field} on {}",
                        route.name, route.to
                    ));
                }
            }
        }
    }
    for field in route.files.iter().chain(route.writeback_field.iter()) {
        if !source.contains_key(field) {
            problems.push(format!(
                "route {}: field {field} does not exist on {}",
                route.name, route.from
            ));
        }
    }
    for field in route.constants.keys() {
        if !target.contains_key(field) {
            problems.push(format!(
                "route {}: constant field {field} does not exist on {}",
                route.name, route.to
            ));
        }
    }
    problems
}

pub async fn check(config: Config) -> anyhow::Result<()> {
    let parts = Parts::open(config).await?;
    let config = &parts.config;
    let mut problems = Vec::new();
    for (name, portal) in parts.transfer.portals.iter() {
        let mut methods = methods_for(config, name);
        methods.extend(
            methods
                .iter()
                .filter_map(|m| legacy_twin(m))
                .collect::<Vec<_>>(),
        );
        match portal.client.check(&methods).await {
            Ok(mut report) => {
                accept_legacy_twins(&mut report);
                println!("{name}: {report}");
                problems.extend(
                    report
                        .problems()
                        .into_iter()
                        .map(|p| format!("{name}: {p}")),
                );
            }
            Err(error) => problems.push(format!("{name}: {error}")),
        }
    }
    problems.extend(crate::cli_app::check_apps(&parts).await);
    let ttl = config.field_cache_ttl;
    for route in &config.routes {
        let (Some(from), Some(to)) = (
            parts.transfer.portals.get(&route.from),
            parts.transfer.portals.get(&route.to),
        ) else {
            continue;
        };
        match (
            from.deal_catalog(ttl, true).await,
            to.deal_catalog(ttl, true).await,
        ) {
            (Ok(source), Ok(target)) => problems.extend(mapping_problems(route, &source, &target)),
            (Err(error), _) | (_, Err(error)) => problems.push(format!(
                "route {}: reading deal fields: {error}",
                route.name
            )),
        }
        let target_stages: Vec<&String> = route
            .target_stage
            .iter()
            .chain(route.stage_table.values())
            .collect();
        let checks = [
            (
                from,
                route.when_category,
                route.when_stages.iter().collect::<Vec<_>>(),
                &route.from,
            ),
            (to, Some(route.target_category), target_stages, &route.to),
        ];
        for (portal, category, stages, portal_name) in checks {
            let Some(category) = category.filter(|_| !stages.is_empty()) else {
                continue;
            };
            match pipeline_stages(portal, category).await {
                Ok(known) => problems
                    .extend(stages.iter().filter(|s| !known.contains(**s)).map(|stage| {
                    format!(
                        "route {}: stage {stage} is not in pipeline {category} on {portal_name}",
                        route.name
                    )
                })),
                Err(error) => problems.push(format!(
                    "route {}: reading the stages of pipeline {category} on {portal_name}: {error}",
                    route.name
                )),
            }
        }
    }
    if problems.is_empty() {
        println!("everything the routes need is there");
        return Ok(());
    }
    for problem in &problems {
        println!("PROBLEM {problem}");
    }
    bail!("{} problem(s) found", problems.len())
}

#[cfg(test)]
mod tests {
    use b24_client::{CheckReport, MethodCheck, MethodStatus};

    use super::*;

    fn report(methods: &[(&str, MethodStatus)]) -> CheckReport {
        CheckReport {
            portal: "box.test".into(),
            granted_scopes: vec!["crm".into()],
            methods: methods
                .iter()
                .map(|(method, status)| MethodCheck {
                    method: (*method).into(),
                    status: status.clone(),
                })
                .collect(),
            used_legacy_methods: false,
        }
    }

    #[test]
    fn a_crm_deal_twin_stands_in_for_a_missing_crm_item_method() {
        use MethodStatus::{Available, Missing};
        let mut old_box = report(&[
            ("crm.item.add", Missing),
            ("crm.deal.add", Available),
            ("batch", Available),
        ]);
        accept_legacy_twins(&mut old_box);
        assert!(old_box.is_ok(), "{:?}", old_box.problems());
        assert_eq!(old_box.methods.len(), 2);

        let mut new_box = report(&[("crm.item.add", Available), ("crm.deal.add", Missing)]);
        accept_legacy_twins(&mut new_box);
        assert!(new_box.is_ok());

        let mut neither = report(&[("crm.item.add", Missing), ("crm.deal.add", Missing)]);
        accept_legacy_twins(&mut neither);
        assert_eq!(neither.problems().len(), 1);
        assert!(neither.problems()[0].starts_with("crm.item.add"));
    }
}
