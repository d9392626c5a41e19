//! `b24-relay check`: what each portal grants and offers against what the
//! configured routes need — scopes, methods (with the `crm.deal.*` twins an
//! old box is served with), the mapping against live fields, and stages.

use std::collections::BTreeSet;

use anyhow::bail;

use crate::app::Parts;
use crate::config::{Config, Route, ValueRule};
use crate::mapping::{self, Catalogs, FieldCatalog, FieldType};

fn methods_for(config: &Config, portal: &str) -> Vec<&'static str> {
    let mut methods = BTreeSet::new();
    for route in config.routes.iter().filter(|r| r.from == portal) {
        // The deal, its contacts and company, its responsible user, fields.
        methods.extend([
            "batch",
            "crm.item.get",
            "crm.item.list",
            "crm.item.fields",
            "crm.status.list",
            "user.get",
        ]);
        if route.products {
            methods.insert("crm.item.productrow.list");
        }
        if route.writeback_comment {
            methods.insert("crm.timeline.comment.add");
        }
        if route.writeback_field.is_some() {
            methods.insert("crm.item.update");
        }
        if route.notify != crate::config::Notify::Never {
            // The responsible user's personal notification needs `im`.
            methods.insert("im.notify");
        }
    }
    for route in config.routes.iter().filter(|r| r.to == portal) {
        methods.extend([
            "batch",
            "crm.item.add",
            "crm.item.update",
            "crm.item.list",
            "crm.item.get",
            "crm.item.fields",
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

/// Problems of a route's mapping against the portals' live deal fields:
/// every test a transfer runs on a value — field and type compatibility,
/// each option of every mapped list, value tables, employees, CRM bindings,
/// files, constants, the write-back field — each with the fix.
pub fn mapping_problems(
    route: &Route,
    source: &FieldCatalog,
    target: &FieldCatalog,
) -> Vec<String> {
    let mut problems = Vec::new();
    let name = &route.name;
    let catalogs = Catalogs {
        source: Some(source),
        target: Some(target),
    };
    for planned in mapping::plan_each(route, catalogs) {
        match planned {
            Err(error) => problems.push(format!("route {name}: {error}")),
            Ok(plan) => {
                for error in plan.option_problems().iter().chain(&plan.shape_problems()) {
                    problems.push(format!("route {name}: {error}"));
                }
            }
        }
    }
    for (field, rule) in &route.values {
        let (Some(info), ValueRule::Table(table)) = (target.get(field), rule) else {
            continue;
        };
        for (from, to) in table {
            if info.option_text(to).is_none() {
                problems.push(format!(
                    "route {name}: values.{field}: \"{from}\" maps to {to}, which is not an option of {field} on {}; use one of: {}",
                    route.to,
                    info.options.iter().map(|(id, text)| format!("{id} ({text})")).collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    for field in &route.files {
        let target_field = route.fields.get(field).unwrap_or(field);
        match (source.get(field), target.get(target_field)) {
            (None, _) => problems.push(format!(
                "route {name}: files: {field} does not exist on {}; check the name with `b24-relay fields`",
                route.from
            )),
            (_, None) => problems.push(format!(
                "route {name}: files: target field {target_field} does not exist on {}; create a file field or map {field} to one in `fields`",
                route.to
            )),
            (Some(s), Some(t)) if s.kind != FieldType::File || t.kind != FieldType::File => {
                problems.push(format!(
                    "route {name}: files: {field} → {target_field} must both be file fields (they are {} and {})",
                    s.kind.name(),
                    t.kind.name()
                ))
            }
            (Some(s), Some(t)) if s.multiple && !t.multiple => problems.push(format!(
                "route {name}: files: {field} holds several files and {target_field} one; make {target_field} multiple on {}",
                route.to
            )),
            _ => {}
        }
    }
    if let Some(field) = &route.writeback_field {
        match source.get(field) {
            None => problems.push(format!(
                "route {name}: writeback.field {field} does not exist on {}; create a string field for the target deal id",
                route.from
            )),
            Some(info) if info.read_only => problems.push(format!(
                "route {name}: writeback.field {field} is read-only on {}",
                route.from
            )),
            Some(info) if !matches!(info.kind, FieldType::String | FieldType::Integer | FieldType::Double) => {
                problems.push(format!(
                    "route {name}: writeback.field {field} is a {} field; use a string or integer field",
                    info.kind.name()
                ))
            }
            _ => {}
        }
    }
    for (field, value) in &route.constants {
        match target.get(field) {
            None => problems.push(format!(
                "route {name}: constant field {field} does not exist on {}",
                route.to
            )),
            Some(info) if info.read_only => problems.push(format!(
                "route {name}: constant field {field} is read-only on {}",
                route.to
            )),
            Some(info) if info.kind == FieldType::Enumeration => {
                let id = mapping::scalar(value);
                if info.option_text(&id).is_none() {
                    problems.push(format!(
                        "route {name}: constant {field} = {id} is not an option of {field} on {}; use one of: {}",
                        route.to,
                        info.options.iter().map(|(id, text)| format!("{id} ({text})")).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            _ => {}
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
    for route in &config.routes {
        let (Some(from), Some(to)) = (
            parts.transfer.portals.get(&route.from),
            parts.transfer.portals.get(&route.to),
        ) else {
            continue;
        };
        match (from.deal_catalog(true).await, to.deal_catalog(true).await) {
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
