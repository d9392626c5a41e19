//! What the relay tells people on the source portal — timeline comments
//! and personal notifications — in the portal's language. Sales managers
//! read these: they say what happened and what to do in their words; the
//! CLI commands that fix a failure stay in the log and `jobs show`.

/// The language of the texts written to a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Ru,
    En,
}

impl Language {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "ru" => Some(Self::Ru),
            "en" => Some(Self::En),
            _ => None,
        }
    }

    /// Russian for Russian-region portals (`*.bitrix24.ru`, `.by`, `.kz`
    /// and other hosts under those zones), English for the others.
    pub fn for_host(host: &str) -> Self {
        let host = host
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        let russian = [".ru", ".by", ".kz", ".su", ".xn--p1ai"]
            .iter()
            .any(|zone| host.ends_with(zone));
        if russian { Self::Ru } else { Self::En }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ru => "ru",
            Self::En => "en",
        }
    }
}

/// The comment on the source deal after its first transfer.
pub fn transferred(language: Language, target: &str, target_id: i64, link: &str) -> String {
    match language {
        Language::Ru => format!("Сделка передана в {target}: сделка №{target_id} {link}"),
        Language::En => format!("Transferred to {target} as deal #{target_id}: {link}"),
    }
}

/// The comment after changes were sent to a deal transferred before.
pub fn updated(language: Language, target: &str, target_id: i64, link: &str) -> String {
    match language {
        Language::Ru => format!("Изменения переданы в сделку №{target_id} в {target}: {link}"),
        Language::En => format!("Changes sent to deal #{target_id} on {target}: {link}"),
    }
}

/// The comment (and notification) when a deal cannot be transferred.
/// `reason` is already in words for people (see [`crate::transfer::TransferError::for_people`]).
pub fn failed(language: Language, target: &str, reason: &str) -> String {
    match language {
        Language::Ru => format!("Сделку не удалось передать в {target}: {reason}."),
        Language::En => format!("The deal could not be transferred to {target}: {reason}."),
    }
}

/// The personal notification to the responsible user after a transfer.
pub fn notify_transferred(
    language: Language,
    deal_title: &str,
    source_link: &str,
    target: &str,
    target_id: i64,
) -> String {
    match language {
        Language::Ru => format!(
            "Сделка «{deal_title}» ({source_link}) передана в {target}: сделка №{target_id}"
        ),
        Language::En => format!(
            "Deal «{deal_title}» ({source_link}) was transferred to {target} as deal #{target_id}"
        ),
    }
}

/// The personal notification to the responsible user after a failure.
pub fn notify_failed(
    language: Language,
    deal_title: &str,
    source_link: &str,
    target: &str,
    reason: &str,
) -> String {
    match language {
        Language::Ru => format!(
            "Сделку «{deal_title}» ({source_link}) не удалось передать в {target}: {reason}."
        ),
        Language::En => format!(
            "Deal «{deal_title}» ({source_link}) could not be transferred to {target}: {reason}."
        ),
    }
}

/// Reasons for people that do not come from a mapping problem.
pub fn reason_portal_refused(language: Language) -> &'static str {
    match language {
        Language::Ru => {
            "целевой портал отклонил запрос (нет доступа или права); обратитесь к администратору"
        }
        Language::En => {
            "the target portal refused the request (access or permissions); ask your administrator"
        }
    }
}

pub fn reason_unreachable(language: Language) -> &'static str {
    match language {
        Language::Ru => {
            "целевой портал долго не отвечал; передача остановлена, обратитесь к администратору"
        }
        Language::En => {
            "the target portal did not answer for a long time; the transfer stopped, ask your administrator"
        }
    }
}

pub fn reason_deal_missing(language: Language) -> &'static str {
    match language {
        Language::Ru => "сделка не найдена (удалена?)",
        Language::En => "the deal was not found (deleted?)",
    }
}

pub fn reason_other(language: Language) -> &'static str {
    match language {
        Language::Ru => "произошла ошибка при передаче; обратитесь к администратору",
        Language::En => "the transfer failed; ask your administrator",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn russian_region_portals_get_russian() {
        assert_eq!(Language::for_host("partner.bitrix24.ru"), Language::Ru);
        assert_eq!(Language::for_host("crm.example.by:443"), Language::Ru);
        assert_eq!(Language::for_host("b24.company.kz"), Language::Ru);
        assert_eq!(Language::for_host("xn--80ak6aa92e.xn--p1ai"), Language::Ru);
        assert_eq!(Language::for_host("partner.bitrix24.com"), Language::En);
        assert_eq!(Language::for_host("127.0.0.1:5000"), Language::En);
        assert_eq!(Language::parse(" RU "), Some(Language::Ru));
        assert_eq!(Language::parse("de"), None);
    }

    #[test]
    fn failure_texts_hold_no_commands() {
        for language in [Language::Ru, Language::En] {
            let text = failed(language, "esb", reason_other(language));
            assert!(!text.contains("b24-relay"), "{text}");
            assert!(!text.contains('`'), "{text}");
        }
    }
}
