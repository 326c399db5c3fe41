//! `topk_idx` on the device, in the spec's index type.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, PushKernelArg};
use ep_codegen::IndexDtype;

use crate::Error;
use crate::error::CudaContextExt;

/// Device copy of expert ids as `i32` or `i64`.
#[derive(Debug)]
pub enum DeviceIndex {
    /// 32-bit ids.
    I32(CudaSlice<i32>),
    /// 64-bit ids.
    I64(CudaSlice<i64>),
}

impl DeviceIndex {
    /// Uploads `ids` (at least one element is allocated, so an empty routing is fine).
    /// For `i32`, out-of-range ids are clamped, which keeps them out of range, so they are
    /// still reported as bad ids.
    pub fn upload(
        stream: &Arc<CudaStream>,
        dtype: IndexDtype,
        ids: &[i64],
    ) -> Result<DeviceIndex, Error> {
        let padded: Vec<i64> = if ids.is_empty() {
            vec![-1]
        } else {
            ids.to_vec()
        };
        Ok(match dtype {
            IndexDtype::I64 => {
                DeviceIndex::I64(stream.clone_htod(&padded).cuda("uploading topk_idx")?)
            }
            IndexDtype::I32 => {
                let narrow: Vec<i32> = padded
                    .iter()
                    .map(|&v| v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
                    .collect();
                DeviceIndex::I32(stream.clone_htod(&narrow).cuda("uploading topk_idx")?)
            }
        })
    }

    /// Overwrites the ids in place (same length), so captured graphs keep seeing this buffer.
    pub fn write(&mut self, stream: &Arc<CudaStream>, ids: &[i64]) -> Result<(), Error> {
        match self {
            DeviceIndex::I64(s) => stream.memcpy_htod(ids, s).cuda("uploading topk_idx"),
            DeviceIndex::I32(s) => {
                let narrow: Vec<i32> = ids
                    .iter()
                    .map(|&v| v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
                    .collect();
                stream.memcpy_htod(&narrow, s).cuda("uploading topk_idx")
            }
        }
    }

    /// Pushes the device pointer as a kernel argument.
    pub fn push<'a>(&'a self, launch: &mut cudarc::driver::LaunchArgs<'a>) {
        match self {
            DeviceIndex::I32(s) => launch.arg(s),
            DeviceIndex::I64(s) => launch.arg(s),
        };
    }
}
