//! `--disk` specs: `size=2G` (a new disk), `vol=NAME` (a Corral volume) or `path=FILE`
//! (an existing image), each with the options that make sense for it.
//!
//! This is a clap value parser, so every mistake here is a usage error (exit 2) that
//! names `--disk`, before anything reaches the daemon.

use corral_api::{parse_size, validate_name, DiskFormat, DiskRequest};

/// The three ways to give a disk; exactly one per `--disk`.
const SOURCES_HINT: &str =
    "give one of size=SIZE (a new disk), vol=NAME (a Corral volume) or path=FILE (an existing image)";

/// `--disk`: `size=2G` for a new volume owned by the VM, `vol=NAME[,readonly=on]` for an
/// existing Corral volume, or `path=FILE[,format=raw|qcow2][,readonly=on]` for an image
/// file. `,,` stands for a literal comma in a path, as in QEMU.
pub fn parse_disk_spec(spec: &str) -> Result<DiskRequest, String> {
    let mut size = None;
    let mut volume = None;
    let mut path = None;
    let mut format = None;
    let mut read_only = None;
    for item in split_options(spec) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not key=value ({SOURCES_HINT})"))?;
        if value.is_empty() {
            return Err(format!("'{key}=' needs a value"));
        }
        let slot_taken = match key {
            "size" => size.replace(parse_size(value)?).is_some(),
            "vol" | "volume" => volume.replace(volume_name(value)?).is_some(),
            "path" => path.replace(value.to_string()).is_some(),
            "format" => format.replace(parse_format(value)?).is_some(),
            "readonly" | "ro" => read_only.replace(parse_switch(key, value)?).is_some(),
            other => {
                return Err(format!(
                    "unknown key '{other}' (use size, vol, path, format or readonly)"
                ))
            }
        };
        if slot_taken {
            return Err(format!("'{key}' is given twice"));
        }
    }
    let given: Vec<&str> = [
        ("size=", size.is_some()),
        ("vol=", volume.is_some()),
        ("path=", path.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();
    if given.len() > 1 {
        return Err(format!(
            "{} cannot be combined: {SOURCES_HINT}",
            given.join(" and ")
        ));
    }
    if let Some(size_bytes) = size {
        if format.is_some() || read_only.is_some() {
            return Err(
                "format= and readonly= do not apply to size= disks (new disks are qcow2)".into(),
            );
        }
        return Ok(DiskRequest::New { size_bytes });
    }
    if let Some(name) = volume {
        if format.is_some() {
            return Err("format= does not apply to vol= disks (a volume knows its format)".into());
        }
        return Ok(DiskRequest::Volume {
            name,
            read_only: read_only.unwrap_or(false),
        });
    }
    match path {
        Some(path) => Ok(DiskRequest::Path {
            path,
            format,
            read_only: read_only.unwrap_or(false),
        }),
        None => Err(SOURCES_HINT.to_string()),
    }
}

/// A volume name, checked by the same rule the daemon applies.
fn volume_name(value: &str) -> Result<String, String> {
    validate_name("vol", value).map_err(|e| match e.hint {
        Some(hint) => format!("{} ({hint})", e.message),
        None => e.message,
    })?;
    Ok(value.to_string())
}

/// Splits `a=1,b=2` on commas, where `,,` is an escaped comma.
fn split_options(spec: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                current.push(',');
            }
            ',' => items.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    items.push(current);
    items.retain(|s| !s.is_empty());
    items
}

fn parse_format(value: &str) -> Result<DiskFormat, String> {
    match value {
        "raw" => Ok(DiskFormat::Raw),
        "qcow2" => Ok(DiskFormat::Qcow2),
        other => Err(format!("unknown format '{other}' (use raw or qcow2)")),
    }
}

fn parse_switch(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        other => Err(format!("{key}={other}: use on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    #[test]
    fn disk_new() {
        assert_eq!(
            parse_disk_spec("size=2G"),
            Ok(DiskRequest::New {
                size_bytes: 2 << 30
            })
        );
    }

    #[test]
    fn disk_path_with_options() {
        assert_eq!(
            parse_disk_spec("path=/img/a.raw,format=raw,readonly=on"),
            Ok(DiskRequest::Path {
                path: "/img/a.raw".into(),
                format: Some(DiskFormat::Raw),
                read_only: true,
            })
        );
        assert_eq!(
            parse_disk_spec("path=a,,b.qcow2"),
            Ok(DiskRequest::Path {
                path: "a,b.qcow2".into(),
                format: None,
                read_only: false,
            })
        );
    }

    #[test]
    fn disk_volume() {
        assert_eq!(
            parse_disk_spec("vol=data"),
            Ok(DiskRequest::Volume {
                name: "data".into(),
                read_only: false,
            })
        );
        assert_eq!(
            parse_disk_spec("vol=base-img,readonly=on"),
            Ok(DiskRequest::Volume {
                name: "base-img".into(),
                read_only: true,
            })
        );
        assert_eq!(
            parse_disk_spec("ro=off,volume=data"),
            Ok(DiskRequest::Volume {
                name: "data".into(),
                read_only: false,
            })
        );
    }

    #[test]
    fn disk_errors_are_specific() {
        let cases = [
            ("", "give one of size=SIZE"),
            ("size=2G,path=/a", "size= and path= cannot be combined"),
            ("vol=data,size=2G", "size= and vol= cannot be combined"),
            ("vol=data,path=/a", "vol= and path= cannot be combined"),
            ("size=1G,vol=a,path=/a", "size= and vol= and path="),
            ("vol=data,format=raw", "a volume knows its format"),
            ("vol=Data", "not allowed"),
            ("vol=a,vol=b", "given twice"),
            ("readonly=on", "give one of size=SIZE"),
            ("colour=red", "unknown key 'colour'"),
            ("path=/a,format=vmdk", "unknown format 'vmdk'"),
            ("path=/a,readonly=maybe", "use on or off"),
            ("size=big", "not a size"),
            ("size=2G,format=raw", "do not apply to size= disks"),
            ("path=/a,path=/b", "given twice"),
            ("/some/file.img", "is not key=value"),
            ("path=", "needs a value"),
        ];
        for (spec, expected) in cases {
            let err = parse_disk_spec(spec).unwrap_err();
            assert!(err.contains(expected), "{spec}: {err}");
        }
    }

    #[test]
    fn bad_disk_is_a_usage_error_naming_the_flag() {
        for spec in ["colour=red", "vol=data,size=2G", "vol=data,path=/x"] {
            let err = Cli::try_parse_from(["corral", "create", "a", "--disk", spec])
                .err()
                .unwrap();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains("--disk"), "{err}");
        }
    }
}
