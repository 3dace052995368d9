//! From `corral create` flags to a [`CreateVmRequest`]: sizes, `--disk` specs, and paths.
//!
//! The parsers here are clap value parsers, so a bad `--memory` or `--disk` is a usage
//! error (exit 2) that names the flag. Paths are made absolute against the CLI's working
//! directory because the daemon runs elsewhere and resolves nothing relative.

use std::path::{Component, Path, PathBuf};

use anyhow::Result;

use corral_api::{parse_size, CreateVmRequest, DiskFormat, DiskRequest, KernelBoot, NetworkKind};

use crate::cli::{CreateArgs, NetArg};

/// `--memory`: a size (`512M`, `2G`) in MiB; a bare number is MiB, like virt-install.
pub fn parse_memory_mib(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed
            .parse()
            .map_err(|_| format!("'{text}' is too large"));
    }
    let bytes = parse_size(text)?;
    if bytes % (1 << 20) != 0 {
        return Err(format!(
            "'{text}' is not a whole number of MiB (use e.g. 512M or 2G)"
        ));
    }
    Ok(bytes >> 20)
}

/// `--disk`: `size=2G` for a new volume, or `path=FILE[,format=raw|qcow2][,readonly=on]`
/// to attach an existing image. `,,` stands for a literal comma in a path, as in QEMU.
pub fn parse_disk_spec(spec: &str) -> Result<DiskRequest, String> {
    let mut size = None;
    let mut path = None;
    let mut format = None;
    let mut read_only = None;
    for item in split_options(spec) {
        let (key, value) = item.split_once('=').ok_or_else(|| {
            format!("'{item}' is not key=value (use size=2G or path=FILE[,format=raw|qcow2][,readonly=on])")
        })?;
        if value.is_empty() {
            return Err(format!("'{key}=' needs a value"));
        }
        let slot_taken = match key {
            "size" => size.replace(parse_size(value)?).is_some(),
            "path" => path.replace(value.to_string()).is_some(),
            "format" => format.replace(parse_format(value)?).is_some(),
            "readonly" | "ro" => read_only.replace(parse_switch(key, value)?).is_some(),
            other => {
                return Err(format!(
                    "unknown key '{other}' (use size, path, format or readonly)"
                ))
            }
        };
        if slot_taken {
            return Err(format!("'{key}' is given twice"));
        }
    }
    match (size, path) {
        (Some(size_bytes), None) => {
            if format.is_some() || read_only.is_some() {
                return Err(
                    "format= and readonly= apply only to path= disks (new disks are qcow2)".into(),
                );
            }
            Ok(DiskRequest::New { size_bytes })
        }
        (None, Some(path)) => Ok(DiskRequest::Path {
            path,
            format,
            read_only: read_only.unwrap_or(false),
        }),
        (Some(_), Some(_)) => {
            Err("give either size= (a new disk) or path= (an existing file), not both".into())
        }
        (None, None) => Err("give size= for a new disk or path= for an existing file".into()),
    }
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

/// Makes `path` absolute against `cwd`, dropping `.` parts; `..` and symlinks are kept as
/// typed, since resolving them is the daemon's business on its own filesystem view.
pub fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    cwd.join(path)
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

fn absolute_string(cwd: &Path, path: &Path) -> String {
    absolute(cwd, path).to_string_lossy().into_owned()
}

/// `--network` flags to NICs: none given means one user-mode NIC; `none` means no NIC.
fn networks(flags: &[NetArg]) -> Result<Vec<NetworkKind>, String> {
    if flags.is_empty() {
        return Ok(vec![NetworkKind::User]);
    }
    if flags.contains(&NetArg::None) {
        if flags.len() > 1 {
            return Err("--network none cannot be combined with other --network flags".into());
        }
        return Ok(Vec::new());
    }
    Ok(flags.iter().map(|_| NetworkKind::User).collect())
}

/// Builds the request the daemon gets, with every file path absolute.
pub fn build_request(args: &CreateArgs, cwd: &Path) -> Result<CreateVmRequest> {
    let disks = args
        .disks
        .iter()
        .cloned()
        .map(|disk| match disk {
            DiskRequest::Path {
                path,
                format,
                read_only,
            } => DiskRequest::Path {
                path: absolute_string(cwd, Path::new(&path)),
                format,
                read_only,
            },
            new => new,
        })
        .collect();
    let kernel = args.kernel.as_ref().map(|kernel| KernelBoot {
        kernel: absolute_string(cwd, kernel),
        initrd: args.initrd.as_ref().map(|p| absolute_string(cwd, p)),
        cmdline: args.cmdline.clone(),
    });
    Ok(CreateVmRequest {
        name: args.name.clone(),
        memory_mib: args.memory,
        vcpus: args.vcpus,
        machine: args.machine.into(),
        disks,
        cdrom: args.cdrom.as_ref().map(|p| absolute_string(cwd, p)),
        kernel,
        networks: networks(&args.networks).map_err(anyhow::Error::msg)?,
        start: args.start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use corral_api::Machine;

    fn create_args(argv: &[&str]) -> CreateArgs {
        let mut full = vec!["corral", "create"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Create(args) => args,
            _ => panic!("not a create command"),
        }
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mib("512M"), Ok(512));
        assert_eq!(parse_memory_mib("2G"), Ok(2048));
        assert_eq!(parse_memory_mib("1.5G"), Ok(1536));
        assert_eq!(parse_memory_mib("256"), Ok(256));
        assert!(parse_memory_mib("1000K")
            .unwrap_err()
            .contains("whole number of MiB"));
        assert!(parse_memory_mib("lots").is_err());
        assert!(parse_memory_mib("12X")
            .unwrap_err()
            .contains("unknown size unit"));
    }

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
    fn disk_errors_are_specific() {
        let cases = [
            ("", "give size="),
            ("size=2G,path=/a", "not both"),
            ("colour=red", "unknown key 'colour'"),
            ("path=/a,format=vmdk", "unknown format 'vmdk'"),
            ("path=/a,readonly=maybe", "use on or off"),
            ("size=big", "not a size"),
            ("size=2G,format=raw", "apply only to path="),
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
        let err = Cli::try_parse_from(["corral", "create", "a", "--disk", "colour=red"])
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--disk"), "{err}");
    }

    #[test]
    fn defaults() {
        let req =
            build_request(&create_args(&["vm1", "--disk", "size=2G"]), Path::new("/")).unwrap();
        assert_eq!(req.name, "vm1");
        assert_eq!(req.memory_mib, 512);
        assert_eq!(req.vcpus, 1);
        assert_eq!(req.machine, Machine::Pc);
        assert_eq!(req.networks, vec![NetworkKind::User]);
        assert!(!req.start);
        assert!(req.kernel.is_none() && req.cdrom.is_none());
    }

    #[test]
    fn relative_paths_become_absolute() {
        let args = create_args(&[
            "vm1",
            "--memory",
            "1G",
            "--vcpus",
            "2",
            "--machine",
            "q35",
            "--disk",
            "path=./disks/root.qcow2",
            "--cdrom",
            "iso/install.iso",
            "--kernel",
            "vmlinuz",
            "--initrd",
            "/boot/initrd.img",
            "--cmdline",
            "console=ttyS0 -- quiet",
            "--network",
            "none",
            "--start",
        ]);
        let req = build_request(&args, Path::new("/home/me")).unwrap();
        assert_eq!(req.memory_mib, 1024);
        assert_eq!(req.vcpus, 2);
        assert_eq!(req.machine, Machine::Q35);
        assert_eq!(
            req.disks,
            vec![DiskRequest::Path {
                path: "/home/me/disks/root.qcow2".into(),
                format: None,
                read_only: false,
            }]
        );
        assert_eq!(req.cdrom.as_deref(), Some("/home/me/iso/install.iso"));
        let kernel = req.kernel.unwrap();
        assert_eq!(kernel.kernel, "/home/me/vmlinuz");
        assert_eq!(kernel.initrd.as_deref(), Some("/boot/initrd.img"));
        assert_eq!(kernel.cmdline.as_deref(), Some("console=ttyS0 -- quiet"));
        assert!(req.networks.is_empty());
        assert!(req.start);
    }

    #[test]
    fn networks_repeat_and_none_excludes() {
        let args = create_args(&["a", "--network", "user", "--network", "user"]);
        assert_eq!(
            build_request(&args, Path::new("/")).unwrap().networks.len(),
            2
        );
        let args = create_args(&["a", "--network", "none", "--network", "user"]);
        let err = build_request(&args, Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("--network none"));
    }

    #[test]
    fn initrd_or_cmdline_need_kernel() {
        for flag in ["--initrd", "--cmdline"] {
            let err = Cli::try_parse_from(["corral", "create", "a", flag, "x"])
                .err()
                .unwrap();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains("--kernel"), "{err}");
        }
    }

    #[test]
    fn bad_memory_is_a_usage_error() {
        let err = Cli::try_parse_from(["corral", "create", "a", "--memory", "lots"])
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--memory"));
    }

    #[test]
    fn absolute_keeps_dotdot_and_drops_dot() {
        assert_eq!(
            absolute(Path::new("/a/b"), Path::new("./c/../d")),
            PathBuf::from("/a/b/c/../d")
        );
        assert_eq!(
            absolute(Path::new("/a"), Path::new("/x/y")),
            PathBuf::from("/x/y")
        );
    }
}
