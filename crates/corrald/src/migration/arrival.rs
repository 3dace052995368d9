//! The destination's arriving VM, made in three calls from the source: its images
//! (prepare: tops for copied disks, on the backing chain the source's disks have, whose
//! files are checked here by content), the chain files it lacks (one `PUT` each,
//! streamed, verified by SHA-256, then put in place), then QEMU waiting for the stream
//! (start: TLS credentials, NBD exports, the migration listener).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use corral_api::{
    ChainFile, DiskFormat, DiskTransfer, IncomingReady, IncomingVm, PoolSpec, SnapshotTree, VmSpec,
    VmStatus, Volume,
};
use corral_qemu::migrate::{self, Endpoint};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::incoming::tuning;
use super::{body_of, chain, phase, tls, IncomingBody};
use crate::error::{ApiError, ApiResult};
use crate::revert::Reverter;
use crate::vm::Manager;

/// A chain file the destination lacks, as it will receive it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Needed {
    /// Its index in the source's `chain_files`.
    pub index: usize,
    pub dest: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// What its header's backing must name here, when that differs from the source.
    pub repoint: Option<(String, DiskFormat)>,
    pub received: bool,
}

/// The VM as it will be here: spec and snapshot tree with this host's paths, its volume
/// records, the files made (removed again on failure), the chain files to receive.
pub(crate) struct Arriving {
    pub spec: VmSpec,
    pub tree: SnapshotTree,
    pub volumes: Vec<Volume>,
    pub images: Vec<corral_api::Image>,
    pub made: Vec<String>,
    pub needed: Vec<Needed>,
}

impl Manager {
    /// Decides where every file of the arriving VM goes, checks the chain files this
    /// host already has, and makes the copied disks' tops (on their chains, unsafe:
    /// the chain files may not have arrived yet).
    pub(crate) async fn arriving(
        &self,
        vm: &IncomingVm,
        undo: &mut Reverter,
    ) -> ApiResult<Arriving> {
        let dest_pools: BTreeMap<String, PoolSpec> = self
            .store
            .list_pools()?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        let at =
            |path: &str, pool: Option<&str>| chain::dest_path(path, pool, &vm.pools, &dest_pools);
        let mut moved: BTreeMap<String, String> = BTreeMap::new();
        let mut needed = Vec::new();
        for (index, f) in vm.chain_files.iter().enumerate() {
            let dest = at(&f.path, f.pool.as_deref())?;
            moved.insert(f.path.clone(), dest.display().to_string());
            if !self.chain_file_present(f, &dest).await? {
                needed.push((index, dest));
            }
        }
        let mut spec = vm.spec.clone();
        let mut volumes = Vec::new();
        let mut made = Vec::new();
        for disk in spec.disks.iter_mut() {
            let copied = vm
                .disks
                .iter()
                .any(|p| p.disk == disk.id && p.transfer == DiskTransfer::Copy);
            let volume = disk
                .volume
                .as_ref()
                .and_then(|v| vm.volumes.iter().find(|vol| &vol.name == v))
                .cloned();
            let Some(mut vol) = volume else { continue };
            if copied {
                let dest = at(&disk.path, Some(&vol.pool))?;
                let below = vm.chain_files.iter().rfind(|f| f.disk == disk.id);
                make_top(
                    &dest,
                    disk.size_bytes,
                    below.map(|f| &moved[&f.path]),
                    below,
                )
                .await?;
                let p = dest.clone();
                undo.add(move || {
                    let _ = std::fs::remove_file(p);
                });
                moved.insert(disk.path.clone(), dest.display().to_string());
                disk.path = dest.display().to_string();
                disk.format = DiskFormat::Qcow2;
                vol.path = disk.path.clone();
                vol.format = DiskFormat::Qcow2;
                if let Some(base) = &vol.base_file {
                    vol.base_file = moved.get(base).cloned().or(Some(base.clone()));
                }
                made.push(disk.path.clone());
            }
            volumes.push(vol);
        }
        spec.nvram = self.arriving_nvram(vm, undo)?;
        let mut tree = vm.snapshots.clone();
        for s in tree.snapshots.iter_mut() {
            for d in s.disks.iter_mut() {
                if let Some(to) = moved.get(&d.file) {
                    d.file = to.clone();
                }
            }
        }
        let images = self.arriving_images(vm, &moved)?;
        let needed = needed
            .into_iter()
            .map(|(index, dest)| {
                let f = &vm.chain_files[index];
                Ok(Needed {
                    index,
                    dest: dest.display().to_string(),
                    size_bytes: f.size_bytes,
                    sha256: f.sha256.clone(),
                    repoint: repoint_of(vm, index, &moved),
                    received: false,
                })
            })
            .collect::<ApiResult<Vec<_>>>()?;
        made.extend(needed.iter().map(|n| n.dest.clone()));
        Ok(Arriving {
            spec,
            tree,
            volumes,
            images,
            made,
            needed,
        })
    }

