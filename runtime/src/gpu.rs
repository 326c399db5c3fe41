//! One CUDA device: context, stream, architecture.

use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUresult};
use cudarc::driver::{CudaContext, CudaStream, DriverError, result};

use crate::error::CudaContextExt;
use crate::{Arch, Error};

/// An opened GPU with the stream epc's kernels run on.
#[derive(Debug, Clone)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: Arch,
    name: String,
    sms: u32,
    l2_bytes: usize,
    dependent_launch: bool,
}

impl Gpu {
    /// Opens device `ordinal`. Fails with [`Error::DriverNotFound`] on machines without the
    /// NVIDIA driver and [`Error::NoGpu`] when the driver sees no such device, instead of
    /// letting the driver bindings panic.
    pub fn open(ordinal: usize) -> Result<Gpu, Error> {
        device_present(ordinal)?;
        let ctx = CudaContext::new(ordinal).cuda("creating a context")?;
        let (major, minor) = ctx
            .compute_capability()
            .cuda("reading the compute capability")?;
        let name = ctx.name().cuda("reading the device name")?;
        let sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .cuda("reading the SM count")?;
        let l2_bytes = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .cuda("reading the L2 cache size")?;
        // SAFETY: all of epc's work on this context is ordered on the one stream below, so the
        // cross-stream event tracking this turns off has nothing to order; without it, launches
        // can be captured into CUDA graphs.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().cuda("creating a stream")?;
        let arch = Arch::from_capability(major, minor);
        // griddepcontrol needs sm_90; stream capture keeps programmatic dependencies in graphs
        // from CUDA 12.3 on.
        let dependent_launch =
            arch.number >= 90 && Gpu::driver_version().is_ok_and(|v| v >= (12, 3));
        Ok(Gpu {
            ctx,
            stream,
            arch,
            name,
            sms: sms.max(0) as u32,
            l2_bytes: l2_bytes.max(0) as usize,
            dependent_launch,
        })
    }

    /// GPUs the driver sees (0 on a machine without the driver or a GPU).
    pub fn count() -> usize {
        if probe_driver().is_err() {
            return 0;
        }
        CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream kernels are launched on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `sm_XX` of the device.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Marketing name (`NVIDIA H100 80GB HBM3`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Streaming multiprocessors.
    pub fn sms(&self) -> u32 {
        self.sms
    }

    /// Whether kernels may be launched as programmatic dependent launches here (sm_90 and
    /// later, with a driver whose stream capture keeps them in graphs).
    pub fn dependent_launch(&self) -> bool {
        self.dependent_launch
    }

    /// Bytes of L2 cache (50 MiB on the H100).
    pub fn l2_bytes(&self) -> usize {
        self.l2_bytes
    }
}

/// The driver and its devices, read without creating a context ([`Gpu::probe`]).
#[derive(Debug, Clone)]
pub struct DriverInfo {
    /// The CUDA version the driver supports (`cuDriverGetVersion`): (13, 0) for 13000.
    pub cuda_version: (i32, i32),
    /// Every device the driver sees (empty when it sees none).
    pub devices: Vec<DeviceInfo>,
}

/// One device as the driver describes it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Its ordinal.
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// `sm_XX`.
    pub arch: Arch,
    /// Total memory in bytes.
    pub memory_bytes: u64,
}

impl Gpu {
    /// The CUDA version the driver supports (`cuDriverGetVersion`, no device enumerated):
    /// (13, 0) for 13000.
    pub fn driver_version() -> Result<(i32, i32), Error> {
        probe_driver()?;
        let mut version = 0;
        // SAFETY: libcuda opens (checked above, under the names cudarc tries), and `version` is
        // valid for writes; cuDriverGetVersion needs no cuInit.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }
            .result()
            .cuda("cuDriverGetVersion")?;
        Ok((version / 1000, version % 1000 / 10))
    }

    /// The driver's version and devices. Fails with [`Error::DriverNotFound`] on a machine
    /// without the NVIDIA driver; a driver that sees no device gives an empty list.
    pub fn probe() -> Result<DriverInfo, Error> {
        let cuda_version = Gpu::driver_version()?;
        let count = match result::init().and_then(|()| result::device::get_count()) {
            Ok(n) => n.max(0),
            Err(DriverError(CUresult::CUDA_ERROR_NO_DEVICE)) => 0,
            Err(e) => return Err(e).cuda("cuInit / cuDeviceGetCount"),
        };
        let mut devices = Vec::new();
        for ordinal in 0..count {
            let dev = result::device::get(ordinal).cuda("cuDeviceGet")?;
            let attr = |a| {
                // SAFETY: `dev` came from cuDeviceGet.
                unsafe { result::device::get_attribute(dev, a) }.cuda("cuDeviceGetAttribute")
            };
            let major = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
            let minor = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
            // SAFETY: `dev` came from cuDeviceGet.
            let memory = unsafe { result::device::total_mem(dev) }.cuda("cuDeviceTotalMem")?;
            devices.push(DeviceInfo {
                ordinal: ordinal as usize,
                name: result::device::get_name(dev).cuda("cuDeviceGetName")?,
                arch: Arch::from_capability(major, minor),
                memory_bytes: memory as u64,
            });
        }
        Ok(DriverInfo {
            cuda_version,
            devices,
        })
    }
}

/// Checks that libcuda can be opened, under the names cudarc will try.
fn probe_driver() -> Result<(), Error> {
    let mut errors = Vec::new();
    for name in ["libcuda.so.1", "libcuda.so"] {
        // SAFETY: opening libcuda runs only its initializers; the handle is dropped at once and
        // no symbol is taken from it.
        match unsafe { libloading::Library::new(name) } {
            Ok(_) => return Ok(()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(Error::DriverNotFound {
        detail: errors.join("; "),
    })
}

/// Checks that the driver loads and sees device `ordinal`: [`Error::DriverNotFound`] or
/// [`Error::NoGpu`] otherwise, instead of letting the driver bindings panic.
fn device_present(ordinal: usize) -> Result<(), Error> {
    probe_driver()?;
    let count = match CudaContext::device_count() {
        Ok(n) => n,
        // cuInit reports a machine with the driver but no usable GPU this way.
        Err(DriverError(CUresult::CUDA_ERROR_NO_DEVICE)) => 0,
        Err(e) => return Err(e).cuda("cuInit / cuDeviceGetCount"),
    };
    if count <= 0 || ordinal >= count as usize {
        return Err(Error::NoGpu { count, ordinal });
    }
    Ok(())
}

impl Gpu {
    /// Total memory of device `ordinal` in bytes, read without creating a context (so it is
    /// cheap enough for `epc check`). Fails like [`Gpu::open`] where there is no driver or no
    /// such device.
    pub fn total_memory(ordinal: usize) -> Result<u64, Error> {
        device_present(ordinal)?;
        let dev = cudarc::driver::result::device::get(ordinal as i32).cuda("cuDeviceGet")?;
        // SAFETY: `dev` came from cuDeviceGet for a device the driver reported.
        let bytes = unsafe { cudarc::driver::result::device::total_mem(dev) }
            .cuda("reading the device's memory size")?;
        Ok(bytes as u64)
    }
}
