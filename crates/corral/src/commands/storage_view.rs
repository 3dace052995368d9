//! How pools and volumes look to people: list tables and `show` pages.
//!
//! A pool's orphans (files nothing accounts for) and missing volumes (records whose file
//! is gone) are data-safety warnings: the list flags them in a HEALTH column and the
//! `show` page spells them out under a WARNING heading, so they are hard to overlook.

use corral_api::{format_size, Pool, PoolSpec, Volume};

use crate::output::{details, format_time, or_dash, render, table};

/// `corral pool list`: one row per pool.
pub fn pool_list_table(pools: &[Pool]) -> String {
    let mut t = table(&[
        "NAME",
        "DRIVER",
        "SOURCE",
        "CAPACITY",
        "ALLOCATED",
        "FREE",
        "USED",
        "VOLUMES",
        "HEALTH",
    ]);
    for pool in pools {
        t.add_row(vec![
            pool.spec.name.clone(),
            pool.spec.driver.clone(),
            source(&pool.spec),
            format_size(pool.capacity_bytes),
            format_size(pool.allocation_bytes),
            format_size(pool.free_bytes),
            used_percent(pool.allocation_bytes, pool.capacity_bytes),
            pool.volumes.to_string(),
            health(pool),
        ]);
    }
    render(t)
}

/// `corral pool show`: spec, capabilities and space, then any warnings.
pub fn pool_page(pool: &Pool) -> String {
    let (spec, caps) = (&pool.spec, &pool.capabilities);
    let mut rows = vec![("Name", spec.name.clone()), ("Driver", spec.driver.clone())];
    if let Some(path) = &spec.path {
        rows.push(("Path", path.clone()));
    }
    if let Some(vg) = &spec.volume_group {
        rows.push(("Volume group", vg.clone()));
        rows.push(("Thin pool", or_dash(spec.thin_pool.as_deref())));
    }
    let formats: Vec<&str> = caps.formats.iter().map(|f| f.as_str()).collect();
    rows.extend([
        ("Shared", yes_no(spec.shared)),
        ("Formats", formats.join(", ")),
        ("Thin", yes_no(caps.thin)),
        ("Online grow", yes_no(caps.online_grow)),
        ("Overlays", yes_no(caps.overlays)),
    ]);
    if caps.block_devices {
        rows.push((
            "Block devices",
            "yes (volumes are LVs: no snapshots or images)".into(),
        ));
    }
    rows.extend([
        ("Capacity", format_size(pool.capacity_bytes)),
        (
            "Allocated",
            format!(
                "{} ({} used)",
                format_size(pool.allocation_bytes),
                used_percent(pool.allocation_bytes, pool.capacity_bytes)
            ),
        ),
        ("Free", format_size(pool.free_bytes)),
        ("Volumes", pool.volumes.to_string()),
    ]);
    if let Some(e) = &pool.error {
        rows.push(("Error", e.clone()));
    }
    let mut out = details(&rows);
    warning(
        &mut out,
        &pool.orphans,
        &format!(
            "{} in the pool that no volume or VM accounts for (orphans)",
            count(pool.orphans.len(), "file", "files")
        ),
        "Corral never removes them: check what they hold, then move or delete them by hand.",
    );
    warning(
        &mut out,
        &pool.missing,
        &format!(
            "{} whose file is missing",
            count(pool.missing.len(), "volume", "volumes")
        ),
        "Their data is gone or was moved: restore the files, or delete the volumes.",
    );
    out
}

/// Appends a WARNING block listing `items`, when there are any.
fn warning(out: &mut String, items: &[String], what: &str, advice: &str) {
    if items.is_empty() {
        return;
    }
    out.push_str(&format!("\nWARNING: {what}.\n{advice}\n"));
    for item in items {
        out.push_str(&format!("  {item}\n"));
    }
}

/// `ok`, or what is wrong in a few words: `2 orphans, 1 missing`.
fn health(pool: &Pool) -> String {
    if pool.error.is_some() {
        return "unreadable".to_string();
    }
    let mut parts = Vec::new();
    if !pool.orphans.is_empty() {
        parts.push(count(pool.orphans.len(), "orphan", "orphans"));
    }
    if !pool.missing.is_empty() {
        parts.push(format!("{} missing", pool.missing.len()));
    }
    if parts.is_empty() {
        "ok".to_string()
    } else {
        parts.join(", ")
    }
}

/// Where a pool keeps its volumes: its directory, or `VG/THINPOOL`; `(shared)` if so.
pub fn source(spec: &PoolSpec) -> String {
    let place = match (&spec.path, &spec.volume_group, &spec.thin_pool) {
        (Some(path), _, _) => path.clone(),
        (None, Some(vg), Some(thin)) => format!("{vg}/{thin}"),
        (None, Some(vg), None) => vg.clone(),
        (None, None, _) => "-".to_string(),
    };
    if spec.shared {
        format!("{place} (shared)")
    } else {
        place
    }
}

