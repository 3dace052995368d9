//! Where a running VM's PCI devices sit, read back from QEMU, and the `bus=…,addr=…` that
//! puts each in the same place on another QEMU. A fresh start places devices in command
//! line order; hot-plugging puts them where there was room (a free slot on `pc`, a
//! spare root port on q35), and a device unplugged leaves a gap. A migration's
//! destination must have every device where the source has it, or QEMU cannot load the
//! device state.

use std::collections::BTreeMap;

use corral_api::{PciPlace, VmSpec};
use serde_json::{json, Value};

use crate::argv::{hotplug_ports, nic_device_id};
use crate::qmp::{Qmp, QmpError};

pub type Placements = BTreeMap<String, PciPlace>;

/// The ids of the PCI devices Corral gives a VM of `spec` (its command line's, plus
/// those its disks and NICs were hot-plugged as, which carry the same ids).
pub fn pci_device_ids(spec: &VmSpec) -> Vec<String> {
    let mut ids = vec![
        "vga0".to_string(),
        "vser0".to_string(),
        "balloon0".to_string(),
    ];
    ids.extend(hotplug_ports(spec.machine));
    ids.extend(spec.disks.iter().map(|d| format!("{}-dev", d.id)));
    ids.extend(spec.nics.iter().map(|n| nic_device_id(&n.mac)));
    ids
}

/// Reads each device's bus and address (`qom-get` of `parent_bus` and `addr`); devices
/// that do not exist (or are not PCI) are left out.
pub async fn read(qmp: &Qmp, ids: &[String]) -> Result<Placements, QmpError> {
    let mut out = Placements::new();
    for id in ids {
        let path = format!("/machine/peripheral/{id}");
        let get = |property: &str| {
            qmp.execute_raw("qom-get", Some(json!({"path": path, "property": property})))
        };
        let (Ok(bus), Ok(addr)) = (get("parent_bus").await, get("addr").await) else {
            continue;
        };
        if let Some(place) = place_of(&bus, &addr) {
            out.insert(id.clone(), place);
        }
    }
    Ok(out)
}

/// `"/machine/peripheral/hp0/hp0"` and devfn `8` → bus `hp0`, slot 1, function 0.
fn place_of(bus: &Value, addr: &Value) -> Option<PciPlace> {
    let bus = bus.as_str()?.rsplit('/').next()?.to_string();
    let devfn = addr.as_u64()?;
    if bus.is_empty() || devfn > 0xff {
        return None;
    }
    Some(PciPlace {
        bus,
        slot: (devfn >> 3) as u8,
        function: (devfn & 7) as u8,
    })
}

/// `,bus=hp0,addr=0x1.0` for a device with a place, nothing for one without.
pub fn suffix(placements: Option<&Placements>, id: &str) -> String {
    match placements.and_then(|p| p.get(id)) {
        Some(p) => format!(",bus={},addr={:#x}.{}", p.bus, p.slot, p.function),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_read_from_qom() {
        let p = place_of(&json!("/machine/peripheral/hp0/hp0"), &json!(0)).expect("place");
        assert_eq!((p.bus.as_str(), p.slot, p.function), ("hp0", 0, 0));
        let p = place_of(&json!("/machine/i440fx/pci.0"), &json!(0x2a)).expect("place");
        assert_eq!((p.bus.as_str(), p.slot, p.function), ("pci.0", 5, 2));
        assert!(place_of(&json!(null), &json!(3)).is_none());
    }

    #[test]
    fn a_placed_device_gets_bus_and_address() {
        let mut all = Placements::new();
        all.insert(
            "disk1-dev".into(),
            PciPlace {
                bus: "hp2".into(),
                slot: 0,
                function: 0,
            },
        );
        assert_eq!(suffix(Some(&all), "disk1-dev"), ",bus=hp2,addr=0x0.0");
        assert_eq!(suffix(Some(&all), "disk0-dev"), "");
        assert_eq!(suffix(None, "disk1-dev"), "");
    }
}
