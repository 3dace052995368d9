//! Named pauses for fault tests. `CORRAL_TESTPOINTS=migration.switching=5000,…` makes
//! corrald log "testpoint NAME reached" and wait that many milliseconds there, so that
//! a test can kill it, or cut a link, at exactly that step. Without the variable (as
//! everywhere but tests) a testpoint costs one map lookup and does nothing.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

fn pauses() -> &'static HashMap<String, u64> {
    static PAUSES: OnceLock<HashMap<String, u64>> = OnceLock::new();
    PAUSES.get_or_init(|| parse(&std::env::var("CORRAL_TESTPOINTS").unwrap_or_default()))
}

fn parse(text: &str) -> HashMap<String, u64> {
    text.split(',')
        .filter_map(|item| {
            let (name, ms) = item.split_once('=')?;
            Some((name.trim().to_string(), ms.trim().parse().ok()?))
        })
        .collect()
}

/// Pauses here if a test asked to.
pub async fn reached(name: &str) {
    if let Some(ms) = pauses().get(name) {
        tracing::warn!("testpoint {name} reached: pausing {ms} ms");
        tokio::time::sleep(Duration::from_millis(*ms)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_named_milliseconds() {
        let p = parse("migration.switching=5000, migration.cleanup=10,bad,x=y");
        assert_eq!(p.get("migration.switching"), Some(&5000));
        assert_eq!(p.get("migration.cleanup"), Some(&10));
        assert_eq!(p.len(), 2);
        assert!(parse("").is_empty());
    }
}
