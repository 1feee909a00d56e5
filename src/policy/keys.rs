//! Where the keys of a policy file are (dotted path → span), so that a lint or a listener
//! conflict can point at `file:line:col`. Shared by [`super::lint`] and [`super::listeners`].

use std::collections::HashMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// Where the keys of one file are: dotted path (`retry.methods`) → spans. The keys of a table
/// in an array of tables are under its index: `route[1].retry.methods` is `retry.methods` of
/// the second `[[route]]` (see [`Keys::in_table`]).
pub(super) struct Keys {
    /// `None` when the text is unknown: every key then counts as set, at `1:1`.
    found: Option<(String, HashMap<String, Entry>)>,
}

struct Entry {
    value: Range<usize>,
    /// The entries of an array value.
    items: Vec<Range<usize>>,
}

impl Keys {
    pub(super) fn new(text: Option<String>) -> Self {
        let found = text.and_then(|text| {
            let mut map = HashMap::new();
            index(DeTable::parse(&text).ok()?.get_ref(), "", &mut map);
            Some((text, map))
        });
        Keys { found }
    }

    /// Does the file set `key`?
    pub(super) fn sets(&self, key: &str) -> bool {
        self.found
            .as_ref()
            .is_none_or(|(_, map)| map.contains_key(key))
    }

    /// The path of `key` within the `index`-th table of the array of tables `array`:
    /// `in_table("route", 1, "name")` is `route[1].name`.
    pub(super) fn in_table(array: &str, index: usize, key: &str) -> String {
        format!("{array}[{index}].{key}")
    }

    /// `line:col` of the value of `key`, or of its array entry `item`.
    pub(super) fn at(&self, key: &str, item: Option<usize>) -> (usize, usize) {
        let Some((text, map)) = &self.found else {
            return (1, 1);
        };
        match map.get(key) {
            Some(entry) => {
                let span = item
                    .and_then(|i| entry.items.get(i))
                    .unwrap_or(&entry.value);
                line_col(text, span.start)
            }
            None => (1, 1),
        }
    }
}

fn index(table: &DeTable<'_>, prefix: &str, map: &mut HashMap<String, Entry>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let items = match value.get_ref() {
            DeValue::Table(inner) => {
                index(inner, &path, map);
                continue;
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        index(inner, &format!("{path}[{i}]"), map);
                    }
                }
                items.iter().map(|item| item.span()).collect()
            }
            _ => Vec::new(),
        };
        map.insert(
            path,
            Entry {
                value: value.span(),
                items,
            },
        );
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}
