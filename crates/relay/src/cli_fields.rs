//! `b24-relay fields --route NAME`: both portals' deal fields side by side
//! and a mapping to start from. Only what would work is suggested: never a
//! field the relay writes itself, a read-only one, or a pair of types that
//! cannot map; list options are matched by text as a transfer matches them.

use std::collections::BTreeSet;

use anyhow::Context;

use crate::app::Parts;
use crate::config::Config;
use crate::mapping::{self, FieldCatalog, FieldPlan, FieldType};

/// A mapping to start from.
#[derive(Debug, Default, PartialEq)]
pub struct Suggestion {
    /// Source field → target field.
    pub fields: Vec<(String, String)>,
    /// Source file fields (copied with `files`).
    pub files: Vec<String>,
    /// List fields: target field and, per source option, its match.
    pub lists: Vec<(String, Vec<OptionMatch>)>,
}

/// A source list option and the target option with the same text.
#[derive(Debug, PartialEq)]
pub struct OptionMatch {
    pub id: String,
    pub label: String,
    pub target: Option<String>,
}

/// Pairs fields by name, else by title, where a transfer could map them.
pub fn suggest(source: &FieldCatalog, target: &FieldCatalog) -> Suggestion {
    let mut suggestion = Suggestion::default();
    for (name, info) in source {
        let found = target.get_key_value(name).or_else(|| {
            target
                .iter()
                .find(|(_, t)| !info.title.is_empty() && mapping::same_label(&t.title, &info.title))
        });
        let Some((target_name, target_info)) = found else {
            continue;
        };
        if mapping::reserved(target_name).is_some()
            || target_info.read_only
            || name == "id"
            || matches!(target_info.kind, FieldType::Other(_) | FieldType::Status)
                && !name.starts_with("ufCrm")
        {
            continue;
        }
        if info.kind == FieldType::File && target_info.kind == FieldType::File {
            suggestion.files.push(name.clone());
            if name != target_name {
                suggestion.fields.push((name.clone(), target_name.clone()));
            }
            continue;
        }
        if FieldPlan::new(name, target_name, Some(info), Some(target_info), None).is_err() {
            continue;
        }
        suggestion.fields.push((name.clone(), target_name.clone()));
        if info.kind == FieldType::Enumeration && target_info.kind == FieldType::Enumeration {
            let options = info
                .options
                .iter()
                .map(|(id, label)| OptionMatch {
                    id: id.clone(),
                    label: label.clone(),
                    target: mapping::find_option(&target_info.options, label).map(str::to_owned),
                })
                .collect();
            suggestion.lists.push((target_name.clone(), options));
        }
    }
    suggestion
}

pub async fn fields(config: Config, route_name: &str) -> anyhow::Result<()> {
    let route = crate::cli::route_of(&config, route_name)?.clone();
    let parts = Parts::open(config).await?;
    let portal = |name: &str| {
        parts
            .transfer
            .portals
            .get(name)
            .with_context(|| format!("portal {name} is not configured"))
    };
    let source = portal(&route.from)?.deal_catalog(true).await?;
    let target = portal(&route.to)?.deal_catalog(true).await?;
    println!(
        "{:<34} {:<12} | {:<34} {:<12}",
        route.from, "type", route.to, "type"
    );
    let names: BTreeSet<&String> = source.keys().chain(target.keys()).collect();
    for name in names {
        let side = |c: &FieldCatalog| {
            c.get(name)
                .map(|i| {
                    let multiple = if i.multiple { "[]" } else { "" };
                    (
                        format!("{name} ({})", i.title),
                        format!("{}{multiple}", i.kind.name()),
                    )
                })
                .unwrap_or_default()
        };
        let (s, st) = side(&source);
        let (t, tt) = side(&target);
        println!("{s:<34} {st:<12} | {t:<34} {tt:<12}");
    }
    let suggestion = suggest(&source, &target);
    println!(
        "\n# suggested mapping (same name or title, types that map, writable on {}; the relay's own fields are left out)",
        route.to
    );
    let pairs: Vec<String> = suggestion
        .fields
        .iter()
        .map(|(from, to)| format!("{from} = \"{to}\""))
        .collect();
    println!("fields = {{ {} }}", pairs.join(", "));
    if !suggestion.files.is_empty() {
        let files: Vec<String> = suggestion
            .files
            .iter()
            .map(|f| format!("\"{f}\""))
            .collect();
        println!("files = [{}]", files.join(", "));
    }
    for (field, options) in &suggestion.lists {
        println!("values.{field} = {{ match = \"label\" }}");
        for OptionMatch { id, label, target } in options {
            match target {
                Some(target_id) => println!("#   {id} \"{label}\" -> {target_id}"),
                None => println!(
                    "#   {id} \"{label}\" -> NO MATCH: add the option on {} or use a table",
                    route.to
                ),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_relays_own_fields_and_impossible_pairs_are_never_suggested() {
        let catalog = |extra: serde_json::Value| {
            let mut fields = json!({
                "title": {"type": "string", "title": "Name"},
                "originId": {"type": "string", "title": "Item ID in data source"},
                "originatorId": {"type": "string", "title": "External source"},
                "categoryId": {"type": "crm_category", "title": "Pipeline"},
                "stageId": {"type": "crm_status", "title": "Stage"},
                "contactIds": {"type": "crm_contact", "title": "Contacts", "isMultiple": true},
                "assignedById": {"type": "user", "title": "Responsible person"},
                "isManualOpportunity": {"type": "boolean", "title": "Manual amount"},
                "createdTime": {"type": "datetime", "title": "Created on", "isReadOnly": true},
                "opportunity": {"type": "double", "title": "Amount"},
            });
            for (k, v) in extra.as_object().unwrap() {
                fields[k] = v.clone();
            }
            mapping::parse_catalog(&json!({"fields": fields}))
        };
        let source = catalog(json!({
            "ufCrm_DELIVERY": {"type": "enumeration", "title": "Доставка", "items": [{"ID": "1", "VALUE": "Курьер"}, {"ID": "2", "VALUE": "Почта России"}]},
            "ufCrm_LEVEL": {"type": "enumeration", "title": "Level", "items": [{"ID": "5", "VALUE": "Gold"}]},
            "ufCrm_DOCS": {"type": "file", "title": "Docs", "isMultiple": true},
        }));
        let target = catalog(json!({
            "ufCrm_SHIP": {"type": "enumeration", "title": "доставка", "items": [{"ID": "71", "VALUE": "курьер"}]},
            "ufCrm_LEVEL": {"type": "integer", "title": "Level"},
            "ufCrm_DOCS": {"type": "file", "title": "Docs", "isMultiple": true},
        }));
        let s = suggest(&source, &target);
        let targets: Vec<&str> = s.fields.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(targets, ["opportunity", "title", "ufCrm_SHIP"], "{s:?}");
        assert_eq!(s.files, ["ufCrm_DOCS"]);
        assert_eq!(
            s.lists,
            vec![(
                "ufCrm_SHIP".to_owned(),
                vec![
                    OptionMatch {
                        id: "1".into(),
                        label: "Курьер".into(),
                        target: Some("71".into())
                    },
                    OptionMatch {
                        id: "2".into(),
                        label: "Почта России".into(),
                        target: None
                    }
                ]
            )]
        );
    }
}
