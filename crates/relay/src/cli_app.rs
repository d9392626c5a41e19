//! `b24-relay app register|unregister|status`, and the application part of
//! `b24-relay check`: what the installed local application may do.

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::app::Parts;
use crate::application::{register_robot, robot_definition, unregister_robot};
use crate::config::Config;
use crate::portals::PortalHandle;

#[derive(Debug, Subcommand)]
pub enum AppAction {
    /// Register the "Transfer deal" rule (update it if it exists).
    #[command(
        after_long_help = "Run it after changing the routes (the rule's route list) or \
                                 app.public_url.\n\nExample:\n  b24-relay app register --portal partner --config relay.toml"
    )]
    Register {
        /// Only this portal (default: every portal with [portal.NAME.app]).
        #[arg(long, value_name = "NAME")]
        portal: Option<String>,
    },
    /// Delete the rule from the portal.
    #[command(
        after_long_help = "Example:\n  b24-relay app unregister --portal partner --config relay.toml"
    )]
    Unregister {
        /// Only this portal (default: every portal with [portal.NAME.app]).
        #[arg(long, value_name = "NAME")]
        portal: Option<String>,
    },
    /// Installed or not, scopes, whether a re-install is needed, the rule.
    #[command(after_long_help = "Example:\n  b24-relay app status --config relay.toml")]
    Status {
        /// Only this portal (default: every portal with [portal.NAME.app]).
        #[arg(long, value_name = "NAME")]
        portal: Option<String>,
    },
}

async fn app_portals<'a>(
    parts: &'a Parts,
    only: Option<&str>,
) -> anyhow::Result<Vec<&'a Arc<PortalHandle>>> {
    let mut portals = Vec::new();
    for (_, portal) in parts.transfer.portals.iter() {
        let name = &portal.config.name;
        if only.is_some_and(|only| only != name) {
            continue;
        }
        if portal.config.app.is_some() || installed(parts, name).await {
            portals.push(portal);
        }
    }
    if portals.is_empty() {
        match only {
            Some(name) => bail!("portal `{name}` has no [portal.{name}.app] in the configuration"),
            None => bail!(
                "no portal has an [portal.NAME.app] section: application mode is not configured"
            ),
        }
    }
    Ok(portals)
}

async fn installed(parts: &Parts, portal: &str) -> bool {
    matches!(parts.store.app_install(portal).await, Ok(Some(_)))
}

/// Why the application of `portal` cannot be used now, for a person.
async fn not_usable(parts: &Parts, portal: &PortalHandle) -> String {
    let name = &portal.config.name;
    match parts.store.app_install(name).await {
        Ok(Some(_)) if portal.config.app.is_none() => format!(
            "{name}: the local application is installed, but [portal.{name}.app] (client_id, client_secret) is not configured; add it and restart"
        ),
        Ok(Some(install)) => match install.reinstall_reason {
            Some(reason) => format!("{name}: the application must be installed again: {reason}"),
            None => format!("{name}: the application cannot be used (see the log)"),
        },
        Ok(None) => format!(
            "{name}: the local application is not installed yet; install it in the portal (docs/application-mode.md)"
        ),
        Err(error) => format!("{name}: reading the store: {error}"),
    }
}

