//! What crosses the device API: a caller's device tensors (address, shape, element type) and
//! the caller's stream, as raw handles so that any framework's memory and streams can be passed.

use std::marker::PhantomData;

use cudarc::driver::sys::{CUdeviceptr, CUstream};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr};
use ep_codegen::{Dtype, IndexDtype};

use crate::Error;

/// Element types of the tensors the LL API takes and returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// FP8 e4m3 codes.
    Fp8E4m3,
    /// f32.
    F32,
    /// i32.
    I32,
    /// i64.
    I64,
    /// bool, one byte (0 or 1): the layout's `is_token_in_rank`.
    Bool,
}

impl Elem {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Elem::Fp8E4m3 | Elem::Bool => 1,
            Elem::Bf16 | Elem::F16 => 2,
            Elem::F32 | Elem::I32 => 4,
            Elem::I64 => 8,
        }
    }

    /// The element type of a spec dtype.
    pub fn of(dtype: Dtype) -> Elem {
        match dtype {
            Dtype::Bf16 => Elem::Bf16,
            Dtype::Fp16 => Elem::F16,
            Dtype::Fp8E4m3 => Elem::Fp8E4m3,
        }
    }

    /// The element type of a spec's expert ids.
    pub fn of_index(dtype: IndexDtype) -> Elem {
        match dtype {
            IndexDtype::I32 => Elem::I32,
            IndexDtype::I64 => Elem::I64,
        }
    }
}

/// A device tensor of up to three dimensions, row-major and contiguous: the caller's memory, or a
/// view into a window. It does not own the memory: whoever made it keeps the memory alive (and,
/// for inputs, unchanged) until the kernels that use it have run on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tensor {
    ptr: CUdeviceptr,
    dims: [usize; 3],
    ndim: usize,
    elem: Elem,
}

impl Tensor {
    /// A tensor at a raw device address, as a framework hands it over (PyTorch's
    /// `data_ptr()`, a DLPack or `__cuda_array_interface__` address).
    ///
    /// # Safety
    /// `ptr` must be device memory of the GPU it is used on (or 0 when the shape is empty),
    /// holding `shape.iter().product()` contiguous elements of `elem`, aligned to 16 bytes, that
    /// stay allocated until every kernel given this tensor has completed.
    pub unsafe fn from_raw(ptr: CUdeviceptr, shape: &[usize], elem: Elem) -> Result<Tensor, Error> {
        if shape.len() > 3 {
            return Err(Error::Input(format!(
                "tensors have at most 3 dimensions, got shape {shape:?}"
            )));
        }
        let mut dims = [1; 3];
        dims[..shape.len()].copy_from_slice(shape);
        let t = Tensor {
            ptr,
            dims,
            ndim: shape.len(),
            elem,
        };
        if t.elements() > 0 && (ptr == 0 || !ptr.is_multiple_of(16)) {
            return Err(Error::Input(format!(
                "tensor address {ptr:#x} is null or not 16-byte aligned (shape {shape:?})"
            )));
        }
        Ok(t)
    }

    /// A view of a cudarc slice with a shape covering at most its length; the slice must outlive
    /// the kernels given the view (freeing it on the same stream is ordered after them).
    pub fn of_slice<T: DeviceRepr>(
        slice: &CudaSlice<T>,
        stream: &CudaStream,
        shape: &[usize],
        elem: Elem,
    ) -> Result<Tensor, Error> {
        let wanted = shape.iter().product::<usize>() * elem.size();
        let have = slice.len() * std::mem::size_of::<T>();
        if wanted > have {
            return Err(Error::Input(format!(
                "a {shape:?} {elem:?} view needs {wanted} bytes; the slice holds {have}"
            )));
        }
        let (ptr, _sync) = slice.device_ptr(stream);
        // SAFETY: the slice is device memory of at least `wanted` bytes (checked above), and
        // cudarc allocations are 256-byte aligned.
        unsafe { Tensor::from_raw(ptr, shape, elem) }
    }

    /// The device address.
    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.dims[..self.ndim]
    }

    /// The element type.
    pub fn elem(&self) -> Elem {
        self.elem
    }

    /// Elements in all.
    pub fn elements(&self) -> usize {
        self.shape().iter().product()
    }

    /// Bytes in all.
    pub fn bytes(&self) -> usize {
        self.elements() * self.elem.size()
    }

    /// Checks the shape and element type of rank `rank`'s argument `what` (allocation-free
    /// unless it fails: this runs on the hot path).
    pub(crate) fn expect(
        &self,
        rank: usize,
        what: &str,
        shape: &[usize],
        elem: Elem,
    ) -> Result<(), Error> {
        if self.shape() != shape || self.elem != elem {
            return Err(Error::Input(format!(
                "rank {rank}: {what}: expected {elem:?} {shape:?}, got {:?} {:?}",
                self.elem,
                self.shape()
            )));
        }
        Ok(())
    }

    /// A view `shape` of `elem` at `ptr` inside memory epc owns (windows, call state).
    pub(crate) fn view(ptr: CUdeviceptr, shape: &[usize], elem: Elem) -> Tensor {
        let mut dims = [1; 3];
        dims[..shape.len()].copy_from_slice(shape);
        Tensor {
            ptr,
            dims,
            ndim: shape.len(),
            elem,
        }
    }
}

/// The stream a call's kernels are launched on: the caller's, as a raw handle.
#[derive(Debug, Clone, Copy)]
pub struct Stream<'a> {
    raw: CUstream,
    _life: PhantomData<&'a ()>,
}

impl Stream<'_> {
    /// A raw `CUstream` / `cudaStream_t` (PyTorch's `torch.cuda.current_stream().cuda_stream`).
    ///
    /// # Safety
    /// The stream must belong to the context of the GPU the group runs on (the device's
    /// primary context, as the CUDA runtime and PyTorch use) and outlive every launch on it.
    pub unsafe fn from_raw(raw: CUstream) -> Stream<'static> {
        Stream {
            raw,
            _life: PhantomData,
        }
    }

    /// The raw handle.
    pub fn raw(&self) -> CUstream {
        self.raw
    }
}

impl<'a> From<&'a CudaStream> for Stream<'a> {
    fn from(stream: &'a CudaStream) -> Stream<'a> {
        Stream {
            raw: stream.cu_stream(),
            _life: PhantomData,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_tensors_are_checked() {
        // SAFETY: none of these tensors is used on a device; only the checks run.
        unsafe {
            assert!(Tensor::from_raw(0, &[4, 7168], Elem::Bf16).is_err(), "null");
            assert!(
                Tensor::from_raw(0x1008, &[4, 8], Elem::I64).is_err(),
                "unaligned"
            );
            assert!(
                Tensor::from_raw(0x1000, &[1, 2, 3, 4], Elem::F32).is_err(),
                "4-D"
            );
            let empty = Tensor::from_raw(0, &[0, 7168], Elem::Bf16).unwrap();
            assert_eq!((empty.elements(), empty.bytes()), (0, 0));
            let t = Tensor::from_raw(0x1000, &[3, 8], Elem::I64).unwrap();
            assert_eq!((t.shape(), t.bytes()), (&[3usize, 8][..], 192));
            assert!(t.expect(0, "topk_idx", &[3, 8], Elem::I64).is_ok());
            let e = t.expect(5, "topk_idx", &[3, 8], Elem::I32).unwrap_err();
            assert!(e.to_string().contains("rank 5: topk_idx"), "{e}");
            assert!(t.expect(0, "topk_idx", &[4, 8], Elem::I64).is_err());
        }
    }
}
