//! Choosing the compute device: burn's `flex` CPU backend by default, WGPU on request.

use burn::prelude::*;
use burn::tensor::DeviceKind;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// A backend the user can ask for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// burn's pure-Rust CPU backend (gemm + rayon).
    #[default]
    Flex,
    /// burn's WGPU backend: a real GPU when there is one, else a software (CPU) adapter such
    /// as Mesa's lavapipe.
    Wgpu,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "flex" | "cpu" => Ok(Self::Flex),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            other => Err(format!("unknown device `{other}`: use flex or wgpu")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
        })
    }
}

/// No WGPU adapter could be opened.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "no WGPU adapter found (GPU: {gpu}; software: {software}). Install a Vulkan driver: your \
     GPU vendor's, or Mesa's software rasterizer for a machine without a GPU \
     (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`)"
)]
pub struct NoAdapter {
    gpu: String,
    software: String,
}

impl DeviceChoice {
    /// Opens the device. For WGPU, a real GPU is preferred, then a CPU adapter; the adapter is
    /// opened once per process (burn's WGPU runtime registers only once).
    pub fn open(self) -> Result<Device, NoAdapter> {
        static WGPU: OnceLock<Result<Device, NoAdapter>> = OnceLock::new();
        match self {
            Self::Flex => Ok(Device::flex()),
            Self::Wgpu => WGPU.get_or_init(open_wgpu).clone(),
        }
    }
}

/// A real GPU adapter if there is one, else a CPU (software) adapter.
fn open_wgpu() -> Result<Device, NoAdapter> {
    let open = |kind| Device::wgpu_options().device_kind(kind).init();
    match open(DeviceKind::DefaultDevice) {
        Ok(device) => Ok(device),
        Err(gpu) => match open(DeviceKind::Cpu) {
            Ok(device) => {
                tracing::info!("no GPU adapter ({gpu}); using a software adapter");
                Ok(device)
            }
            Err(software) => Err(NoAdapter {
                gpu: gpu.to_string(),
                software: software.to_string(),
            }),
        },
    }
}

/// Pins burn's `Device::default()` to the CPU backend unless `BURN_DEVICE` says otherwise.
///
/// burn creates a few tensors on the default device (a loaded optimizer state, before it moves
/// to its parameters' device), and the default prefers a GPU backend, which opens WGPU, or
/// fails without a Vulkan driver, even in a run on the CPU. Call this first thing in `main`,
/// while the process has one thread.
pub fn pin_default_device_to_cpu() {
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: called at start-up before other threads exist (documented above); tests call
        // it before any backend work, and Rust's own env accesses are serialized by std.
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
}
