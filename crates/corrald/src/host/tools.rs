//! The host programs and files corrald needs besides QEMU itself, checked once at start:
//! a missing qemu-img or OVMF is named with the package to install (in the log at start
//! and in `corral host info`) instead of surfacing as ENOENT from the first VM that
//! needs it.

use std::path::Path;

use corral_api::HostProblem;

/// What the checks found: qemu-img's version when it runs, and every problem.
pub struct ToolReport {
    pub qemu_img_version: Option<String>,
    pub problems: Vec<HostProblem>,
}

/// Checks qemu-img (present, and the same major.minor as QEMU) and OVMF. `qemu_version`
/// is QEMU's own `--version` text after "QEMU emulator version ".
pub async fn check(qemu_img: &Path, qemu_version: &str) -> ToolReport {
    let mut problems = Vec::new();
    let install = install_hint(qemu_version);
    let qemu_img_version = match tool_version(qemu_img).await {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(HostProblem {
                component: "qemu-img".into(),
                error: format!("cannot run {}: {e}", qemu_img.display()),
                affects: "disks, images, snapshots, clones and imports".into(),
                hint: install.clone(),
            });
            None
        }
    };
    if let Some(img) = &qemu_img_version {
        if major_minor(img) != major_minor(qemu_version) {
            problems.push(HostProblem {
                component: "qemu-img".into(),
                error: format!(
                    "qemu-img {img} does not match QEMU {}",
                    short_version(qemu_version)
                ),
                affects: "images one makes may use features the other cannot read".into(),
                hint: install,
            });
        }
    }
    if corral_qemu::argv::ovmf_files().is_none() {
        problems.push(HostProblem {
            component: "ovmf".into(),
            error: "UEFI firmware (OVMF) is not installed in /usr/share/OVMF".into(),
            affects: "UEFI VMs (--firmware uefi)".into(),
            hint: "install Debian's ovmf (apt-get install ovmf)".into(),
        });
    }
    ToolReport {
        qemu_img_version,
        problems,
    }
}

/// `qemu-img version 7.2.22 (Debian …)` → `7.2.22`.
async fn tool_version(binary: &Path) -> Result<String, String> {
    let out = tokio::process::Command::new(binary)
        .arg("--version")
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("it exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "version").nth(1))
        .map(str::to_string)
        .ok_or_else(|| format!("it printed no version: {}", text.trim()))
}

/// The apt command that installs qemu-utils of QEMU's own Debian version, read from
/// QEMU's version text (`7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`), so that the two
/// match; plain `qemu-utils` when QEMU is not Debian's.
fn install_hint(qemu_version: &str) -> String {
    let debian = qemu_version
        .split_once("(Debian ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(v, _)| v.trim());
    match debian {
        Some(v) => {
            format!("install Debian's qemu-utils of QEMU's version: apt-get install qemu-utils={v}")
        }
        None => "install qemu-utils of the same version as qemu-system-x86".into(),
    }
}

/// `7.2.22 (Debian …)` → `7.2.22`.
fn short_version(version: &str) -> &str {
    version.split_whitespace().next().unwrap_or(version)
}

/// `7.2.22` → `(7, 2)`; `None` when it is not a version.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = short_version(version).split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_pins_qemu_utils_to_qemus_debian_version() {
        assert_eq!(
            install_hint("7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            "install Debian's qemu-utils of QEMU's version: apt-get install qemu-utils=1:7.2+dfsg-7+deb12u18+b3"
        );
        assert_eq!(
            install_hint("9.1.0"),
            "install qemu-utils of the same version as qemu-system-x86"
        );
    }

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(major_minor("7.2.22 (Debian 1:7.2)"), Some((7, 2)));
        assert_eq!(major_minor("10.0.2"), Some((10, 0)));
        assert_eq!(major_minor("unknown"), None);
    }

    #[tokio::test]
    async fn a_missing_qemu_img_is_named_with_its_package() {
        let report = check(
            Path::new("/nonexistent/qemu-img"),
            "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)",
        )
        .await;
        assert_eq!(report.qemu_img_version, None);
        let p = &report.problems[0];
        assert_eq!(p.component, "qemu-img");
        assert!(p.error.contains("/nonexistent/qemu-img"), "{}", p.error);
        assert!(
            p.hint.contains("qemu-utils=1:7.2+dfsg-7+deb12u18+b3"),
            "{}",
            p.hint
        );
    }

    #[tokio::test]
    async fn a_qemu_img_of_another_version_is_a_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("qemu-img");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'qemu-img version 10.0.2 (Debian 1:10.0.2)'\n",
        )
        .expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let report = check(&fake, "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)").await;
        assert_eq!(report.qemu_img_version.as_deref(), Some("10.0.2"));
        let p = &report.problems[0];
        assert_eq!(p.error, "qemu-img 10.0.2 does not match QEMU 7.2.22");
    }
}
