//! REST methods: the registry (name → scope) and dispatch to the handlers of
//! each family. Handlers see parameters and return a result or a Bitrix24
//! error; limits, auth and timing are the HTTP layer's business.

mod bizproc;
mod crm_misc;
mod item;
mod legacy;
mod productrows;
mod system;

use serde_json::Value;

use crate::error::ApiError;
use crate::params::Params;
use crate::shared::{Shared, Webhook};
use crate::store::values::RenderCtx;

/// Method name and the scope a webhook needs for it ("" = basic, always granted).
pub const METHODS: &[(&str, &str)] = &[
    ("batch", ""),
    ("scope", ""),
    ("methods", ""),
    ("method.get", ""),
    ("server.time", ""),
    ("crm.item.get", "crm"),
    ("crm.item.add", "crm"),
    ("crm.item.update", "crm"),
    ("crm.item.list", "crm"),
    ("crm.item.fields", "crm"),
    ("crm.item.productrow.list", "crm"),
    ("crm.item.productrow.set", "crm"),
    ("crm.deal.get", "crm"),
    ("crm.deal.add", "crm"),
    ("crm.deal.update", "crm"),
    ("crm.deal.list", "crm"),
    ("crm.deal.fields", "crm"),
    ("crm.deal.productrows.get", "crm"),
    ("crm.deal.productrows.set", "crm"),
    ("crm.contact.get", "crm"),
    ("crm.contact.add", "crm"),
    ("crm.contact.update", "crm"),
    ("crm.contact.list", "crm"),
    ("crm.contact.fields", "crm"),
    ("crm.company.get", "crm"),
    ("crm.company.add", "crm"),
    ("crm.company.update", "crm"),
    ("crm.company.list", "crm"),
    ("crm.company.fields", "crm"),
    ("crm.status.list", "crm"),
    ("crm.category.list", "crm"),
    ("crm.duplicate.findbycomm", "crm"),
    ("crm.timeline.comment.add", "crm"),
    ("crm.timeline.comment.list", "crm"),
    ("user.get", "user"),
    ("im.notify", "im"),
    ("bizproc.robot.add", "bizproc"),
    ("bizproc.robot.update", "bizproc"),
    ("bizproc.robot.list", "bizproc"),
    ("bizproc.robot.delete", "bizproc"),
    ("bizproc.event.send", "bizproc"),
    ("event.bind", ""),
    ("event.get", ""),
    ("event.unbind", ""),
];

/// The scope a method needs, or `None` when the portal has no such method.
pub fn scope_of(method: &str) -> Option<&'static str> {
    METHODS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(method))
        .map(|(_, scope)| *scope)
}

/// A successful call: the result and, for lists, paging facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub result: Value,
    pub next: Option<usize>,
    pub total: Option<usize>,
}

impl Output {
    pub fn value(result: Value) -> Self {
        Self {
            result,
            next: None,
            total: None,
        }
    }

    pub fn page(result: Value, next: Option<usize>, total: Option<usize>) -> Self {
        Self {
            result,
            next,
            total,
        }
    }
}

pub type MethodResult = Result<Output, ApiError>;

/// Everything a handler may use.
pub struct Call<'a> {
    pub shared: &'a Shared,
    pub webhook: &'a Webhook,
    pub params: Params,
}

impl Call<'_> {
    pub fn render_ctx(&self) -> RenderCtx {
        RenderCtx {
            base_url: self.shared.base_url.clone(),
            auth_path: self.webhook.auth_path(),
            access_token: self.webhook.access_token.clone(),
        }
    }
}

/// Runs one non-batch method (the method is known to exist).
pub fn dispatch(method: &str, call: &Call<'_>) -> MethodResult {
    let method = method.to_ascii_lowercase();
    if let Some(result) = item::dispatch(&method, call) {
        return result;
    }
    if let Some(result) = legacy::dispatch(&method, call) {
        return result;
    }
    if let Some(result) = crm_misc::dispatch(&method, call) {
        return result;
    }
    if let Some(result) = bizproc::dispatch(&method, call) {
        return result;
    }
    if let Some(result) = system::dispatch(&method, call) {
        return result;
    }
    Err(ApiError::method_not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_knows_scopes_and_unknown_methods() {
        assert_eq!(scope_of("crm.item.list"), Some("crm"));
        assert_eq!(scope_of("CRM.DEAL.GET"), Some("crm"));
        assert_eq!(scope_of("batch"), Some(""));
        assert_eq!(scope_of("crm.lead.nothing"), None);
    }
}
