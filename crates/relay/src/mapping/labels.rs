//! Matching list options by their text across portals: people type the
//! same option as "Курьер" on one portal and "курьер " on the other, with
//! a non-breaking space or two spaces between words. Case is compared with
//! Unicode's lower-case mapping (Cyrillic, Greek, Latin alike) and every
//! run of Unicode white space counts as one space.

/// The form two labels are compared in.
pub fn normalize(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    for word in label.split(char::is_whitespace).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// Whether two option texts name the same option.
pub fn same_label(a: &str, b: &str) -> bool {
    normalize(a) == normalize(b)
}

/// The id of the option among `options` (id, text) whose text matches.
pub fn find_option<'a>(options: &'a [(String, String)], label: &str) -> Option<&'a str> {
    let wanted = normalize(label);
    options
        .iter()
        .find(|(_, text)| normalize(text) == wanted)
        .map(|(id, _)| id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_white_space_do_not_matter_in_any_script() {
        assert!(same_label("Курьер", "курьер"));
        assert!(same_label("КУРЬЕР ", " курьер"));
        assert!(same_label("Почта\u{a0}России", "почта  россии"));
        assert!(same_label("Ελλάδα", "ΕΛΛΆΔΑ"));
        assert!(same_label("Gold", "gold"));
        assert!(!same_label("Курьер", "Курьеры"));
        assert!(!same_label("Почта России", "ПочтаРоссии"));
        let options = vec![
            ("71".to_owned(), "самовывоз".to_owned()),
            ("72".to_owned(), "Курьер".to_owned()),
        ];
        assert_eq!(find_option(&options, "КУРЬЕР"), Some("72"));
        assert_eq!(find_option(&options, "почта"), None);
    }
}