pub async fn run(config: Config, action: AppAction) -> anyhow::Result<()> {
    let parts = Parts::open(config).await?;
    let config = parts.config.clone();
    let code = config.app.robot_code.clone();
    match action {
        AppAction::Register { portal } => {
            let public_url = config.app.public_url.clone().context(
                "app.public_url is not set: the rule's handler must be on the relay's public URL",
            )?;
            let mut failed = false;
            for portal in app_portals(&parts, portal.as_deref()).await? {
                let name = &portal.config.name;
                let Some(client) = portal.app_client() else {
                    eprintln!("{}", not_usable(&parts, portal).await);
                    failed = true;
                    continue;
                };
                let fields = robot_definition(&config, name, &public_url);
                match register_robot(&client, &code, fields).await {
                    Ok(action) => println!("{name}: rule {code} {}", action.as_str()),
                    Err(error) => {
                        portal.app_refused(&client, &error).await;
                        eprintln!("{name}: registering the rule failed: {error}");
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("the rule was not registered everywhere");
            }
            Ok(())
        }
        AppAction::Unregister { portal } => {
            let mut failed = false;
            for portal in app_portals(&parts, portal.as_deref()).await? {
                let name = &portal.config.name;
                let Some(client) = portal.app_client() else {
                    eprintln!("{}", not_usable(&parts, portal).await);
                    failed = true;
                    continue;
                };
                match unregister_robot(&client, &code).await {
                    Ok(true) => println!("{name}: rule {code} deleted"),
                    Ok(false) => println!("{name}: rule {code} was not registered"),
                    Err(error) => {
                        portal.app_refused(&client, &error).await;
                        eprintln!("{name}: deleting the rule failed: {error}");
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("the rule was not deleted everywhere");
            }
            Ok(())
        }
        AppAction::Status { portal } => {
            for portal in app_portals(&parts, portal.as_deref()).await? {
                println!("{}", status_line(&parts, portal, &code).await);
            }
            Ok(())
        }
    }
}

async fn status_line(parts: &Parts, portal: &PortalHandle, code: &str) -> String {
    let name = &portal.config.name;
    let install = match parts.store.app_install(name).await {
        Ok(Some(install)) => install,
        Ok(None) => return format!("{name}: not installed"),
        Err(error) => return format!("{name}: reading the store: {error}"),
    };
    let mut line = format!(
        "{name}: installed on {} (member_id {}), scopes {}",
        install.domain, install.member_id, install.scopes
    );
    if let Some(reason) = &install.reinstall_reason {
        line.push_str(&format!("; NEEDS RE-INSTALL: {reason}"));
        return line;
    }
    let waiting = parts
        .store
        .rule_calls_to_answer(name, None)
        .await
        .map(|calls| calls.len())
        .unwrap_or(0);
    if waiting > 0 {
        line.push_str(&format!("; {waiting} rule runs wait for their answer"));
    }
    let Some(client) = portal.app_client() else {
        return line;
    };
    match client
        .call("bizproc.robot.list", &serde_json::json!({}))
        .await
    {
        Ok(listed) => {
            let registered = listed
                .result
                .as_array()
                .is_some_and(|codes| codes.iter().any(|c| c.as_str() == Some(code)));
            line.push_str(if registered {
                "; rule registered"
            } else {
                "; rule NOT registered (run `b24-relay app register`)"
            });
        }
        Err(error) => {
            portal.app_refused(&client, &error).await;
            line.push_str(&format!("; cannot list rules: {error}"));
        }
    }
    line
}

/// Methods the application calls on `portal`.
fn app_methods(config: &Config, portal: &str) -> Vec<&'static str> {
    let mut methods = vec![
        "batch",
        "crm.item.get",
        "bizproc.robot.add",
        "bizproc.robot.update",
        "bizproc.event.send",
    ];
    let routes: Vec<_> = config.routes.iter().filter(|r| r.from == portal).collect();
    if routes.iter().any(|r| r.products) {
        methods.push("crm.item.productrow.list");
    }
    if routes.iter().any(|r| r.responsible.is_some()) {
        methods.push("user.get");
    }
    methods
}

/// `check` for the applications: installed, scopes granted (`scope`) and the
/// methods the rule and the reads need (`method.get`). Prints the report
/// and returns the problems.
pub async fn check_apps(parts: &Parts) -> Vec<String> {
    let mut problems = Vec::new();
    let config = &parts.config;
    for (name, portal) in parts.transfer.portals.iter() {
        if portal.config.app.is_none() && !installed(parts, name).await {
            continue;
        }
        let Some(client) = portal.app_client() else {
            problems.push(not_usable(parts, portal).await);
            continue;
        };
        match client.check(&app_methods(config, name)).await {
            Ok(report) => {
                println!("{name} (application): {report}");
                let mut needed = vec!["crm", "bizproc"];
                if config
                    .routes
                    .iter()
                    .any(|r| r.from == *name && r.responsible.is_some())
                {
                    needed.push("user");
                }
                for scope in needed {
                    if !report.granted_scopes.iter().any(|s| s == scope) {
                        problems.push(format!(
                            "{name} (application): the `{scope}` scope is not granted; add it to the local application and install it again"
                        ));
                    }
                }
                problems.extend(
                    report
                        .problems()
                        .into_iter()
                        .map(|p| format!("{name} (application): {p}")),
                );
            }
            Err(error) => {
                portal.app_refused(&client, &error).await;
                problems.push(format!("{name} (application): {error}"));
            }
        }
    }
    problems
}
