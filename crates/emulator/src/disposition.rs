//! `Content-Disposition` of a file download, as the portal sends it: a
//! transliterated `filename` for old clients and the real name in
//! `filename*=utf-8''…`. The shape follows the public core source, e.g.
//! `modules/mail/admin/mail_attachment_view.php` in
//! `avshatalov48/bitrix-core-business`:
//! `attachment; filename="<CUtil::translit(name)>"; filename*=utf-8''<CHTTP::urnEncode(name)>`.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What `rawurlencode` leaves alone: letters, digits and `-_.~`.
const URN: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn content_disposition(name: &str) -> String {
    format!(
        "attachment; filename=\"{}\"; filename*=utf-8''{}",
        transliterate(name),
        utf8_percent_encode(name, URN)
    )
}

/// Like `CUtil::translit` with `safe_chars='.'` and `replace_space='-'`:
/// lower case, Cyrillic spelled in Latin letters, spaces as `-`, anything
/// else as `_` (repeats collapsed).
pub fn transliterate(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        let piece: &str = match c {
            'а' => "a",
            'б' => "b",
            'в' => "v",
            'г' => "g",
            'д' => "d",
            'е' | 'ё' | 'э' => "e",
            'ж' => "zh",
            'з' => "z",
            'и' => "i",
            'й' => "y",
            'к' => "k",
            'л' => "l",
            'м' => "m",
            'н' => "n",
            'о' => "o",
            'п' => "p",
            'р' => "r",
            'с' => "s",
            'т' => "t",
            'у' => "u",
            'ф' => "f",
            'х' => "kh",
            'ц' => "ts",
            'ч' => "ch",
            'ш' => "sh",
            'щ' => "shch",
            'ы' => "y",
            'ю' => "yu",
            'я' => "ya",
            'ъ' | 'ь' => "",
            ' ' => "-",
            '.' => ".",
            c if c.is_ascii_alphanumeric() => {
                out.push(c);
                continue;
            }
            _ => "_",
        };
        if piece == "_" && out.ends_with('_') {
            continue;
        }
        out.push_str(piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cyrillic_names_get_an_ascii_fallback_and_the_real_name() {
        assert_eq!(transliterate("Договор №42.pdf"), "dogovor-_42.pdf");
        assert_eq!(
            content_disposition("Счёт 1.pdf"),
            "attachment; filename=\"schet-1.pdf\"; filename*=utf-8''%D0%A1%D1%87%D1%91%D1%82%201.pdf"
        );
        assert_eq!(transliterate("a\"b\r\n.txt"), "a_b_.txt");
    }
}
