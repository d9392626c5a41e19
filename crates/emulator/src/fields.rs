//! Field catalogue of deals, contacts and companies: the camelCase names that
//! `crm.item.*` uses, the UPPER_CASE names of the deprecated `crm.deal.*`
//! family, value types, and the portal's own user fields (`UF_CRM_...`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The CRM entity types the emulator stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityType {
    Deal,
    Contact,
    Company,
}

impl EntityType {
    pub const ALL: [EntityType; 3] = [EntityType::Deal, EntityType::Contact, EntityType::Company];

    pub fn from_type_id(id: i64) -> Option<Self> {
        match id {
            2 => Some(Self::Deal),
            3 => Some(Self::Contact),
            4 => Some(Self::Company),
            _ => None,
        }
    }

    /// Accepts `deal`, `DEAL`, `2`, `D` (product-row owner type) and the like.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_uppercase().as_str() {
            "DEAL" | "2" | "D" => Some(Self::Deal),
            "CONTACT" | "3" | "C" => Some(Self::Contact),
            "COMPANY" | "4" | "CO" => Some(Self::Company),
            _ => None,
        }
    }

    pub fn type_id(self) -> i64 {
        match self {
            Self::Deal => 2,
            Self::Contact => 3,
            Self::Company => 4,
        }
    }

    pub fn upper(self) -> &'static str {
        match self {
            Self::Deal => "DEAL",
            Self::Contact => "CONTACT",
            Self::Company => "COMPANY",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Deal => "Deal",
            Self::Contact => "Contact",
            Self::Company => "Company",
        }
    }
}

/// How a field's value is validated, stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Integer,
    Double,
    String,
    Text,
    /// `Y` / `N`.
    Flag,
    Date,
    DateTime,
    User,
    /// A stage, deal type, source: a `crm.status.list` id.
    Status,
    Category,
    Currency,
    CompanyRef,
    ContactRef,
    LeadRef,
    Enumeration,
    /// `"300|RUB"`.
    Money,
    File,
    /// PHONE / EMAIL / WEB / IM lists (`fm` on `crm.item.*`).
    Multifield,
    /// A link (`url` user field type, `crm.userfield.types`).
    Url,
    /// A binding to CRM records (`crm` user field type): values are
    /// `{PREFIX}_{ID}` (`C_5`, `CO_3`, `D_7`, `L_4`), the prefixes the
    /// field's settings allow (`api-reference/crm/data-types.md`,
    /// "Format of Values for User Field Binding to CRM Elements").
    CrmLink,
}

impl FieldKind {
    fn item_type(self) -> &'static str {
        match self {
            Self::Integer => "integer",
            Self::Double => "double",
            Self::String => "string",
            Self::Text => "text",
            Self::Flag => "boolean",
            Self::Date => "date",
            Self::DateTime => "datetime",
            Self::User => "user",
            Self::Status => "crm_status",
            Self::Category => "crm_category",
            Self::Currency => "crm_currency",
            Self::CompanyRef => "crm_company",
            Self::ContactRef => "crm_contact",
            Self::LeadRef => "crm_lead",
            Self::Enumeration => "enumeration",
            Self::Money => "money",
            Self::File => "file",
            Self::Multifield => "crm_multifield",
            Self::Url => "url",
            Self::CrmLink => "crm",
        }
    }

    fn legacy_type(self) -> &'static str {
        match self {
            Self::Flag => "char",
            Self::Text => "string",
            other => other.item_type(),
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Self::Integer
                | Self::Double
                | Self::User
                | Self::Category
                | Self::CompanyRef
                | Self::ContactRef
                | Self::LeadRef
                | Self::Enumeration
        )
    }

    pub fn parse_user_type(text: &str) -> Option<Self> {
        Some(match text {
            "string" => Self::String,
            "integer" => Self::Integer,
            "double" => Self::Double,
            "boolean" => Self::Flag,
            "date" => Self::Date,
            "datetime" => Self::DateTime,
            "enumeration" => Self::Enumeration,
            "money" => Self::Money,
            "file" => Self::File,
            "employee" | "user" => Self::User,
            "url" => Self::Url,
            "crm" => Self::CrmLink,
            _ => return None,
        })
    }
}

/// One option of a list (enumeration) user field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnumOption {
    pub id: i64,
    pub value: String,
}

/// Which API family a field belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Both,
    ItemOnly,
    LegacyOnly,
}

