//! Other tables that would drop the forwarded traffic of Corral's bridges: a base chain
//! on the forward hook with policy drop (Docker's `ip filter FORWARD`, firewalld's
//! `inet firewalld filter_FORWARD`). Packets must pass every base chain of a hook, so
//! Corral's own accept cannot help; the user has to let the bridge through there.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::NetError;

/// Other tables' base chains that would drop traffic of `bridges` (a FORWARD hook with
/// policy drop, e.g. Docker's or firewalld's), as plain sentences with a hint. A chain
/// that already accepts the bridge both ways (`iifname BR … accept` and
/// `oifname BR … accept`, in the chain or a chain it jumps to) is not reported.
pub async fn forward_conflicts(bridges: &[String]) -> Result<Vec<String>, NetError> {
    if bridges.is_empty() {
        return Ok(Vec::new());
    }
    let nft = super::nft()?;
    let json = crate::sys::run(&nft, &["-j", "list", "ruleset"], None).await?;
    Ok(conflicts_in(&json, bridges))
}

/// A chain's identity: (family, table, chain).
type ChainId = (String, String, String);

/// [`forward_conflicts`] on the output of `nft -j list ruleset` (pure).
pub(crate) fn conflicts_in(json: &str, bridges: &[String]) -> Vec<String> {
    let Ok(doc) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let items = doc["nftables"].as_array().cloned().unwrap_or_default();
    let mut base = Vec::new();
    let mut rules: HashMap<ChainId, Vec<&Value>> = HashMap::new();
    for item in &items {
        if let Some(c) = item.get("chain") {
            let id = chain_id(c, "name");
            let family = id.0.as_str();
            let ours = family == "inet" && id.1 == "corral";
            if c["hook"] == "forward"
                && c["policy"] == "drop"
                && matches!(family, "ip" | "inet")
                && !ours
            {
                base.push(id);
            }
        } else if let Some(r) = item.get("rule") {
            rules.entry(chain_id(r, "chain")).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for id in &base {
        let reachable = reachable(id, &rules);
        let accepts = |bridge: &str, key: &str| {
            reachable
                .iter()
                .flat_map(|c| rules.get(c).into_iter().flatten())
                .any(|r| accepts_named(r, key, bridge))
        };
        for bridge in bridges {
            if accepts(bridge, "iifname") && accepts(bridge, "oifname") {
                continue;
            }
            let (family, table, chain) = id;
            out.push(format!(
                "table {family} {table} chain {chain} (hook forward, policy drop) drops \
                 forwarded traffic of {bridge} unless it accepts it (Docker and firewalld do \
                 this); hint: nft insert rule {family} {table} {chain} iifname {bridge} accept; \
                 nft insert rule {family} {table} {chain} oifname {bridge} accept"
            ));
        }
    }
    out
}

fn chain_id(v: &Value, name_key: &str) -> ChainId {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (s("family"), s("table"), s(name_key))
}

/// `start` and every chain of its table it jumps or goes to, directly or not.
fn reachable(start: &ChainId, rules: &HashMap<ChainId, Vec<&Value>>) -> BTreeSet<ChainId> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![start.clone()];
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        for r in rules.get(&id).into_iter().flatten() {
            for e in r["expr"].as_array().into_iter().flatten() {
                for verdict in ["jump", "goto"] {
                    if let Some(target) = e[verdict]["target"].as_str() {
                        todo.push((id.0.clone(), id.1.clone(), target.to_string()));
                    }
                }
            }
        }
    }
    seen
}

/// Whether rule `r` accepts and matches `key` (`iifname`/`oifname`) equal to `bridge`
/// (alone or in an anonymous set).
fn accepts_named(r: &Value, key: &str, bridge: &str) -> bool {
    let exprs = r["expr"].as_array().cloned().unwrap_or_default();
    let accepts = exprs.iter().any(|e| e.get("accept").is_some());
    let names = exprs.iter().any(|e| {
        let m = &e["match"];
        let op = m["op"].as_str().unwrap_or("==");
        m["left"]["meta"]["key"] == key
            && matches!(op, "==" | "in")
            && (m["right"] == bridge
                || m["right"]["set"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x == bridge)))
    });
    accepts && names
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = r#"{"nftables": [
      {"metainfo": {"version": "1.0.6"}},
      {"table": {"family": "ip", "name": "filter", "handle": 1}},
      {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1,
                 "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
      {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 2}},
      {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 3,
                "expr": [{"jump": {"target": "DOCKER-USER"}}]}},
      {"chain": {"family": "inet", "table": "corral", "name": "forward", "handle": 1,
                 "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}
    ]}"#;

    fn with_rules(rules: &[(&str, &str)]) -> String {
        let mut doc: Value = serde_json::from_str(DOCKER).unwrap();
        for (key, chain) in rules {
            let rule = serde_json::json!({"rule": {"family": "ip", "table": "filter",
                "chain": chain, "handle": 9, "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": "corral0"}},
                {"accept": null}]}});
            doc["nftables"].as_array_mut().unwrap().push(rule);
        }
        doc.to_string()
    }

    #[test]
    fn a_drop_policy_elsewhere_is_reported_with_a_hint() {
        let found = conflicts_in(DOCKER, &["corral0".into()]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("table ip filter chain FORWARD (hook forward"));
        assert!(found[0].contains("nft insert rule ip filter FORWARD iifname corral0 accept"));
    }

    #[test]
    fn accepts_for_the_bridge_both_ways_silence_it_even_behind_a_jump() {
        let one_way = with_rules(&[("iifname", "FORWARD")]);
        assert_eq!(conflicts_in(&one_way, &["corral0".into()]).len(), 1);
        let both = with_rules(&[("iifname", "FORWARD"), ("oifname", "DOCKER-USER")]);
        assert!(conflicts_in(&both, &["corral0".into()]).is_empty());
        assert_eq!(conflicts_in(&both, &["corral1".into()]).len(), 1);
    }
}
