//! `corral volume …`: create, inspect, grow, delete, attach and detach volumes.
//!
//! Like the VM verbs, actions print one plain line for people and the API's reply with
//! `-o json|yaml`: the volume for create, the final operation for resize, the VM for
//! attach and detach.

use anyhow::Result;

use corral_api::{
    format_size, AttachVolumeRequest, CreateVolumeRequest, DetachVolumeRequest, ImportResult,
    ImportVolumeRequest, Operation, ResizeVolumeRequest, Vm, VmState, Volume,
};

use super::operation::follow;
use super::storage_view::{volume_list_table, volume_page};
use crate::cli::{
    SizeChange, VolumeAttachArgs, VolumeCommand, VolumeCreateArgs, VolumeDeleteArgs,
    VolumeDetachArgs, VolumeImportArgs, VolumeListArgs, VolumeNameArgs, VolumeResizeArgs,
};
use crate::client::{encode, volume_path, Client, API};
use crate::output::{emit, print_out};

pub async fn run(client: &Client, command: &VolumeCommand) -> Result<()> {
    match command {
        VolumeCommand::Create(args) => create(client, args).await,
        VolumeCommand::List(args) => list(client, args).await,
        VolumeCommand::Show(args) => show(client, args).await,
        VolumeCommand::Resize(args) => resize(client, args).await,
        VolumeCommand::Delete(args) => delete(client, args).await,
        VolumeCommand::Import(args) => import(client, args).await,
        VolumeCommand::Attach(args) => attach(client, args).await,
        VolumeCommand::Detach(args) => detach(client, args).await,
    }
}

async fn create(client: &Client, args: &VolumeCreateArgs) -> Result<()> {
    let request = CreateVolumeRequest {
        name: args.name.clone(),
        pool: args.pool.clone(),
        size_bytes: args.size,
        format: args.format.map(Into::into),
    };
    let volume: Volume = client.post(&format!("{API}/volumes"), &request).await?;
    emit(args.output.output, &volume, |v| {
        format!(
            "created volume {} in pool {} ({} {})\n",
            v.name,
            v.pool,
            format_size(v.size_bytes),
            v.format.as_str()
        )
    })
}

async fn list(client: &Client, args: &VolumeListArgs) -> Result<()> {
    let mut volumes: Vec<Volume> = client.get(&list_path(args.pool.as_deref())).await?;
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    emit(args.output.output, &volumes, |volumes| {
        volume_list_table(volumes)
    })
}

/// `/api/v1/volumes`, filtered to one pool when asked.
fn list_path(pool: Option<&str>) -> String {
    match pool {
        Some(pool) => format!("{API}/volumes?pool={}", encode(pool)),
        None => format!("{API}/volumes"),
    }
}

async fn show(client: &Client, args: &VolumeNameArgs) -> Result<()> {
    let volume: Volume = client.get(&volume_path(&args.name)).await?;
    emit(args.output.output, &volume, volume_page)
}

/// Grows the volume and follows the operation, since an online grow goes through the
/// running VM's QEMU and may take a moment.
async fn resize(client: &Client, args: &VolumeResizeArgs) -> Result<()> {
    let size_bytes = match args.size {
        SizeChange::To(bytes) => bytes,
        SizeChange::By(delta) => {
            let volume: Volume = client.get(&volume_path(&args.name)).await?;
            // Past the daemon's limit either way; it says so with the field and a hint.
            volume.size_bytes.saturating_add(delta)
        }
    };
    let request = ResizeVolumeRequest { size_bytes };
    let op: Operation = client
        .post(&format!("{}/resize", volume_path(&args.name)), &request)
        .await?;
    let op = follow(client, op, &format!("resizing volume {}", args.name)).await?;
    emit(args.output.output, &op, |_| {
        format!(
            "resized volume {} to {}\n",
            args.name,
            format_size(size_bytes)
        )
    })
}

