//! `corral snapshot …`: create, list (as a tree), revert and delete.

use anyhow::Result;

use corral_api::{CreateSnapshotRequest, Operation, SnapshotTree};

use super::operation::follow;
use crate::cli::{SnapshotCommand, SnapshotCreateArgs, SnapshotListArgs, SnapshotNameArgs};
use crate::client::{encode, vm_path, Client};
use crate::output::{emit, format_time};

pub async fn run(client: &Client, command: &SnapshotCommand) -> Result<()> {
    match command {
        SnapshotCommand::Create(args) => create(client, args).await,
        SnapshotCommand::List(args) => list(client, args).await,
        SnapshotCommand::Revert(args) => revert(client, args).await,
        SnapshotCommand::Delete(args) => delete(client, args).await,
    }
}

fn snapshots_path(vm: &str) -> String {
    format!("{}/snapshots", vm_path(vm))
}

async fn create(client: &Client, args: &SnapshotCreateArgs) -> Result<()> {
    let request = CreateSnapshotRequest {
        name: args.name.clone(),
        description: args.description.clone(),
        memory: args.memory,
        quiesce: args.quiesce(),
    };
    let tree: SnapshotTree = client.post(&snapshots_path(&args.vm), &request).await?;
    emit(args.output.output, &tree, |tree| {
        let quiesced = tree
            .snapshots
            .iter()
            .any(|s| s.name == args.name && s.quiesced);
        let how = if quiesced { " (quiesced)" } else { "" };
        format!("created snapshot {} of vm {}{how}\n", args.name, args.vm)
    })
}

async fn list(client: &Client, args: &SnapshotListArgs) -> Result<()> {
    let tree: SnapshotTree = client.get(&snapshots_path(&args.vm)).await?;
    emit(args.output.output, &tree, render_tree)
}

async fn revert(client: &Client, args: &SnapshotNameArgs) -> Result<()> {
    let path = format!("{}/{}/revert", snapshots_path(&args.vm), encode(&args.name));
    let tree: SnapshotTree = client.post(&path, &serde_json::json!({})).await?;
    emit(args.output.output, &tree, |_| {
        format!("reverted vm {} to snapshot {}\n", args.vm, args.name)
    })
}

async fn delete(client: &Client, args: &SnapshotNameArgs) -> Result<()> {
    let path = format!("{}/{}", snapshots_path(&args.vm), encode(&args.name));
    let op: Operation = client.delete(&path).await?;
    let op = follow(client, op, &format!("deleting snapshot {}", args.name)).await?;
    emit(args.output.output, &op, |_| {
        format!("deleted snapshot {} of vm {}\n", args.name, args.vm)
    })
}

/// The tree, children indented under parents, oldest first; `*` marks where the VM is:
///
/// ```text
/// base        2026-11-22 04:10:00
/// ├─ v1       2026-11-22 04:11:00
/// │  └─ v2    2026-11-22 04:12:00  *  (current)
/// └─ test     2026-11-22 04:13:00
/// ```
pub fn render_tree(tree: &SnapshotTree) -> String {
    if tree.snapshots.is_empty() {
        return "no snapshots\n".to_string();
    }
    let mut lines: Vec<(String, String)> = Vec::new();
    let roots: Vec<_> = tree
        .snapshots
        .iter()
        .filter(|s| s.parent.is_none())
        .collect();
    for (i, root) in roots.iter().enumerate() {
        walk(tree, root, "", i + 1 == roots.len(), true, &mut lines);
    }
    let width = lines
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (label, rest) in lines {
        let pad = width - label.chars().count();
        out.push_str(&format!("{label}{}  {rest}\n", " ".repeat(pad)));
    }
    if tree.current.is_none() {
        out.push_str("(the VM's current state is not based on any snapshot)\n");
    }
    out
}

fn walk(
    tree: &SnapshotTree,
    node: &corral_api::Snapshot,
    prefix: &str,
    last: bool,
    root: bool,
    lines: &mut Vec<(String, String)>,
) {
    let branch = if root {
        ""
    } else if last {
        "└─ "
    } else {
        "├─ "
    };
    let mut rest = format_time(node.created_at);
    if node.memory.is_some() {
        rest.push_str("  +memory");
    }
    if node.quiesced {
        rest.push_str("  quiesced");
    }
    if tree.current.as_deref() == Some(node.name.as_str()) {
        rest.push_str("  *  (current)");
    }
    if let Some(d) = &node.description {
        rest.push_str(&format!("  {d}"));
    }
    lines.push((format!("{prefix}{branch}{}", node.name), rest));
    let child_prefix = if root {
        String::new()
    } else {
        format!("{prefix}{}", if last { "   " } else { "│  " })
    };
    let children: Vec<_> = tree
        .snapshots
        .iter()
        .filter(|s| s.parent.as_deref() == Some(node.name.as_str()))
        .collect();
    for (i, c) in children.iter().enumerate() {
        walk(
            tree,
            c,
            &child_prefix,
            i + 1 == children.len(),
            false,
            lines,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api::Snapshot;

    fn snap(name: &str, parent: Option<&str>) -> Snapshot {
        Snapshot {
            name: name.into(),
            parent: parent.map(Into::into),
            created_at: 0,
            description: None,
            disks: vec![],
            nvram: None,
            memory: None,
            quiesced: false,
        }
    }

    #[test]
    fn renders_branches_and_current() {
        let tree = SnapshotTree {
            snapshots: vec![
                snap("base", None),
                Snapshot {
                    quiesced: true,
                    ..snap("v1", Some("base"))
                },
                snap("v2", Some("v1")),
                snap("test", Some("base")),
            ],
            current: Some("v2".into()),
        };
        let text = render_tree(&tree);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("base "));
        assert!(lines[1].starts_with("├─ v1") && lines[1].contains("quiesced"));
        assert!(!lines[0].contains("quiesced"), "{text}");
        assert!(
            lines[2].starts_with("│  └─ v2") && lines[2].contains("(current)"),
            "{text}"
        );
        assert!(lines[3].starts_with("└─ test"));
        assert_eq!(
            render_tree(&SnapshotTree {
                snapshots: vec![],
                current: None
            }),
            "no snapshots\n"
        );
    }
}