    /// Whether this host already has the chain file at `dest` with the same bytes. A
    /// user's file (outside pools) must be there; a different file in the way is refused
    /// (Corral never overwrites a file).
    async fn chain_file_present(&self, f: &ChainFile, dest: &Path) -> ApiResult<bool> {
        let here = std::fs::metadata(dest).ok();
        let same = match &here {
            Some(m) if m.len() == f.size_bytes => {
                chain::sha256_of(dest.to_path_buf()).await? == f.sha256
            }
            _ => false,
        };
        match (same, here.is_some(), f.pool.is_some()) {
            (true, _, _) => Ok(true),
            (false, false, true) => Ok(false),
            (false, false, false) => Err(ApiError::Conflict {
                message: format!(
                    "disk {} reads through {}, which this host does not have",
                    f.disk,
                    dest.display()
                ),
                hint: Some("copy that file here at the same path first".into()),
            }),
            (false, true, _) => Err(ApiError::Conflict {
                message: format!(
                    "{} exists here with other contents than disk {}'s image on the source",
                    dest.display(),
                    f.disk
                ),
                hint: Some("Corral never overwrites a file; move it away".into()),
            }),
        }
    }

    /// The images the copied disks read through, with this host's paths, that this
    /// host does not have records of yet.
    fn arriving_images(
        &self,
        vm: &IncomingVm,
        moved: &BTreeMap<String, String>,
    ) -> ApiResult<Vec<corral_api::Image>> {
        let mut out = Vec::new();
        for image in &vm.images {
            if self.store.get_image(&image.name)?.is_some() {
                continue;
            }
            let mut image = image.clone();
            if let Some(p) = moved.get(&image.path) {
                image.path = p.clone();
            }
            image.used_by.clear();
            out.push(image);
        }
        Ok(out)
    }

    /// A UEFI VM's variable store, written from the source's copy.
    fn arriving_nvram(&self, vm: &IncomingVm, undo: &mut Reverter) -> ApiResult<Option<String>> {
        let Some(b64) = &vm.nvram_b64 else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ApiError::BadBody(format!("nvram_b64: {e}")))?;
        let dir = self.cfg.state_dir.join("nvram");
        let io = |e: std::io::Error| ApiError::Internal(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let path = dir.join(format!(
            "{}-{}.fd",
            vm.spec.name,
            &vm.spec.uuid.simple().to_string()[..8]
        ));
        std::fs::write(&path, bytes).map_err(io)?;
        let p = path.clone();
        undo.add(move || {
            let _ = std::fs::remove_file(p);
        });
        Ok(Some(path.display().to_string()))
    }

