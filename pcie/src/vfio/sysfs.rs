//! What sysfs says about a PCI function before vfio is touched: that it exists, is an NVMe
//! controller, is bound to vfio-pci and is alone in its IOMMU group. Every refusal names the
//! fix. The sysfs root is a parameter so the checks are tested against a made-up tree.

use super::VfioError;
use std::path::{Path, PathBuf};

/// PCI class code of an NVM Express controller (mass storage, non-volatile memory, NVMe).
pub const NVME_CLASS: u32 = 0x01_08_02;

/// A PCI address in its canonical form, `dddd:bb:dd.f`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bdf(String);

impl Bdf {
    /// Parses `dddd:bb:dd.f` or `bb:dd.f` (domain 0), hex digits of either case.
    pub fn parse(s: &str) -> Result<Bdf, VfioError> {
        let bad = || VfioError::BadAddress(s.to_string());
        let full = if s.matches(':').count() == 1 {
            format!("0000:{s}")
        } else {
            s.to_string()
        };
        let (dom, rest) = full.split_once(':').ok_or_else(bad)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
        let hex = |t: &str, n: usize, max: u32| {
            t.len() == n
                && t.bytes().all(|b| b.is_ascii_hexdigit())
                && u32::from_str_radix(t, 16).is_ok_and(|v| v <= max)
        };
        if !(hex(dom, 4, 0xffff) && hex(bus, 2, 0xff) && hex(dev, 2, 0x1f) && hex(func, 1, 7)) {
            return Err(bad());
        }
        Ok(Bdf(full.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Bdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sysfs tree (normally `/sys`).
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs::new("/sys")
    }
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    fn device_dir(&self, bdf: &Bdf) -> PathBuf {
        self.root.join("bus/pci/devices").join(bdf.as_str())
    }

    /// Checks that `bdf` can be driven through vfio and returns its IOMMU group number.
    pub fn check_nvme_for_vfio(&self, bdf: &Bdf) -> Result<u32, VfioError> {
        let dir = self.device_dir(bdf);
        if !dir.exists() {
            return Err(VfioError::NoDevice(bdf.to_string()));
        }
        let class = read_hex(&dir.join("class"))
            .ok_or_else(|| VfioError::Sysfs(format!("{}: unreadable class", bdf)))?;
        if class != NVME_CLASS {
            return Err(VfioError::NotNvme(bdf.to_string(), class));
        }
        let driver = link_name(&dir.join("driver"));
        if driver.as_deref() != Some("vfio-pci") {
            return Err(VfioError::NotBound(
                bdf.to_string(),
                driver.unwrap_or_else(|| "no driver".into()),
            ));
        }
        let group: u32 = link_name(&dir.join("iommu_group"))
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| VfioError::NoIommuGroup(bdf.to_string()))?;
        let members = self
            .root
            .join(format!("kernel/iommu_groups/{group}/devices"));
        let others: Vec<String> = std::fs::read_dir(&members)
            .map_err(|e| VfioError::Sysfs(format!("{}: {e}", members.display())))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != bdf.as_str())
            .collect();
        if !others.is_empty() {
            return Err(VfioError::SharedGroup(bdf.to_string(), group, others));
        }
        Ok(group)
    }
}

fn read_hex(p: &Path) -> Option<u32> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    u32::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

fn link_name(p: &Path) -> Option<String> {
    let t = std::fs::read_link(p).ok()?;
    Some(t.file_name()?.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    fn device(root: &Path, bdf: &str, class: &str, driver: Option<&str>, group: u32) {
        let d = root.join("bus/pci/devices").join(bdf);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("class"), format!("{class}\n")).unwrap();
        if let Some(drv) = driver {
            let dd = root.join("bus/pci/drivers").join(drv);
            std::fs::create_dir_all(&dd).unwrap();
            symlink(&dd, d.join("driver")).unwrap();
        }
        let g = root.join(format!("kernel/iommu_groups/{group}"));
        std::fs::create_dir_all(g.join("devices")).unwrap();
        let _ = symlink(&g, d.join("iommu_group"));
        symlink(&d, g.join("devices").join(bdf)).unwrap();
    }

    #[test]
    fn addresses_parse_to_the_canonical_form() {
        assert_eq!(Bdf::parse("01:00.0").unwrap().as_str(), "0000:01:00.0");
        assert_eq!(Bdf::parse("0000:0A:1f.7").unwrap().as_str(), "0000:0a:1f.7");
        for bad in [
            "",
            "1:0.0",
            "0000:01:00",
            "0000:01:20.0",
            "0000:01:00.8",
            "zz:00.0",
            "0000:01:00.0x",
        ] {
            assert!(Bdf::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_a_lone_nvme_controller_bound_to_vfio_pci_passes() {
        let t = tempfile::tempdir().unwrap();
        let s = Sysfs::new(t.path());
        device(t.path(), "0000:01:00.0", "0x010802", Some("vfio-pci"), 7);
        device(t.path(), "0000:02:00.0", "0x020000", Some("vfio-pci"), 8);
        device(t.path(), "0000:03:00.0", "0x010802", Some("nvme"), 9);
        device(t.path(), "0000:04:00.0", "0x010802", None, 10);
        device(t.path(), "0000:05:00.0", "0x010802", Some("vfio-pci"), 11);
        device(t.path(), "0000:05:00.1", "0x010802", Some("vfio-pci"), 11);
        let b = |s: &str| Bdf::parse(s).unwrap();
        assert_eq!(s.check_nvme_for_vfio(&b("01:00.0")).unwrap(), 7);
        let e = s
            .check_nvme_for_vfio(&b("02:00.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an NVMe controller"), "{e}");
        let e = s
            .check_nvme_for_vfio(&b("03:00.0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bound to nvme") && e.contains("setup.sh --bind"),
            "{e}"
        );
        let e = s
            .check_nvme_for_vfio(&b("04:00.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no driver"), "{e}");
        let e = s
            .check_nvme_for_vfio(&b("05:00.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("0000:05:00.1"), "{e}");
        let e = s
            .check_nvme_for_vfio(&b("06:00.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no PCI device"), "{e}");
    }
}
