//! From `corral create` flags to a [`CreateVmRequest`]: sizes, `--disk` specs, and paths.
//!
//! The parsers here are clap value parsers, so a bad `--memory` or `--disk` is a usage
//! error (exit 2) that names the flag. Paths are made absolute against the CLI's working
//! directory because the daemon runs elsewhere and resolves nothing relative.

mod cloud_init;
mod disk_spec;
mod nic_spec;

use std::path::{Component, Path, PathBuf};

use anyhow::Result;

use corral_api::{parse_size, CreateVmRequest, DiskRequest, KernelBoot, NicRequest};

use crate::cli::CreateArgs;

pub use cloud_init::CloudInitArgs;
pub use disk_spec::parse_disk_spec;
pub use nic_spec::{parse_nic_spec, NicSpec};

/// Guest memory when neither `--memory` nor an OVA says.
pub const DEFAULT_MEMORY_MIB: u64 = 512;

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

/// `--network` flags to NICs: none given leaves the choice to the daemon (its default
/// network, else user-mode); `none` means no NIC.
fn networks(flags: &[NicSpec]) -> Result<Option<Vec<NicRequest>>, String> {
    if flags.is_empty() {
        return Ok(None);
    }
    if flags.iter().any(|f| f.0.is_none()) {
        if flags.len() > 1 {
            return Err("--network none cannot be combined with other --network flags".into());
        }
        return Ok(Some(Vec::new()));
    }
    Ok(Some(flags.iter().filter_map(|f| f.0.clone()).collect()))
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
            // New disks and volumes carry no path to resolve.
            other => other,
        })
        .collect();
    let kernel = args.kernel.as_ref().map(|kernel| KernelBoot {
        kernel: absolute_string(cwd, kernel),
        initrd: args.initrd.as_ref().map(|p| absolute_string(cwd, p)),
        cmdline: args.cmdline.clone(),
    });
    Ok(CreateVmRequest {
        name: args.name.clone(),
        memory_mib: args.memory.unwrap_or(DEFAULT_MEMORY_MIB),
        vcpus: args.vcpus.unwrap_or(1),
        machine: args.machine.into(),
        firmware: args.firmware.into(),
        disks,
        cdrom: args.cdrom.as_ref().map(|p| absolute_string(cwd, p)),
        kernel,
        networks: networks(&args.networks).map_err(anyhow::Error::msg)?,
        start: args.start,
        image: args.image.as_deref().map(|image| image_arg(cwd, image)),
        cloud_init: if args.cloud_init.any() {
            Some(args.cloud_init.apply(Default::default(), cwd)?)
        } else {
            None
        },
    })
}

/// `--image`: an image's name as it is; a path (it has a '/') made absolute.
fn image_arg(cwd: &Path, image: &str) -> String {
    if image.contains('/') {
        absolute_string(cwd, Path::new(image))
    } else {
        image.to_string()
    }
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
    fn defaults() {
        let req =
            build_request(&create_args(&["vm1", "--disk", "size=2G"]), Path::new("/")).unwrap();
        assert_eq!(req.name, "vm1");
        assert_eq!(req.memory_mib, 512);
        assert_eq!(req.vcpus, 1);
        assert_eq!(req.machine, Machine::Pc);
        assert_eq!(req.networks, None, "the daemon picks its default network");
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
            "--disk",
            "vol=data,readonly=on",
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
            vec![
                DiskRequest::Path {
                    path: "/home/me/disks/root.qcow2".into(),
                    format: None,
                    read_only: false,
                },
                DiskRequest::Volume {
                    name: "data".into(),
                    read_only: true,
                },
            ]
        );
        assert_eq!(req.cdrom.as_deref(), Some("/home/me/iso/install.iso"));
        let kernel = req.kernel.unwrap();
        assert_eq!(kernel.kernel, "/home/me/vmlinuz");
        assert_eq!(kernel.initrd.as_deref(), Some("/boot/initrd.img"));
        assert_eq!(kernel.cmdline.as_deref(), Some("console=ttyS0 -- quiet"));
        assert_eq!(req.networks, Some(vec![]));
        assert!(req.start);
        assert_eq!(req.cloud_init, None);
    }

    #[test]
    fn image_names_stay_and_paths_become_absolute() {
        let req = |image: &str| {
            build_request(
                &create_args(&["a", "--image", image]),
                Path::new("/home/me"),
            )
            .unwrap()
            .image
            .unwrap()
        };
        assert_eq!(req("base"), "base");
        assert_eq!(req("./img/d.qcow2"), "/home/me/img/d.qcow2");
        assert_eq!(req("/srv/d.raw"), "/srv/d.raw");
    }

    #[test]
    fn cloud_init_flags() {
        let args = create_args(&[
            "a",
            "--image",
            "base",
            "--user",
            "alice",
            "--hostname",
            "web.example.com",
        ]);
        let ci = build_request(&args, Path::new("/"))
            .unwrap()
            .cloud_init
            .unwrap();
        assert_eq!(ci.user.as_deref(), Some("alice"));
        assert_eq!(ci.hostname.as_deref(), Some("web.example.com"));
        assert!(ci.ssh_authorized_keys.is_empty() && ci.user_data.is_none());
        let err = Cli::try_parse_from(["corral", "create", "a", "--cloud-init", "vendor-data=x"])
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--cloud-init"), "{err}");
    }

    #[test]
    fn networks_repeat_and_none_excludes() {
        let args = create_args(&["a", "--network", "user", "--network", "user"]);
        assert_eq!(
            build_request(&args, Path::new("/"))
                .unwrap()
                .networks
                .map(|n| n.len()),
            Some(2)
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