/// Allocation as a whole percentage of capacity, rounded up as `df` does, so a pool
/// is never shown emptier than it is; `-` when the capacity is unknown.
pub fn used_percent(allocation: u64, capacity: u64) -> String {
    if capacity == 0 {
        return "-".to_string();
    }
    let percent = (u128::from(allocation) * 100).div_ceil(u128::from(capacity));
    format!("{percent}%")
}

/// `corral volume list`: one row per volume.
pub fn volume_list_table(volumes: &[Volume]) -> String {
    let mut t = table(&[
        "NAME",
        "POOL",
        "FORMAT",
        "SIZE",
        "ALLOCATED",
        "OWNER",
        "USED BY",
    ]);
    for v in volumes {
        t.add_row(vec![
            v.name.clone(),
            v.pool.clone(),
            v.format.as_str().to_string(),
            format_size(v.size_bytes),
            or_dash(v.allocation_bytes.map(format_size)),
            or_dash(v.owner.as_deref()),
            used_by(v),
        ]);
    }
    render(t)
}

/// `corral volume show`.
pub fn volume_page(v: &Volume) -> String {
    let owner = match &v.owner {
        Some(vm) => format!("{vm} (deleted with it)"),
        None => "- (standalone)".to_string(),
    };
    details(&[
        ("Name", v.name.clone()),
        ("Pool", v.pool.clone()),
        ("Format", v.format.as_str().to_string()),
        ("Size", format_size(v.size_bytes)),
        ("Allocated", or_dash(v.allocation_bytes.map(format_size))),
        ("Path", v.path.clone()),
        ("Owner", owner),
        ("Based on", based_on(v)),
        ("Used by", used_by(v)),
        ("Created", format_time(v.created_at)),
    ])
}

/// What a linked clone's data reads through: an image, or a VM's snapshot.
fn based_on(v: &Volume) -> String {
    match (&v.base_image, &v.base_snapshot) {
        (Some(image), _) => format!("image {image}"),
        (None, Some(s)) => format!("snapshot {} of VM {}", s.snapshot, s.vm),
        (None, None) => match &v.base_file {
            Some(file) => format!("file {file} (not Corral's)"),
            None => "-".to_string(),
        },
    }
}

fn used_by(v: &Volume) -> String {
    if v.used_by.is_empty() {
        "-".to_string()
    } else {
        v.used_by.join(",")
    }
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_string()
}