/// Imports and follows the operation (download, unpack and conversion move one bar);
/// a local path is made absolute, since the daemon knows nothing of our directory.
async fn import(client: &Client, args: &VolumeImportArgs) -> Result<()> {
    let source = if args.source.contains("://") {
        args.source.clone()
    } else {
        std::env::current_dir()?
            .join(&args.source)
            .display()
            .to_string()
    };
    let request = ImportVolumeRequest {
        name: args.name.clone(),
        source,
        pool: args.pool.clone(),
        format: args.format.map(Into::into),
    };
    let op: Operation = client
        .post(&format!("{API}/volumes/import"), &request)
        .await?;
    let op = follow(client, op, &format!("importing {}", args.source)).await?;
    let made: ImportResult = serde_json::from_value(op.result.clone().unwrap_or_default())
        .unwrap_or(ImportResult {
            volumes: vec![],
            ova: None,
        });
    emit(args.output.output, &op, |_| {
        format!("imported volume(s) {}\n", made.volumes.join(", "))
    })
}

async fn delete(client: &Client, args: &VolumeDeleteArgs) -> Result<()> {
    let _: serde_json::Value = client.delete(&volume_path(&args.name)).await?;
    print_out(format!("deleted volume {}\n", args.name).as_bytes())
}

async fn attach(client: &Client, args: &VolumeAttachArgs) -> Result<()> {
    let request = AttachVolumeRequest {
        vm: args.vm.clone(),
        read_only: args.read_only,
    };
    let vm: Vm = client
        .post(&format!("{}/attach", volume_path(&args.name)), &request)
        .await?;
    emit(args.output.output, &vm, |vm| attached_line(vm, &args.name))
}

/// `attached volume data to vm web as disk1 (hot-plugged, read-only)`: the disk id is
/// how `corral show` and the daemon's events name it from now on.
fn attached_line(vm: &Vm, volume: &str) -> String {
    let disk = vm
        .spec
        .disks
        .iter()
        .find(|d| d.volume.as_deref() == Some(volume));
    let mut text = format!("attached volume {volume} to vm {}", vm.spec.name);
    if let Some(disk) = disk {
        text.push_str(&format!(" as {}", disk.id));
    }
    let mut notes = Vec::new();
    if matches!(vm.status.state, VmState::Running | VmState::Paused) {
        notes.push("hot-plugged");
    }
    if disk.is_some_and(|d| d.read_only) {
        notes.push("read-only");
    }
    if !notes.is_empty() {
        text.push_str(&format!(" ({})", notes.join(", ")));
    }
    text.push('\n');
    text
}

async fn detach(client: &Client, args: &VolumeDetachArgs) -> Result<()> {
    let request = DetachVolumeRequest {
        vm: args.vm.clone(),
    };
    let vm: Vm = client
        .post(&format!("{}/detach", volume_path(&args.name)), &request)
        .await?;
    emit(args.output.output, &vm, |vm| {
        format!("detached volume {} from vm {}\n", args.name, vm.spec.name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api::{Disk, DiskFormat, Machine, VmSpec, VmStatus};

    fn vm(state: VmState, read_only: bool) -> Vm {
        Vm {
            spec: VmSpec {
                name: "web".into(),
                uuid: Default::default(),
                memory_mib: 512,
                vcpus: 1,
                machine: Machine::Pc,
                firmware: Default::default(),
                nvram: None,
                disks: vec![Disk {
                    id: "disk1".into(),
                    volume: Some("data".into()),
                    path: "/srv/fast/data.qcow2".into(),
                    format: DiskFormat::Qcow2,
                    size_bytes: 1 << 30,
                    owned: false,
                    read_only,
                }],
                cdrom: None,
                kernel: None,
                nics: Vec::new(),
                firewall: Vec::new(),
                cloud_init: None,
            },
            status: VmStatus {
                state,
                pid: None,
                started_at: None,
                reason: None,
                accel: None,
            },
            uptime_secs: None,
            created_at: 0,
            events: Vec::new(),
            guest_agent: false,
            addresses: Vec::new(),
        }
    }

    #[test]
    fn attach_names_the_disk() {
        assert_eq!(
            attached_line(&vm(VmState::Stopped, false), "data"),
            "attached volume data to vm web as disk1\n"
        );
        assert_eq!(
            attached_line(&vm(VmState::Running, true), "data"),
            "attached volume data to vm web as disk1 (hot-plugged, read-only)\n"
        );
        assert_eq!(
            attached_line(&vm(VmState::Stopped, false), "other"),
            "attached volume other to vm web\n"
        );
    }

    #[test]
    fn list_filters_by_pool() {
        assert_eq!(list_path(None), "/api/v1/volumes");
        assert_eq!(list_path(Some("fast")), "/api/v1/volumes?pool=fast");
    }
}
