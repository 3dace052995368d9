//! The VM verbs: create, list, show, and the lifecycle actions.
//!
//! Action commands print one plain line for people (`stopped vm web`) and the API's
//! reply object with `-o json|yaml`, so scripts get the same data the daemon sent.

use anyhow::{Context, Result};

use corral_api::{
    format_size, CloneRequest, CreateVmRequest, DiskRequest, ImportResult, ImportVolumeRequest,
    Operation, OvaSpec, StartRequest, StopMethod, StopRequest, StopResult, UpdateVmRequest, Vm,
};

use super::operation::follow;
use super::vm_view;
use crate::cli::{CloneArgs, CreateArgs, DeleteArgs, NameArgs, StartArgs, StopArgs, UpdateArgs};
use crate::client::{vm_path, Client, API};
use crate::create::build_request;
use crate::output::{emit, print_out, Format};

pub async fn create(client: &Client, args: &CreateArgs) -> Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let mut request = build_request(args, &cwd)?;
    if let Some(ova) = &args.from_ova {
        import_ova(client, args, &cwd.join(ova), &mut request).await?;
    }
    let vm: Vm = client.post(&format!("{API}/vms"), &request).await?;
    emit(args.output.output, &vm, |vm| {
        let name = &vm.spec.name;
        let mut text = format!("created vm {name}\n");
        if args.start {
            text.push_str(&format!("started vm {name}\n"));
        }
        text
    })
}

/// `create --from-ova`: imports the appliance's disks as volumes `<vm>-ova`,
/// `<vm>-ova-disk1`, … (following the import's progress), then makes the VM from them
/// with the descriptor's CPU and memory unless the command line said otherwise.
async fn import_ova(
    client: &Client,
    args: &CreateArgs,
    ova: &std::path::Path,
    request: &mut CreateVmRequest,
) -> Result<()> {
    let import = ImportVolumeRequest {
        name: format!("{}-ova", args.name),
        source: ova.display().to_string(),
        pool: None,
        format: None,
    };
    let op: Operation = client
        .post(&format!("{API}/volumes/import"), &import)
        .await?;
    let op = follow(client, op, &format!("importing {}", ova.display())).await?;
    let result: ImportResult = serde_json::from_value(op.result.unwrap_or_default())
        .context("the import finished without saying what it made")?;
    let spec = result.ova.unwrap_or(OvaSpec {
        name: None,
        vcpus: None,
        memory_mib: None,
    });
    request.memory_mib = args
        .memory
        .or(spec.memory_mib)
        .unwrap_or(crate::create::DEFAULT_MEMORY_MIB);
    request.vcpus = args.vcpus.or(spec.vcpus).unwrap_or(1);
    let disks = result.volumes.into_iter().map(|name| DiskRequest::Volume {
        name,
        read_only: false,
    });
    request.disks.splice(0..0, disks);
    Ok(())
}

/// Copies the VM and follows the copy's progress; a linked clone is made at once.
pub async fn clone(client: &Client, args: &CloneArgs) -> Result<()> {
    let request = CloneRequest {
        name: args.name.clone(),
        linked: args.linked,
        snapshot: args.snapshot.clone(),
    };
    if args.linked {
        let vm: Vm = client
            .post(&format!("{}/clone", vm_path(&args.source)), &request)
            .await?;
        let snapshot = args
            .snapshot
            .clone()
            .unwrap_or_else(|| format!("{}{}", corral_api::LINKED_SNAPSHOT_PREFIX, args.name));
        return emit(args.output.output, &vm, |_| {
            format!(
                "made vm {} as a linked clone of {} at its snapshot {snapshot}\n",
                args.name, args.source
            )
        });
    }
    let op: Operation = client
        .post(&format!("{}/clone", vm_path(&args.source)), &request)
        .await?;
    let op = follow(
        client,
        op,
        &format!("cloning vm {} into {}", args.source, args.name),
    )
    .await?;
    emit(args.output.output, &op, |_| {
        format!("cloned vm {} into {}\n", args.source, args.name)
    })
}

pub async fn list(client: &Client, format: Format) -> Result<()> {
    let mut vms: Vec<Vm> = client.get(&format!("{API}/vms")).await?;
    vms.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    emit(format, &vms, |vms| vm_view::list_table(vms))
}

pub async fn show(client: &Client, args: &NameArgs) -> Result<()> {
    let vm: Vm = client.get(&vm_path(&args.name)).await?;
    emit(args.output.output, &vm, vm_view::show)
}

pub async fn start(client: &Client, args: &StartArgs) -> Result<()> {
    let request = StartRequest {
        paused: args.paused,
    };
    let vm: Vm = client
        .post(&format!("{}/start", vm_path(&args.name)), &request)
        .await?;
    let paused = if args.paused { " (paused)" } else { "" };
    emit(args.output.output, &vm, |vm| {
        format!("started vm {}{paused}\n", vm.spec.name)
    })
}

pub async fn stop(client: &Client, args: &StopArgs) -> Result<()> {
    let verb = if args.force {
        "powering off"
    } else {
        "stopping"
    };
    let op = lifecycle_operation(client, args, "stop", verb).await?;
    let done = if args.force { "powered off" } else { "stopped" };
    emit(args.output.output, &op, |op| {
        format!("{done} vm {}{}\n", args.name, stopped_how(op))
    })
}