/// `1 file`, `2 files`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api::{DiskFormat, PoolCapabilities};

    fn pool() -> Pool {
        Pool {
            spec: PoolSpec {
                name: "fast".into(),
                driver: "dir".into(),
                path: Some("/srv/fast".into()),
                volume_group: None,
                thin_pool: None,
                shared: false,
            },
            capabilities: PoolCapabilities {
                formats: vec![DiskFormat::Qcow2, DiskFormat::Raw],
                thin: true,
                shared: false,
                online_grow: true,
                overlays: true,
                block_devices: false,
            },
            capacity_bytes: 100 << 30,
            allocation_bytes: 40 << 30,
            free_bytes: 60 << 30,
            volumes: 3,
            orphans: Vec::new(),
            missing: Vec::new(),
            error: None,
        }
    }

    fn volume() -> Volume {
        Volume {
            name: "data".into(),
            pool: "fast".into(),
            format: DiskFormat::Qcow2,
            size_bytes: 10 << 30,
            path: "/srv/fast/data.qcow2".into(),
            owner: None,
            created_at: 1_700_000_000,
            used_by: vec!["web".into()],
            allocation_bytes: Some(196_608),
            base_image: None,
            base_snapshot: None,
            base_file: None,
        }
    }

    #[test]
    fn percentages_round_up() {
        assert_eq!(used_percent(40, 100), "40%");
        assert_eq!(used_percent(1, 1_000), "1%");
        assert_eq!(used_percent(0, 1_000), "0%");
        assert_eq!(used_percent(u64::MAX, u64::MAX), "100%");
        assert_eq!(used_percent(5, 0), "-");
    }

    #[test]
    fn sources() {
        let mut spec = pool().spec;
        assert_eq!(source(&spec), "/srv/fast");
        spec.shared = true;
        assert_eq!(source(&spec), "/srv/fast (shared)");
        spec.shared = false;
        spec.path = None;
        spec.volume_group = Some("vg0".into());
        assert_eq!(source(&spec), "vg0");
        spec.thin_pool = Some("pool0".into());
        assert_eq!(source(&spec), "vg0/pool0");
    }

    #[test]
    fn pool_row() {
        let mut sick = pool();
        sick.spec.name = "sick".into();
        sick.orphans = vec!["/srv/fast/a".into(), "/srv/fast/b".into()];
        sick.missing = vec!["x (/srv/fast/x.qcow2)".into()];
        let text = pool_list_table(&[pool(), sick]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(lines[0].ends_with("VOLUMES  HEALTH"), "{text}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "fast",
                "dir",
                "/srv/fast",
                "100",
                "GiB",
                "40",
                "GiB",
                "60",
                "GiB",
                "40%",
                "3",
                "ok"
            ]
        );
        assert!(lines[2].ends_with("2 orphans, 1 missing"), "{text}");
    }

    #[test]
    fn healthy_pool_page_has_no_warning() {
        let text = pool_page(&pool());
        assert!(text.contains("Path:         /srv/fast\n"), "{text}");
        assert!(text.contains("Formats:      qcow2, raw\n"), "{text}");
        assert!(text.contains("Allocated:    40 GiB (40% used)\n"), "{text}");
        assert!(text.contains("Free:         60 GiB\n"), "{text}");
        assert!(!text.contains("WARNING"), "{text}");
        assert!(!text.contains("Volume group"), "{text}");
    }

    #[test]
    fn pool_page_warns_about_orphans_and_missing() {
        let mut p = pool();
        p.orphans = vec!["/srv/fast/old.qcow2".into()];
        p.missing = vec!["a (/srv/fast/a.qcow2)".into(), "b (/srv/fast/b.raw)".into()];
        let text = pool_page(&p);
        assert!(
            text.contains(
                "\nWARNING: 1 file in the pool that no volume or VM accounts for (orphans).\n"
            ),
            "{text}"
        );
        assert!(text.contains("\n  /srv/fast/old.qcow2\n"), "{text}");
        assert!(
            text.contains("\nWARNING: 2 volumes whose file is missing.\n"),
            "{text}"
        );
        assert!(
            text.ends_with("  a (/srv/fast/a.qcow2)\n  b (/srv/fast/b.raw)\n"),
            "{text}"
        );
    }

    #[test]
    fn lvm_pool_page() {
        let mut p = pool();
        p.spec.driver = "lvm-thin".into();
        p.spec.path = None;
        p.spec.volume_group = Some("vg0".into());
        p.spec.thin_pool = Some("pool0".into());
        p.capabilities = PoolCapabilities {
            formats: vec![DiskFormat::Raw],
            overlays: false,
            block_devices: true,
            ..p.capabilities
        };
        let text = pool_page(&p);
        assert!(text.contains("Volume group:   vg0\n"), "{text}");
        assert!(text.contains("Thin pool:      pool0\n"), "{text}");
        assert!(text.contains("Formats:        raw\n"), "{text}");
        assert!(text.contains("Overlays:       no\n"), "{text}");
        assert!(text.contains("Block devices:  yes"), "{text}");
    }

    #[test]
    fn volume_row() {
        let mut owned = volume();
        owned.name = "web-disk0".into();
        owned.owner = Some("web".into());
        owned.used_by.clear();
        owned.allocation_bytes = None;
        let text = volume_list_table(&[volume(), owned]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME       POOL  FORMAT  SIZE    ALLOCATED  OWNER  USED BY"
        );
        assert_eq!(
            lines[1],
            "data       fast  qcow2   10 GiB  192 KiB    -      web"
        );
        assert_eq!(
            lines[2],
            "web-disk0  fast  qcow2   10 GiB  -          web    -"
        );
    }

    #[test]
    fn volume_details() {
        let text = volume_page(&volume());
        assert!(text.contains("Owner:      - (standalone)\n"), "{text}");
        assert!(text.contains("Used by:    web\n"), "{text}");
        assert!(text.contains("Based on:   -\n"), "{text}");
        assert!(text.contains("Created:    2023-11-14 22:13:20\n"), "{text}");
        let linked = Volume {
            base_snapshot: Some(corral_api::SnapshotRef {
                vm: "web".into(),
                snapshot: "s1".into(),
            }),
            ..volume()
        };
        let text = volume_page(&linked);
        assert!(
            text.contains("Based on:   snapshot s1 of VM web\n"),
            "{text}"
        );
        let on_file = Volume {
            base_file: Some("/srv/debian.qcow2".into()),
            ..volume()
        };
        let text = volume_page(&on_file);
        assert!(
            text.contains("Based on:   file /srv/debian.qcow2 (not Corral's)\n"),
            "{text}"
        );
    }
}