    /// `PUT /api/v1/migrations/{id}/files/{n}`: one chain file, streamed into a hidden
    /// file next to where it goes, checked against its size and SHA-256, then renamed
    /// into place (and repointed when its backing lies elsewhere here).
    pub async fn receive_chain_file(
        &self,
        id: Uuid,
        index: usize,
        body: axum::body::Body,
    ) -> ApiResult<()> {
        let vm = self.migration(id)?.vm;
        let _lock = self.lock(&vm).await;
        let mut m = self.migration(id)?;
        let mut b: IncomingBody = body_of(&m)?;
        if m.phase != phase::RECEIVING {
            return Err(ApiError::conflict(format!(
                "migration {id} takes no files now ({})",
                m.phase
            )));
        }
        let Some(n) = b
            .needed
            .iter()
            .position(|n| n.index == index && !n.received)
        else {
            return Err(ApiError::conflict(format!(
                "migration {id} does not wait for chain file {index}"
            )));
        };
        let want = b.needed[n].clone();
        let dest = PathBuf::from(&want.dest);
        let partial = dest.with_file_name(format!(
            ".corral-arriving-{}-{}",
            id.simple(),
            dest.file_name().and_then(|f| f.to_str()).unwrap_or("file")
        ));
        let got = write_streamed(&partial, body).await;
        let (size, sha) = match got {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        if size != want.size_bytes || sha != want.sha256 {
            let _ = std::fs::remove_file(&partial);
            return Err(ApiError::conflict(format!(
                "chain file {index} arrived damaged ({size} bytes, sha256 {sha}; expected {} bytes, {})",
                want.size_bytes, want.sha256
            )));
        }
        if let Some((backing, format)) = &want.repoint {
            corral_storage::qemu_img::repoint(&partial, Path::new(backing), *format).await?;
        }
        if dest.exists() {
            let _ = std::fs::remove_file(&partial);
            return Err(ApiError::Storage(corral_storage::StorageError::Exists(
                dest,
            )));
        }
        std::fs::rename(&partial, &dest)
            .map_err(|e| ApiError::Internal(format!("{}: {e}", dest.display())))?;
        b.needed[n].received = true;
        self.set_phase(&mut m, phase::RECEIVING, &b)?;
        Ok(())
    }

    /// `POST /api/v1/migrations/{id}/start`: every file is here; QEMU starts waiting for
    /// the stream, with TLS credentials loaded (their files removed again), NBD exports
    /// for the copied disks and the migration listener.
    pub async fn incoming_start(&self, id: Uuid) -> ApiResult<IncomingReady> {
        let vm_name = self.migration(id)?.vm;
        let _lock = self.lock(&vm_name).await;
        let m = self.migration(id)?;
        let b: IncomingBody = body_of(&m)?;
        if m.phase != phase::RECEIVING || self.running(&m.vm).is_some() {
            return Err(ApiError::conflict(format!(
                "migration {id} has started already ({})",
                m.phase
            )));
        }
        if let Some(n) = b.needed.iter().find(|n| !n.received) {
            return Err(ApiError::conflict(format!(
                "chain file {} ({}) has not arrived yet",
                n.index, n.dest
            )));
        }
        let rec = self.record(&m.vm)?;
        let running = self
            .launch_qemu(&rec.spec, true, (Some(&b.machine_type), Some(&b.pci)))
            .await?;
        self.set_status(
            &rec.spec.name,
            VmStatus {
                pid: Some(running.pid),
                ..rec.status.clone()
            },
        )?;
        let material = tls::make(std::slice::from_ref(&b.destination_address))?;
        let confinement = self.host.confinement;
        let dir = tls::install(
            &running.paths.dir,
            &tls::server_files(&material),
            confinement.run_as,
            confinement.chroot,
        )?;
        let loaded = migrate::add_tls_creds(&running.qmp, &dir, Endpoint::Server).await;
        tls::remove(&running.paths.dir);
        loaded?;
        migrate::configure(&running.qmp, &tuning(b.postcopy)).await?;
        let addr = listen_address(&b.destination_address);
        let nbd_port = match b.exported.is_empty() {
            true => None,
            false => {
                let port = free_port(&addr)?;
                migrate::nbd_serve(&running.qmp, &addr, port).await?;
                for disk in &b.exported {
                    migrate::nbd_export(&running.qmp, disk, disk).await?;
                }
                Some(port)
            }
        };
        let migration_port = free_port(&addr)?;
        migrate::listen(&running.qmp, &addr, migration_port).await?;
        Ok(IncomingReady {
            migration_port,
            nbd_port,
            tls: material.client,
        })
    }
}

/// The top image of a copied disk: an empty qcow2 of `size` on its chain's nearest
/// file (not opened: it may not have arrived yet), or standing alone.
async fn make_top(
    dest: &Path,
    size: u64,
    backing: Option<&String>,
    below: Option<&ChainFile>,
) -> ApiResult<()> {
    match (backing, below) {
        (Some(b), Some(f)) => {
            let format = f.format;
            corral_storage::qemu_img::create_overlay_sized(dest, Path::new(b), format, size).await?
        }
        _ => corral_storage::create_qcow2(dest, size).await?,
    }
    Ok(())
}

/// Where chain file `index`'s header must point here, if not where it points now: at
/// the next file below it in the same disk's chain, moved.
fn repoint_of(
    vm: &IncomingVm,
    index: usize,
    moved: &BTreeMap<String, String>,
) -> Option<(String, DiskFormat)> {
    let f = &vm.chain_files[index];
    let below = vm.chain_files[..index].iter().rfind(|g| g.disk == f.disk)?;
    let to = moved.get(&below.path)?;
    (to != &below.path).then(|| (to.clone(), below.format))
}

/// Writes a request body to a new file, hashing it as it goes; its size and SHA-256.
async fn write_streamed(path: &Path, body: axum::body::Body) -> ApiResult<(u64, String)> {
    let io = |e: std::io::Error| ApiError::Internal(format!("{}: {e}", path.display()));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(io)?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadBody(format!("the file stopped arriving: {e}")))?;
        hash.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    Ok((size, chain::hex(&hash.finalize())))
}

/// The address QEMU listens on: the one the source dials, when it is one of this
/// host's; otherwise every address (the TLS client certificate still guards it).
fn listen_address(dialed: &str) -> String {
    match dialed.parse::<std::net::IpAddr>() {
        Ok(ip) if std::net::TcpListener::bind((ip, 0)).is_ok() => ip.to_string(),
        _ => "0.0.0.0".to_string(),
    }
}

/// A TCP port free on `addr` right now, for QEMU to listen on.
fn free_port(addr: &str) -> ApiResult<u16> {
    std::net::TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ApiError::Internal(format!("no free port on {addr}: {e}")))
}