#[derive(Debug, Clone)]
pub struct FieldDef {
    /// `crm.item.*` name, also the key in stored records.
    pub camel: String,
    /// `upperName` in `crm.item.fields`.
    pub upper: String,
    /// Name in `crm.deal.*` / `crm.contact.*` / `crm.company.*`.
    pub legacy: String,
    pub kind: FieldKind,
    pub multiple: bool,
    pub read_only: bool,
    pub required: bool,
    pub title: String,
    pub user_field: bool,
    pub options: Vec<EnumOption>,
    /// For multifield views in the legacy API: PHONE, EMAIL, WEB, IM.
    pub multifield_type: Option<&'static str>,
    pub visibility: Visibility,
    /// For a `crm` binding field: the record types it may point at
    /// (`LEAD`, `DEAL`, `CONTACT`, `COMPANY`), its `settings` on the portal.
    pub crm_types: Vec<String>,
}

impl FieldDef {
    fn standard(camel: &str, upper: &str, kind: FieldKind, title: &str) -> Self {
        Self {
            camel: camel.to_string(),
            upper: upper.to_string(),
            legacy: upper.to_string(),
            kind,
            multiple: false,
            read_only: false,
            required: false,
            title: title.to_string(),
            user_field: false,
            options: Vec::new(),
            multifield_type: None,
            visibility: Visibility::Both,
            crm_types: Vec::new(),
        }
    }

    fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    fn multiple(mut self) -> Self {
        self.multiple = true;
        self
    }

    fn legacy_name(mut self, legacy: &str) -> Self {
        self.legacy = legacy.to_string();
        self
    }

    fn only(mut self, visibility: Visibility) -> Self {
        self.visibility = visibility;
        self
    }

    /// A user field from seed data. `camel` defaults to Bitrix24's naming of
    /// deal, contact and company user fields: `UF_CRM_123` → `ufCrm_123`.
    pub fn user_field(
        upper: &str,
        camel: Option<&str>,
        kind: FieldKind,
        title: &str,
        multiple: bool,
        options: Vec<EnumOption>,
    ) -> Self {
        let camel = camel
            .map(str::to_string)
            .unwrap_or_else(|| camel_user_field_name(upper));
        Self {
            camel,
            upper: upper.to_string(),
            legacy: upper.to_string(),
            kind,
            multiple,
            read_only: false,
            required: false,
            title: title.to_string(),
            user_field: true,
            options,
            multifield_type: None,
            visibility: Visibility::Both,
            crm_types: Vec::new(),
        }
    }

    pub fn in_item_api(&self) -> bool {
        self.visibility != Visibility::LegacyOnly
    }

    pub fn in_legacy_api(&self) -> bool {
        self.visibility != Visibility::ItemOnly
    }

    fn describe_common(&self, legacy: bool) -> Map<String, Value> {
        let mut out = Map::new();
        let kind = if legacy {
            self.kind.legacy_type()
        } else {
            self.kind.item_type()
        };
        out.insert("type".into(), json!(kind));
        out.insert("isRequired".into(), json!(self.required));
        out.insert("isReadOnly".into(), json!(self.read_only));
        out.insert("isImmutable".into(), json!(false));
        out.insert("isMultiple".into(), json!(self.multiple));
        out.insert("isDynamic".into(), json!(self.user_field));
        out.insert("title".into(), json!(self.title));
        if self.user_field {
            for label in ["listLabel", "formLabel", "filterLabel"] {
                out.insert(label.into(), json!(self.title));
            }
        }
        if self.kind == FieldKind::Enumeration {
            let items: Vec<Value> = self
                .options
                .iter()
                .map(|o| json!({"ID": o.id.to_string(), "VALUE": o.value}))
                .collect();
            out.insert("items".into(), Value::Array(items));
        }
        if self.kind == FieldKind::CrmLink {
            // As crm.item.fields shows a binding field's settings.
            let mut settings = Map::new();
            for kind in ["LEAD", "CONTACT", "COMPANY", "DEAL"] {
                let on = self.crm_types.iter().any(|t| t == kind);
                settings.insert(kind.into(), json!(if on { "Y" } else { "N" }));
            }
            out.insert("settings".into(), Value::Object(settings));
        }
        out
    }

    /// The description `crm.item.fields` gives.
    pub fn describe_item(&self) -> Value {
        let mut out = self.describe_common(false);
        out.insert("upperName".into(), json!(self.upper));
        Value::Object(out)
    }

    /// The description `crm.deal.fields` gives.
    pub fn describe_legacy(&self) -> Value {
        Value::Object(self.describe_common(true))
    }
}

