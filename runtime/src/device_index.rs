//! `topk_idx` on the device, in the spec's index type.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, PushKernelArg};
use ep_codegen::IndexDtype;

use crate::Error;
use crate::error::CudaContextExt;
use crate::ll::{Elem, Tensor};

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

    /// Overwrites the first `ids.len()` ids in place, so captured graphs keep seeing this
    /// buffer.
    pub fn write(&mut self, stream: &Arc<CudaStream>, ids: &[i64]) -> Result<(), Error> {
        let n = ids.len();
        if n > self.len() {
            return Err(Error::Input(format!(
                "{n} expert ids for a buffer of {}",
                self.len()
            )));
        }
        if n == 0 {
            return Ok(());
        }
        match self {
            DeviceIndex::I64(s) => stream
                .memcpy_htod(ids, &mut s.slice_mut(..n))
                .cuda("uploading topk_idx"),
            DeviceIndex::I32(s) => {
                let narrow: Vec<i32> = ids
                    .iter()
                    .map(|&v| v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
                    .collect();
                stream
                    .memcpy_htod(&narrow, &mut s.slice_mut(..n))
                    .cuda("uploading topk_idx")
            }
        }
    }

    /// Ids the buffer holds.
    pub fn len(&self) -> usize {
        match self {
            DeviceIndex::I32(s) => s.len(),
            DeviceIndex::I64(s) => s.len(),
        }
    }

    /// A `shape` view of the ids, for the device API.
    pub fn view(&self, stream: &CudaStream, shape: &[usize]) -> Result<Tensor, Error> {
        match self {
            DeviceIndex::I32(s) => Tensor::of_slice(s, stream, shape, Elem::I32),
            DeviceIndex::I64(s) => Tensor::of_slice(s, stream, shape, Elem::I64),
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