pub async fn restart(client: &Client, args: &StopArgs) -> Result<()> {
    let op = lifecycle_operation(client, args, "restart", "restarting").await?;
    emit(args.output.output, &op, |_| {
        format!("restarted vm {}\n", args.name)
    })
}

/// How a graceful stop went, from the operation's result: ` (guest agent)`,
/// ` (ACPI power button; the guest agent failed: …)`.
fn stopped_how(op: &Operation) -> String {
    let Some(result) = op
        .result
        .clone()
        .and_then(|r| serde_json::from_value::<StopResult>(r).ok())
    else {
        return String::new();
    };
    match (result.method, result.agent_error) {
        (StopMethod::Agent, _) => " (guest agent)".into(),
        (StopMethod::Acpi, Some(e)) => format!(" (ACPI power button; the guest agent failed: {e})"),
        (StopMethod::Acpi, None) => " (ACPI power button)".into(),
        (StopMethod::Force, _) => String::new(),
    }
}

/// Posts `stop` or `restart` and follows the operation it starts until it ends.
async fn lifecycle_operation(
    client: &Client,
    args: &StopArgs,
    action: &str,
    verb: &str,
) -> Result<Operation> {
    let request = StopRequest {
        force: args.force,
        timeout_secs: args.timeout,
    };
    let op: Operation = client
        .post(&format!("{}/{action}", vm_path(&args.name)), &request)
        .await?;
    follow(client, op, &format!("{verb} vm {}", args.name)).await
}

pub async fn pause(client: &Client, args: &NameArgs) -> Result<()> {
    simple_action(client, args, "pause", "paused").await
}

pub async fn resume(client: &Client, args: &NameArgs) -> Result<()> {
    simple_action(client, args, "resume", "resumed").await
}

/// An action with no body that answers with the VM at once.
async fn simple_action(client: &Client, args: &NameArgs, action: &str, done: &str) -> Result<()> {
    let vm: Vm = client
        .post(
            &format!("{}/{action}", vm_path(&args.name)),
            &serde_json::json!({}),
        )
        .await?;
    emit(args.output.output, &vm, |vm| {
        format!("{done} vm {}\n", vm.spec.name)
    })
}

pub async fn delete(client: &Client, args: &DeleteArgs) -> Result<()> {
    let path = format!("{}?force={}", vm_path(&args.name), args.force);
    let _: serde_json::Value = client.delete(&path).await?;
    print_out(format!("deleted vm {}\n", args.name).as_bytes())
}

pub async fn update(client: &Client, args: &UpdateArgs) -> Result<()> {
    // The API replaces the whole cloud-init config; the flags change parts of it.
    let cloud_init = if args.cloud_init.any() {
        let vm: Vm = client.get(&vm_path(&args.name)).await?;
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let current = vm.spec.cloud_init.unwrap_or_default();
        Some(args.cloud_init.apply(current, &cwd)?)
    } else {
        None
    };
    let request = UpdateVmRequest {
        memory_mib: args.memory,
        vcpus: args.vcpus,
        cmdline: args.cmdline.clone(),
        cloud_init,
        remove_cloud_init: args.no_cloud_init,
    };
    let vm: Vm = client.patch(&vm_path(&args.name), &request).await?;
    emit(args.output.output, &vm, |vm| {
        format!("updated vm {}: {}\n", vm.spec.name, changes(&request, vm))
    })
}

/// Says what an update changed, in the VM's new terms: `memory 1 GiB, 2 vCPUs`.
fn changes(request: &UpdateVmRequest, vm: &Vm) -> String {
    let mut parts = Vec::new();
    if request.memory_mib.is_some() {
        parts.push(format!("memory {}", format_size(vm.spec.memory_mib << 20)));
    }
    if request.vcpus.is_some() {
        parts.push(format!("{} vCPUs", vm.spec.vcpus));
    }
    if let Some(cmdline) = &request.cmdline {
        parts.push(format!("cmdline {cmdline:?}"));
    }
    if request.cloud_init.is_some() {
        parts.push("cloud-init config (applied at the next start)".to_string());
    }
    if request.remove_cloud_init {
        parts.push("cloud-init removed".to_string());
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_with(result: Option<serde_json::Value>) -> Operation {
        Operation {
            id: Default::default(),
            kind: "vm.stop".into(),
            target: "web".into(),
            state: corral_api::OperationState::Succeeded,
            progress: 100.0,
            created_ms: 0,
            updated_ms: 0,
            cancellable: true,
            error: None,
            result,
            detail: None,
        }
    }

    #[test]
    fn stop_says_how_the_guest_was_stopped() {
        let how = |v: serde_json::Value| stopped_how(&op_with(Some(v)));
        assert_eq!(
            how(serde_json::json!({"method": "agent"})),
            " (guest agent)"
        );
        assert_eq!(
            how(serde_json::json!({"method": "acpi"})),
            " (ACPI power button)"
        );
        assert_eq!(
            how(serde_json::json!({"method": "acpi", "agent_error": "no answer"})),
            " (ACPI power button; the guest agent failed: no answer)"
        );
        assert_eq!(how(serde_json::json!({"method": "force"})), "");
        // An older daemon's stop has no result.
        assert_eq!(stopped_how(&op_with(None)), "");
    }
}
