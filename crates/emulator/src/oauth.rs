//! OAuth on the emulator: the authorization server's token endpoint
//! (`/oauth/token/`, playing `oauth.bitrix.info`) and the REST side of an
//! application's calls (`/rest/METHOD?auth=ACCESS_TOKEN`, or `auth` in the
//! body).

use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::app::TokenError;
use crate::error::ApiError;
use crate::params::{Params, parse_body, parse_query};
use crate::server::{HttpResponse, json_response};
use crate::shared::{Shared, Webhook};

/// Whether `path` is the token endpoint.
pub fn is_token_path(path: &str) -> bool {
    matches!(path, "/oauth/token" | "/oauth/token/")
}

fn refusal(err: &TokenError) -> HttpResponse {
    let body = match err.description {
        Some(description) => json!({"error": err.code, "error_description": description}),
        None => json!({"error": err.code}),
    };
    json_response(err.status, &body)
}

/// `grant_type=refresh_token&client_id&client_secret&refresh_token`, as a
/// GET query (what the docs show) or a POST form.
pub fn token_endpoint(
    shared: &Shared,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> HttpResponse {
    let mut params = parse_query(query).unwrap_or_default();
    if let Ok(form) = parse_body(content_type, body) {
        params.extend(form);
    }
    let params = Params(params);
    let field = |name: &str| params.text(name).unwrap_or_default();
    let grant_type = field("grant_type");
    if grant_type.is_empty() {
        return refusal(&TokenError::invalid_request(
            "No \"grant_type\" parameter found",
        ));
    }
    if grant_type != "refresh_token" {
        return refusal(&TokenError::unsupported_grant_type());
    }
    let Some(app) = shared.app.as_ref() else {
        return refusal(&TokenError::wrong_client());
    };
    let refresh_token = field("refresh_token");
    if refresh_token.is_empty() {
        return refusal(&TokenError::invalid_request(
            "No \"refresh_token\" parameter found",
        ));
    }
    match app.refresh(&field("client_id"), &field("client_secret"), &refresh_token) {
        Ok(tokens) => {
            tracing::info!(client_id = app.client_id(), "OAuth tokens refreshed");
            // Field order as oauth.bitrix.info answers.
            json_response(
                StatusCode::OK,
                &json!({
                    "access_token": tokens.access_token,
                    "expires": tokens.expires,
                    "expires_in": tokens.expires_in,
                    "scope": app.scope_text(),
                    "domain": "oauth.bitrix.info",
                    "server_endpoint": "https://oauth.bitrix.info/rest/",
                    "status": "L",
                    "client_endpoint": format!("{}/rest/", shared.base_url),
                    "member_id": shared.member_id,
                    "user_id": tokens.user_id,
                    "refresh_token": tokens.refresh_token,
                }),
            )
        }
        Err(err) => {
            tracing::info!(code = err.code, "OAuth refresh refused");
            refusal(&err)
        }
    }
}

/// The caller of `/rest/METHOD`: the `auth` parameter (query or body) must
/// be a live access token of the installed application. `auth` is removed
/// from the parameters, as the portal does before the method sees them.
pub fn authenticate(shared: &Shared, params: &mut Map<String, Value>) -> Result<Webhook, ApiError> {
    let token = params
        .remove("auth")
        .map(|v| crate::params::scalar_text(&v))
        .ok_or_else(ApiError::no_auth_found)?;
    let Some(app) = shared.app.as_ref() else {
        return Err(ApiError::invalid_token());
    };
    let user_id = app.check_access(&token)?;
    let mut caller = Webhook::application(user_id, app.scopes());
    caller.access_token = Some(token);
    Ok(caller)
}
