//! Target deal fields the relay writes itself. Mapping one of them would
//! break a transfer or the exactly-once guarantee, so the configuration
//! refuses them with the key to use instead, and `fields` never suggests
//! them.

/// A reserved field and why, in the words of the configuration.
pub struct Reserved {
    pub field: &'static str,
    pub why: &'static str,
}

pub const RESERVED: &[Reserved] = &[
    Reserved {
        field: "id",
        why: "the target deal's id is the relay's to choose",
    },
    Reserved {
        field: "originatorId",
        why: "it marks deals the relay created, which is how it never creates one twice",
    },
    Reserved {
        field: "originId",
        why: "it holds the source deal id the relay finds its deals by, which is how it never creates one twice",
    },
    Reserved {
        field: "categoryId",
        why: "the pipeline comes from the route's `target = { category = N }`",
    },
    Reserved {
        field: "stageId",
        why: "stages come from the route's `target = { stage = \"…\", stages = { … } }`",
    },
    Reserved {
        field: "contactId",
        why: "contacts travel with `contact = \"match\"`",
    },
    Reserved {
        field: "contactIds",
        why: "contacts travel with `contact = \"match\"`",
    },
    Reserved {
        field: "companyId",
        why: "the company travels with `company = \"match\"`",
    },
    Reserved {
        field: "leadId",
        why: "leads are not transferred, so a source lead id means nothing on the target",
    },
    Reserved {
        field: "assignedById",
        why: "the responsible user is matched by e-mail with `responsible = { match = \"email\" }`",
    },
    Reserved {
        field: "isManualOpportunity",
        why: "the relay copies it with `opportunity`, so that product rows and the amount agree",
    },
];

/// Why `field` (camelCase, or UPPER_CASE as `crm.deal.*` names it) may not
/// be a mapping target, if it is reserved.
pub fn reserved(field: &str) -> Option<&'static str> {
    let camel = if field.contains('_') && field == field.to_ascii_uppercase() {
        super::camel_name(field)
    } else {
        field.to_owned()
    };
    RESERVED
        .iter()
        .find(|r| r.field.eq_ignore_ascii_case(&camel))
        .map(|r| r.why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_are_reserved() {
        for name in [
            "originId",
            "ORIGIN_ID",
            "originatorId",
            "CATEGORY_ID",
            "stageId",
            "contactIds",
            "ASSIGNED_BY_ID",
            "isManualOpportunity",
            "leadId",
            "companyId",
        ] {
            assert!(reserved(name).is_some(), "{name}");
        }
        for name in [
            "title",
            "opportunity",
            "ufCrm_ORIGIN",
            "UF_CRM_STAGE",
            "comments",
        ] {
            assert!(reserved(name).is_none(), "{name}");
        }
    }
}