/// Bitrix24's camelCase name of a user field. The "regular" conversion
/// applies to `UF_CRM_<number>_<digits or letters>` (`UF_CRM_10_5186744711` →
/// `ufCrm10_5186744711`, `UF_CRM_3_DIGIT` → `ufCrm3Digit`); every other name
/// only has its prefix replaced so it stays reversible (`UF_CRM_1747309879` →
/// `ufCrm_1747309879`, `UF_CRM_3_DIGIT10` → `ufCrm_3_DIGIT10`).
pub fn camel_user_field_name(upper: &str) -> String {
    let Some(rest) = upper.strip_prefix("UF_CRM_") else {
        return upper.to_string();
    };
    if let Some((number, tail)) = rest.split_once('_') {
        let numbered = !number.is_empty() && number.chars().all(|c| c.is_ascii_digit());
        if numbered && !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit()) {
            return format!("ufCrm{number}_{tail}");
        }
        let words: Vec<&str> = tail.split('_').collect();
        let letters_only = words
            .iter()
            .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase()));
        if numbered && letters_only {
            let pascal: String = words
                .iter()
                .map(|w| {
                    let lower = w.to_ascii_lowercase();
                    let mut chars = lower.chars();
                    chars
                        .next()
                        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                        .unwrap_or_default()
                })
                .collect();
            return format!("ufCrm{number}{pascal}");
        }
    }
    format!("ufCrm_{rest}")
}

