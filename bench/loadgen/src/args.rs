//! Command-line flags without a parser crate: `--name value`, `--name=value` and bare
//! `--switch`; a flag may be repeated (`--listen`).

use std::collections::HashMap;
use std::time::Duration;

/// Flags that never take a value.
const SWITCHES: &[&str] = &["reject-beyond"];

pub struct Args {
    values: HashMap<String, Vec<String>>,
    used: std::cell::RefCell<Vec<String>>,
}

impl Args {
    pub fn parse(argv: &[String]) -> Result<Args, String> {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        let mut i = 0;
        while i < argv.len() {
            let Some(flag) = argv[i].strip_prefix("--") else {
                return Err(format!("unexpected argument `{}`", argv[i]));
            };
            let (name, value) = if let Some((n, v)) = flag.split_once('=') {
                (n.to_string(), v.to_string())
            } else if SWITCHES.contains(&flag) {
                (flag.to_string(), "true".to_string())
            } else {
                i += 1;
                let v = argv
                    .get(i)
                    .ok_or_else(|| format!("--{flag} needs a value"))?;
                (flag.to_string(), v.clone())
            };
            values.entry(name).or_default().push(value);
            i += 1;
        }
        Ok(Args {
            values,
            used: Default::default(),
        })
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.used.borrow_mut().push(name.to_string());
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.used.borrow_mut().push(name.to_string());
        self.values.get(name).cloned().unwrap_or_default()
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.raw(name).map(str::to_string)
    }

    pub fn switch(&self, name: &str) -> bool {
        self.raw(name).is_some_and(|v| v != "false")
    }

    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.raw(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: `{v}` is not a number")),
        }
    }

    pub fn duration(&self, name: &str, default: Duration) -> Result<Duration, String> {
        match self.raw(name) {
            None => Ok(default),
            Some(v) => parse_duration(v).map_err(|e| format!("--{name}: {e}")),
        }
    }

    /// Errors for flags given but never asked for (typos).
    pub fn finish(&self) -> Result<(), String> {
        let used = self.used.borrow();
        let mut unknown: Vec<&String> = self.values.keys().filter(|k| !used.contains(k)).collect();
        unknown.sort();
        match unknown.first() {
            None => Ok(()),
            Some(k) => Err(format!("unknown flag --{k}")),
        }
    }
}

/// `250us`, `10ms`, `1.5s`, `2m`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration"))?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "ns" => n / 1e9,
        "m" => n * 60.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (us, ms, s, m)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}
