//! The OVF descriptor (DMTF DSP0243): the VM's name, CPUs, memory and disks.
//!
//! Only what an import needs is read; every other element is ignored, so descriptors
//! from VMware, VirtualBox and others all pass. quick-xml matches element and attribute
//! names without their namespace prefix, so `ovf:href` and `href` read alike.

use std::path::{Component, Path};

use serde::Deserialize;

/// What an OVF descriptor says about its VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfDescriptor {
    pub name: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// In `DiskSection` order.
    pub disks: Vec<OvfDisk>,
}

/// A disk of the VM and the file (relative to the descriptor) holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfDisk {
    pub href: String,
    pub capacity_bytes: Option<u64>,
}

/// Why an OVF descriptor is unusable.
#[derive(Debug, thiserror::Error)]
pub enum OvfError {
    /// The XML does not parse, or does not have the OVF shape.
    #[error("the OVF descriptor cannot be parsed: {0}")]
    Xml(String),
    /// A disk names a file the References section does not list.
    #[error("OVF disk '{disk}' refers to file id '{file_ref}', which References does not list")]
    UnknownFile { disk: String, file_ref: String },
    /// A disk without a file (to be created blank) is not imported.
    #[error("OVF disk '{disk}' has no file (a blank disk); only disks with contents are imported")]
    BlankDisk { disk: String },
    /// A file reference points outside the OVA.
    #[error("OVF file '{href}' is not a plain file name inside the OVA")]
    UnsafeHref { href: String },
    /// Something the descriptor asks for that Corral does not do.
    #[error("the OVF descriptor uses {what}, which is not supported")]
    Unsupported { what: String },
    /// A number or a unit that cannot be read.
    #[error("OVF {field} '{value}' is not understood")]
    BadValue { field: &'static str, value: String },
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "References")]
    references: Option<References>,
    #[serde(rename = "DiskSection")]
    disk_section: Option<DiskSection>,
    #[serde(rename = "VirtualSystem")]
    virtual_system: Option<VirtualSystem>,
    #[serde(rename = "VirtualSystemCollection")]
    collection: Option<Collection>,
}

#[derive(Deserialize)]
struct References {
    #[serde(rename = "File", default)]
    files: Vec<FileRef>,
}

#[derive(Deserialize)]
struct FileRef {
    #[serde(rename = "@id")]
    id: String,
    #[serde(rename = "@href")]
    href: String,
    #[serde(rename = "@compression")]
    compression: Option<String>,
    #[serde(rename = "@chunkSize")]
    chunk_size: Option<String>,
}

#[derive(Deserialize)]
struct DiskSection {
    #[serde(rename = "Disk", default)]
    disks: Vec<Disk>,
}

#[derive(Deserialize)]
struct Disk {
    #[serde(rename = "@diskId")]
    disk_id: String,
    #[serde(rename = "@fileRef")]
    file_ref: Option<String>,
    #[serde(rename = "@capacity")]
    capacity: Option<String>,
    #[serde(rename = "@capacityAllocationUnits")]
    units: Option<String>,
}

#[derive(Deserialize)]
struct Collection {
    #[serde(rename = "VirtualSystem", default)]
    systems: Vec<VirtualSystem>,
}

#[derive(Deserialize)]
struct VirtualSystem {
    #[serde(rename = "@id")]
    id: Option<String>,
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "VirtualHardwareSection")]
    hardware: Option<Hardware>,
}

#[derive(Deserialize)]
struct Hardware {
    #[serde(rename = "Item", default)]
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(rename = "ResourceType")]
    resource_type: Option<String>,
    #[serde(rename = "VirtualQuantity")]
    quantity: Option<String>,
    #[serde(rename = "AllocationUnits")]
    units: Option<String>,
}

/// CIM resource types (`rasd:ResourceType`).
const CPU: &str = "3";
const MEMORY: &str = "4";

