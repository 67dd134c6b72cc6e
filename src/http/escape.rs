//! Text a publisher wrote, made safe for the context the page writes it into: one function per
//! context, so that each place in a page says which context it writes to.
//!
//! - [`html`]: HTML text and quoted attribute values.
//! - [`script_json`]: a JSON value inside a `<script>` block (the JSON-LD).

use serde_json::Value;

/// `text` safe inside HTML text and quoted attribute values: `&`, `<`, `>`, `"` and `'` as
/// character references.
pub fn html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// `value` as JSON that can stand inside a `<script>` block whatever its strings hold.
///
/// The HTML parser reads a script block's text before JavaScript or a JSON-LD reader sees it,
/// and it looks for more than `</script>`: `<!--` followed by `<script` moves it into a state
/// where the next `</script>` no longer ends the block, so the rest of the document is swallowed.
/// So no `<`, `>` or `&` may reach the block as itself; each is written as the JSON escape
/// `\u003c`, `\u003e`, `\u0026`, which any JSON parser reads back as the same character. U+2028
/// and U+2029 are escaped too (`\u2028`, `\u2029`): JSON allows them raw in strings, but older
/// JavaScript engines end a line at them. Outside strings JSON has none of these characters, so
/// escaping every occurrence changes no value.
pub fn script_json(value: &Value) -> String {
    let json = value.to_string();
    let mut escaped = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => escaped.push_str("\\u003c"),
            '>' => escaped.push_str("\\u003e"),
            '&' => escaped.push_str("\\u0026"),
            '\u{2028}' => escaped.push_str("\\u2028"),
            '\u{2029}' => escaped.push_str("\\u2029"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::script_json;

    #[test]
    fn script_json_writes_no_character_the_html_parser_reads_and_keeps_the_value() {
        let value = json!({
            "headline": "<!--<script>a && b</script>-->",
            "lines": "one\u{2028}two\u{2029}three",
            "<key>": ["</", "&amp;"],
        });
        let written = script_json(&value);
        for c in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
            assert!(!written.contains(c), "{c:?} in {written}");
        }
        let read: serde_json::Value = serde_json::from_str(&written).expect("JSON");
        assert_eq!(read, value);
    }
}
