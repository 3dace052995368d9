use super::*;

/// Shaped like what VMware's ovftool writes (default namespace for OVF, `ovf:` on
/// attributes, `rasd:`/`vssd:` for hardware, plus vendor elements to ignore).
const VMWARE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-1" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="web-disk1.vmdk" ovf:id="file1" ovf:size="68096"/>
    <File ovf:href="web-disk2.vmdk" ovf:id="file2" ovf:size="68096"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="0"/>
    <Disk ovf:capacity="512" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk2" ovf:fileRef="file2" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="web01">
    <Info>A virtual machine</Info>
    <Name>web01</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian10_64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>2048MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>8</rasd:InstanceID>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="bios"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#;

/// Shaped like VirtualBox's export: `ovf:` everywhere, `MegaBytes`, OVF 2.0 items
/// interleaved with other elements.
const VIRTUALBOX: &str = r#"<?xml version="1.0"?>
<ovf:Envelope ovf:version="2.0" xml:lang="en-US" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <ovf:References>
    <ovf:File ovf:id="file1" ovf:href="box-disk001.vmdk"/>
  </ovf:References>
  <ovf:DiskSection>
    <ovf:Info>List of the virtual disks used in the package</ovf:Info>
    <ovf:Disk ovf:capacity="10737418240" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </ovf:DiskSection>
  <ovf:VirtualSystem ovf:id="box">
    <ovf:Info>A virtual machine</ovf:Info>
    <ovf:VirtualHardwareSection>
      <ovf:Info>Virtual hardware requirements for a virtual machine</ovf:Info>
      <ovf:Item>
        <rasd:Caption>1 virtual CPU</rasd:Caption>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </ovf:Item>
      <ovf:StorageItem><sasd:ResourceType xmlns:sasd="x">17</sasd:ResourceType></ovf:StorageItem>
      <ovf:Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1024</rasd:VirtualQuantity>
      </ovf:Item>
    </ovf:VirtualHardwareSection>
    <vbox:Machine ovf:required="false" uuid="{x}" name="box"><ovf:Info>stuff</ovf:Info></vbox:Machine>
  </ovf:VirtualSystem>
</ovf:Envelope>"#;

#[test]
fn vmware_descriptor() {
    let d = parse_ovf(VMWARE).unwrap();
    assert_eq!(d.name.as_deref(), Some("web01"));
    assert_eq!(d.vcpus, Some(2));
    assert_eq!(d.memory_mib, Some(2048));
    assert_eq!(
        d.disks,
        vec![
            OvfDisk {
                href: "web-disk1.vmdk".into(),
                capacity_bytes: Some(16 << 30)
            },
            OvfDisk {
                href: "web-disk2.vmdk".into(),
                capacity_bytes: Some(512 << 20)
            },
        ]
    );
}

#[test]
fn virtualbox_descriptor() {
    let d = parse_ovf(VIRTUALBOX).unwrap();
    // No <Name>: the system's id stands in.
    assert_eq!(d.name.as_deref(), Some("box"));
    assert_eq!(d.vcpus, Some(1));
    assert_eq!(d.memory_mib, Some(1024));
    assert_eq!(d.disks.len(), 1);
    assert_eq!(d.disks[0].capacity_bytes, Some(10 << 30));
}

#[test]
fn units() {
    assert_eq!(unit_bytes("byte"), Some(1));
    assert_eq!(unit_bytes("byte * 2^20"), Some(1 << 20));
    assert_eq!(unit_bytes("byte*2^30"), Some(1 << 30));
    assert_eq!(unit_bytes("byte * 1024"), Some(1024));
    assert_eq!(unit_bytes("byte * 10^6"), Some(1_000_000));
    assert_eq!(unit_bytes("MegaBytes"), Some(1 << 20));
    assert_eq!(unit_bytes("GB"), Some(1 << 30));
    assert_eq!(unit_bytes("hertz * 10^6"), None);
    assert_eq!(unit_bytes("byte * 2^99"), None);
}

#[test]
fn bad_descriptors_are_refused_plainly() {
    let traversal = VMWARE.replace("web-disk1.vmdk", "../../etc/shadow");
    assert!(matches!(
        parse_ovf(&traversal),
        Err(OvfError::UnsafeHref { .. })
    ));
    let absolute = VMWARE.replace("web-disk1.vmdk", "/etc/shadow");
    assert!(matches!(
        parse_ovf(&absolute),
        Err(OvfError::UnsafeHref { .. })
    ));
    let url = VMWARE.replace("web-disk1.vmdk", "http://example.invalid/d.vmdk");
    assert!(matches!(parse_ovf(&url), Err(OvfError::UnsafeHref { .. })));
    let unknown = VMWARE.replace(r#"ovf:fileRef="file2""#, r#"ovf:fileRef="nope""#);
    let err = parse_ovf(&unknown).unwrap_err();
    assert!(err.to_string().contains("'nope'"), "{err}");
    let blank = VMWARE.replace(r#" ovf:fileRef="file2""#, "");
    assert!(matches!(parse_ovf(&blank), Err(OvfError::BlankDisk { .. })));
    let gz = VMWARE.replace(
        r#"ovf:id="file1""#,
        r#"ovf:id="file1" ovf:compression="gzip""#,
    );
    assert!(parse_ovf(&gz).unwrap_err().to_string().contains("gzip"));
    let mem = VMWARE.replace("<rasd:VirtualQuantity>2048", "<rasd:VirtualQuantity>lots");
    assert!(parse_ovf(&mem).unwrap_err().to_string().contains("lots"));
    assert!(matches!(parse_ovf("not xml <"), Err(OvfError::Xml(_))));
}

#[test]
fn property_capacity_is_unknown_not_an_error() {
    let prop = VMWARE.replace(r#"ovf:capacity="16""#, r#"ovf:capacity="${disk.size}""#);
    assert_eq!(parse_ovf(&prop).unwrap().disks[0].capacity_bytes, None);
}