/// The built-in fields of an entity type, in the order Bitrix24 lists them.
pub fn standard_fields(entity: EntityType) -> Vec<FieldDef> {
    use FieldKind as K;
    let f = FieldDef::standard;
    let mut fields = vec![f("id", "ID", K::Integer, "ID").read_only()];
    match entity {
        EntityType::Deal => fields.extend([
            f("title", "TITLE", K::String, "Name"),
            f("typeId", "TYPE_ID", K::Status, "Type"),
            f("categoryId", "CATEGORY_ID", K::Category, "Pipeline"),
            f("stageId", "STAGE_ID", K::Status, "Stage"),
            f(
                "stageSemanticId",
                "STAGE_SEMANTIC_ID",
                K::String,
                "Stage group",
            )
            .read_only(),
            f("isNew", "IS_NEW", K::Flag, "New deal").read_only(),
            f("isRecurring", "IS_RECURRING", K::Flag, "Recurring deal"),
            f("probability", "PROBABILITY", K::Integer, "Probability"),
            f("currencyId", "CURRENCY_ID", K::Currency, "Currency"),
            f("opportunity", "OPPORTUNITY", K::Double, "Amount"),
            f(
                "isManualOpportunity",
                "IS_MANUAL_OPPORTUNITY",
                K::Flag,
                "Manual amount",
            ),
            f("taxValue", "TAX_VALUE", K::Double, "Tax rate"),
            f("companyId", "COMPANY_ID", K::CompanyRef, "Company"),
            f("contactId", "CONTACT_ID", K::ContactRef, "Contact"),
            f("contactIds", "CONTACT_IDS", K::ContactRef, "Contacts").multiple(),
            f("leadId", "LEAD_ID", K::LeadRef, "Lead"),
            f("begindate", "BEGINDATE", K::Date, "Start date"),
            f("closedate", "CLOSEDATE", K::Date, "Estimated close date"),
            f("opened", "OPENED", K::Flag, "Available to everyone"),
            f("closed", "CLOSED", K::Flag, "Closed").read_only(),
            f("comments", "COMMENTS", K::Text, "Comment"),
            f("sourceId", "SOURCE_ID", K::Status, "Source"),
            f(
                "sourceDescription",
                "SOURCE_DESCRIPTION",
                K::Text,
                "Source information",
            ),
            f(
                "additionalInfo",
                "ADDITIONAL_INFO",
                K::Text,
                "Additional information",
            ),
        ]),
        EntityType::Contact => fields.extend([
            f("honorific", "HONORIFIC", K::Status, "Salutation"),
            f("name", "NAME", K::String, "First name"),
            f("secondName", "SECOND_NAME", K::String, "Second name"),
            f("lastName", "LAST_NAME", K::String, "Last name"),
            f("post", "POST", K::String, "Position"),
            f("birthdate", "BIRTHDATE", K::Date, "Date of birth"),
            f("typeId", "TYPE_ID", K::Status, "Contact type"),
            f("companyId", "COMPANY_ID", K::CompanyRef, "Company"),
            f("companyIds", "COMPANY_IDS", K::CompanyRef, "Companies").multiple(),
            f("opened", "OPENED", K::Flag, "Available to everyone"),
            f("comments", "COMMENTS", K::Text, "Comment"),
            f("sourceId", "SOURCE_ID", K::Status, "Source"),
            f(
                "sourceDescription",
                "SOURCE_DESCRIPTION",
                K::Text,
                "Source information",
            ),
        ]),
        EntityType::Company => fields.extend([
            f("title", "TITLE", K::String, "Company name"),
            f("companyType", "COMPANY_TYPE", K::Status, "Company type"),
            f("industry", "INDUSTRY", K::Status, "Industry"),
            f("revenue", "REVENUE", K::Double, "Annual revenue"),
            f("currencyId", "CURRENCY_ID", K::Currency, "Currency"),
            f("opened", "OPENED", K::Flag, "Available to everyone"),
            f("comments", "COMMENTS", K::Text, "Comment"),
        ]),
    }
    fields.extend([
        f(
            "assignedById",
            "ASSIGNED_BY_ID",
            K::User,
            "Responsible person",
        ),
        f("createdBy", "CREATED_BY", K::User, "Created by")
            .read_only()
            .legacy_name("CREATED_BY_ID"),
        f("updatedBy", "UPDATED_BY", K::User, "Modified by")
            .read_only()
            .legacy_name("MODIFY_BY_ID"),
        f("createdTime", "CREATED_TIME", K::DateTime, "Created on")
            .read_only()
            .legacy_name("DATE_CREATE"),
        f("updatedTime", "UPDATED_TIME", K::DateTime, "Modified on")
            .read_only()
            .legacy_name("DATE_MODIFY"),
        f(
            "originatorId",
            "ORIGINATOR_ID",
            K::String,
            "External source",
        ),
        f("originId", "ORIGIN_ID", K::String, "Item ID in data source"),
    ]);
    if entity == EntityType::Deal {
        fields.push(
            f("movedTime", "MOVED_TIME", K::DateTime, "Stage changed on")
                .read_only()
                .legacy_name("MOVED_TIME"),
        );
        fields.push(
            f("movedBy", "MOVED_BY", K::User, "Stage changed by")
                .read_only()
                .legacy_name("MOVED_BY_ID"),
        );
    } else {
        fields.push(
            f("fm", "FM", K::Multifield, "Multifields")
                .multiple()
                .only(Visibility::ItemOnly),
        );
        for (name, title) in [
            ("PHONE", "Phone"),
            ("EMAIL", "E-mail"),
            ("WEB", "Website"),
            ("IM", "Messenger"),
        ] {
            let mut def = f(&name.to_ascii_lowercase(), name, K::Multifield, title)
                .multiple()
                .only(Visibility::LegacyOnly);
            def.multifield_type = Some(name);
            fields.push(def);
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_field_names_follow_bitrix_convention() {
        let def = FieldDef::user_field(
            "UF_CRM_1721244707107",
            None,
            FieldKind::Double,
            "x",
            false,
            vec![],
        );
        assert_eq!(def.camel, "ufCrm_1721244707107");
        assert_eq!(def.describe_item()["upperName"], "UF_CRM_1721244707107");
        assert_eq!(def.describe_item()["isDynamic"], true);
    }

    #[test]
    fn user_field_camel_names_follow_the_documented_table() {
        for (upper, camel) in [
            ("UF_CRM_3_DIGIT", "ufCrm3Digit"),
            ("UF_CRM_3_1747309727", "ufCrm3_1747309727"),
            ("UF_CRM_3_DIGIT10", "ufCrm_3_DIGIT10"),
            ("UF_CRM_3_DIGIT_10", "ufCrm_3_DIGIT_10"),
            ("UF_CRM_1747309879", "ufCrm_1747309879"),
            ("UF_CRM_10_5186744711", "ufCrm10_5186744711"),
            ("UF_CRM_COLOR", "ufCrm_COLOR"),
        ] {
            assert_eq!(camel_user_field_name(upper), camel, "{upper}");
        }
    }

    #[test]
    fn legacy_names_differ_for_audit_fields() {
        let deal = standard_fields(EntityType::Deal);
        let created = deal.iter().find(|f| f.camel == "createdTime").unwrap();
        assert_eq!(created.legacy, "DATE_CREATE");
        assert!(deal.iter().all(|f| f.kind != FieldKind::Multifield));
        let contact = standard_fields(EntityType::Contact);
        assert!(
            contact
                .iter()
                .any(|f| f.legacy == "PHONE" && !f.in_item_api())
        );
    }
}