/// Reads an OVF descriptor.
pub fn parse_ovf(xml: &str) -> Result<OvfDescriptor, OvfError> {
    let env: Envelope = quick_xml::de::from_str(xml).map_err(|e| OvfError::Xml(e.to_string()))?;
    let system = match (env.virtual_system, env.collection) {
        (Some(s), _) => Some(s),
        (None, Some(c)) if c.systems.len() > 1 => {
            return Err(OvfError::Unsupported {
                what: format!("{} virtual systems in one package", c.systems.len()),
            })
        }
        (None, Some(c)) => c.systems.into_iter().next(),
        (None, None) => None,
    };
    let files = env.references.map(|r| r.files).unwrap_or_default();
    let mut disks = Vec::new();
    for disk in env.disk_section.map(|d| d.disks).unwrap_or_default() {
        let file_ref =
            disk.file_ref
                .filter(|f| !f.is_empty())
                .ok_or_else(|| OvfError::BlankDisk {
                    disk: disk.disk_id.clone(),
                })?;
        let file =
            files
                .iter()
                .find(|f| f.id == file_ref)
                .ok_or_else(|| OvfError::UnknownFile {
                    disk: disk.disk_id.clone(),
                    file_ref: file_ref.clone(),
                })?;
        if let Some(c) = file
            .compression
            .as_deref()
            .filter(|c| !c.is_empty() && *c != "identity")
        {
            return Err(OvfError::Unsupported {
                what: format!("{c}-compressed disk files ({})", file.href),
            });
        }
        if file.chunk_size.is_some() {
            return Err(OvfError::Unsupported {
                what: format!("disk files split into chunks ({})", file.href),
            });
        }
        check_href(&file.href)?;
        disks.push(OvfDisk {
            href: file.href.clone(),
            capacity_bytes: capacity(disk.capacity.as_deref(), disk.units.as_deref())?,
        });
    }

    let (mut name, mut vcpus, mut memory_mib) = (None, None, None);
    if let Some(sys) = system {
        name = sys
            .name
            .filter(|n| !n.trim().is_empty())
            .or(sys.id)
            .map(|n| n.trim().to_string());
        for item in sys.hardware.map(|h| h.items).unwrap_or_default() {
            let quantity = item.quantity.as_deref().map(str::trim);
            match (item.resource_type.as_deref().map(str::trim), quantity) {
                (Some(CPU), Some(q)) if vcpus.is_none() => {
                    vcpus = Some(q.parse().map_err(|_| bad("CPU VirtualQuantity", q))?);
                }
                (Some(MEMORY), Some(q)) if memory_mib.is_none() => {
                    let n: u64 = q.parse().map_err(|_| bad("memory VirtualQuantity", q))?;
                    let units = item.units.as_deref().unwrap_or("byte * 2^20");
                    let mult =
                        unit_bytes(units).ok_or_else(|| bad("memory AllocationUnits", units))?;
                    let bytes = n
                        .checked_mul(mult)
                        .ok_or_else(|| bad("memory VirtualQuantity", q))?;
                    memory_mib = Some(bytes >> 20);
                }
                _ => {}
            }
        }
    }
    Ok(OvfDescriptor {
        name,
        vcpus,
        memory_mib,
        disks,
    })
}

fn bad(field: &'static str, value: &str) -> OvfError {
    OvfError::BadValue {
        field,
        value: value.to_string(),
    }
}

/// A disk's size in bytes; `None` when it is not stated or is a `${property}` the
/// deployer would fill in (the image itself then tells the size).
fn capacity(capacity: Option<&str>, units: Option<&str>) -> Result<Option<u64>, OvfError> {
    let Some(c) = capacity
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with("${"))
    else {
        return Ok(None);
    };
    let n: u64 = c.parse().map_err(|_| bad("disk capacity", c))?;
    let units = units.unwrap_or("byte");
    let mult = unit_bytes(units).ok_or_else(|| bad("disk capacityAllocationUnits", units))?;
    n.checked_mul(mult)
        .map(Some)
        .ok_or_else(|| bad("disk capacity", c))
}

/// Bytes in one unit: DMTF programmatic units (`byte * 2^20`, `byte*1024`) and the
/// names tools write instead (`MegaBytes`, `GB`), binary as VMware and VirtualBox mean.
pub(crate) fn unit_bytes(units: &str) -> Option<u64> {
    let compact: String = units
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let named = match compact.as_str() {
        "byte" | "bytes" | "b" => Some(1),
        "kilobyte" | "kilobytes" | "kb" | "kib" => Some(1 << 10),
        "megabyte" | "megabytes" | "mb" | "mib" => Some(1 << 20),
        "gigabyte" | "gigabytes" | "gb" | "gib" => Some(1 << 30),
        "terabyte" | "terabytes" | "tb" | "tib" => Some(1 << 40),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    let mut parts = compact.split('*');
    if !matches!(parts.next(), Some("byte" | "bytes")) {
        return None;
    }
    let mut total: u64 = 1;
    for factor in parts {
        let value = match factor.split_once('^') {
            Some((base, exp)) => base.parse::<u64>().ok()?.checked_pow(exp.parse().ok()?)?,
            None => factor.parse().ok()?,
        };
        total = total.checked_mul(value)?;
    }
    Some(total)
}

/// A file reference must stay inside the package: relative, no `..`, no URL.
fn check_href(href: &str) -> Result<(), OvfError> {
    let path = Path::new(href);
    let plain = !href.is_empty()
        && !href.contains("://")
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if plain {
        Ok(())
    } else {
        Err(OvfError::UnsafeHref {
            href: href.to_string(),
        })
    }
}

#[cfg(test)]
#[path = "ovf_tests.rs"]
mod tests;
