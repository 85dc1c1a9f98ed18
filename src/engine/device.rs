//! Where the built-in engine runs: `auto`, `cpu`, `cuda` or `cuda:N`, chosen at run time.
//!
//! The GPU path is always compiled in; CUDA's libraries are loaded only when asked for. Every
//! probe checks that a library can be opened before calling into it (cudarc panics on a missing
//! library), so a machine without a driver gets an error or, for `auto`, the CPU and one line
//! saying why.

use std::fmt;

/// A device as written in a suite (`device`) or on the command line (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The first CUDA GPU if one is usable, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA device N (`cuda` is `cuda:0`).
    Cuda(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?}; expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"")]
    Parse(String),
    /// `cuda`/`cuda:N` was asked for and cannot be had.
    #[error("device {device}: {reason}")]
    Unavailable { device: String, reason: String },
    /// A CUDA call failed while running.
    #[error("{device}: {what}: {detail}")]
    Cuda { device: String, what: String, detail: String },
}

impl std::str::FromStr for Device {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Device, DeviceError> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.parse().map(Device::Cuda).map_err(|_| DeviceError::Parse(s.into())),
                _ => Err(DeviceError::Parse(s.into())),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A usable CUDA GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// compute capability (major, minor)
    pub capability: (i32, i32),
    pub memory: usize,
}

impl GpuInfo {
    /// `cuda:N (name)`, as errors and notes name the GPU.
    pub fn label(&self) -> String {
        format!("cuda:{} ({})", self.ordinal, self.name)
    }
}

/// Where a model will run, and for `auto` on the CPU, why the GPU was not used.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    Cpu { note: Option<String> },
    Cuda(GpuInfo),
}

/// Decides from a probe's answer: `cuda:N` must get its GPU, `auto` falls back to the CPU.
pub fn choose(device: Device, probe: impl FnOnce(usize) -> Result<GpuInfo, String>) -> Result<Choice, DeviceError> {
    match device {
        Device::Cpu => Ok(Choice::Cpu { note: None }),
        Device::Cuda(n) => probe(n).map(Choice::Cuda).map_err(|reason| DeviceError::Unavailable { device: device.to_string(), reason }),
        Device::Auto => Ok(match probe(0) {
            Ok(g) => Choice::Cuda(g),
            Err(reason) => Choice::Cpu { note: Some(format!("device auto: running on the CPU ({reason})")) },
        }),
    }
}

/// Whether a shared library loads, without cudarc's panic when it does not.
fn loads(present: unsafe fn() -> bool) -> bool {
    // SAFETY: the probes only try `dlopen` on fixed library names.
    std::panic::catch_unwind(|| unsafe { present() }).unwrap_or(false)
}

/// Finds CUDA device `ordinal` and the libraries the engine needs (driver, NVRTC, cuBLAS).
pub fn probe_cuda(ordinal: usize) -> Result<GpuInfo, String> {
    use cudarc::driver::{result, sys};
    if !loads(sys::is_culib_present) {
        return Err("no CUDA driver found (libcuda.so cannot be loaded)".into());
    }
    let info = std::panic::catch_unwind(|| -> Result<GpuInfo, String> {
        result::init().map_err(|e| format!("the CUDA driver does not start: {e}"))?;
        let count = result::device::get_count().map_err(|e| format!("cannot count CUDA devices: {e}"))?;
        if count <= 0 {
            return Err("the CUDA driver reports no GPU".into());
        }
        if ordinal >= count as usize {
            return Err(format!("there are {count} CUDA device(s) (cuda:0 to cuda:{})", count - 1));
        }
        let dev = result::device::get(ordinal as i32).map_err(|e| format!("cannot open GPU {ordinal}: {e}"))?;
        let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown GPU".into());
        // SAFETY: `dev` came from `device::get`.
        let attr = |a| unsafe { result::device::get_attribute(dev, a) }.unwrap_or(0);
        let capability = (attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR), attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR));
        // SAFETY: as above.
        let memory = unsafe { result::device::total_mem(dev) }.unwrap_or(0);
        Ok(GpuInfo { ordinal, name, capability, memory })
    })
    .unwrap_or_else(|_| Err("the CUDA driver lacks a function this build needs (driver too old?)".into()))?;
    if info.capability < (7, 5) {
        return Err(format!("{} has compute capability {}.{}; the engine needs 7.5 or newer", info.name, info.capability.0, info.capability.1));
    }
    if !loads(cudarc::nvrtc::sys::is_culib_present) {
        return Err(format!("{} found, but NVRTC (libnvrtc.so.13 or .12) cannot be loaded: add the CUDA toolkit's lib directory to LD_LIBRARY_PATH", info.name));
    }
    if !loads(cudarc::cublas::sys::is_culib_present) {
        return Err(format!("{} found, but cuBLAS (libcublas.so.13 or .12) cannot be loaded: add the CUDA toolkit's lib directory to LD_LIBRARY_PATH", info.name));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_strings() {
        assert_eq!("auto".parse::<Device>().unwrap(), Device::Auto);
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        for bad in ["gpu", "cuda:x", "cuda:", "cuda:-1", "CUDA", "cuda:1:2", " cpu", "cuda:99999999999999999999"] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(matches!(e, DeviceError::Parse(ref s) if s == bad), "{bad}: {e}");
            assert!(e.to_string().contains("expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""));
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        assert_eq!("cuda".parse::<Device>().unwrap().to_string(), "cuda:0");
    }

    fn gpu(n: usize) -> GpuInfo {
        GpuInfo { ordinal: n, name: "Test GPU".into(), capability: (9, 0), memory: 1 << 30 }
    }

    #[test]
    fn auto_falls_back_with_a_reason_and_cuda_errors() {
        let none = |_: usize| Err::<GpuInfo, String>("no CUDA driver found".into());
        assert_eq!(choose(Device::Auto, none).unwrap(), Choice::Cpu { note: Some("device auto: running on the CPU (no CUDA driver found)".into()) });
        let e = choose(Device::Cuda(1), none).unwrap_err();
        assert_eq!(e.to_string(), "device cuda:1: no CUDA driver found");
        assert_eq!(choose(Device::Cpu, |_| Ok(gpu(0))).unwrap(), Choice::Cpu { note: None });
        assert_eq!(choose(Device::Auto, |n| Ok(gpu(n))).unwrap(), Choice::Cuda(gpu(0)));
        assert_eq!(choose(Device::Cuda(2), |n| Ok(gpu(n))).unwrap(), Choice::Cuda(gpu(2)));
    }

    /// The real probe on this machine: with no driver it must say so (and not panic); with one,
    /// the device it finds is usable.
    #[test]
    fn the_real_probe_never_panics() {
        match probe_cuda(0) {
            Ok(g) => assert!(g.capability >= (7, 5) && !g.name.is_empty()),
            Err(reason) => {
                eprintln!("probe_cuda(0): {reason}");
                assert!(!reason.is_empty());
                let e = choose(Device::Cuda(0), probe_cuda).unwrap_err();
                assert!(e.to_string().starts_with("device cuda:0: "), "{e}");
                assert!(matches!(choose(Device::Auto, probe_cuda).unwrap(), Choice::Cpu { note: Some(_) }));
            }
        }
        let far = probe_cuda(4096).unwrap_err();
        assert!(!far.is_empty());
    }
}
