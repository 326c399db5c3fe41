//! Device tensors as C passes them: an address, up to three sizes and an element type.

use std::ffi::c_void;

use ep_runtime::{Elem, Tensor};

use crate::error::Failure;

/// Element types of the tensors epc takes and returns.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum epcDataType_t {
    /// bfloat16.
    epcBfloat16 = 0,
    /// IEEE half.
    epcFloat16 = 1,
    /// FP8 e4m3 codes.
    epcFloat8e4m3 = 2,
    /// f32.
    epcFloat32 = 3,
    /// i32.
    epcInt32 = 4,
    /// i64.
    epcInt64 = 5,
    /// bool, one byte (0 or 1).
    epcBool = 6,
}

impl epcDataType_t {
    fn elem(self) -> Elem {
        match self {
            epcDataType_t::epcBfloat16 => Elem::Bf16,
            epcDataType_t::epcFloat16 => Elem::F16,
            epcDataType_t::epcFloat8e4m3 => Elem::Fp8E4m3,
            epcDataType_t::epcFloat32 => Elem::F32,
            epcDataType_t::epcInt32 => Elem::I32,
            epcDataType_t::epcInt64 => Elem::I64,
            epcDataType_t::epcBool => Elem::Bool,
        }
    }

    pub(crate) fn of(elem: Elem) -> epcDataType_t {
        match elem {
            Elem::Bf16 => epcDataType_t::epcBfloat16,
            Elem::F16 => epcDataType_t::epcFloat16,
            Elem::Fp8E4m3 => epcDataType_t::epcFloat8e4m3,
            Elem::F32 => epcDataType_t::epcFloat32,
            Elem::I32 => epcDataType_t::epcInt32,
            Elem::I64 => epcDataType_t::epcInt64,
            Elem::Bool => epcDataType_t::epcBool,
        }
    }
}

/// A contiguous, row-major device tensor of `ndim` (1 to 3) dimensions: caller memory on the
/// group's GPU, 16-byte aligned, kept alive (and, for inputs, unchanged) until the work given it
/// has run on the stream. Sizes past `ndim` are ignored.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct epcTensor_t {
    /// Device address (may be null when a size is 0).
    pub data: *mut c_void,
    /// Dimensions in use, 1 to 3.
    pub ndim: u32,
    /// Sizes of the dimensions, outermost first.
    pub sizes: [u64; 3],
    /// Element type; an out-of-range value is rejected.
    pub dtype: i32,
}

impl epcTensor_t {
    /// The runtime's view of a descriptor: sizes and type checked here, shape against the group
    /// by the runtime.
    pub(crate) fn tensor(&self, what: &str) -> Result<Tensor, Failure> {
        if !(1..=3).contains(&self.ndim) {
            return Err(Failure::argument(format!(
                "{what}: ndim is {}; 1, 2 or 3 expected",
                self.ndim
            )));
        }
        let dtype = match self.dtype {
            0 => epcDataType_t::epcBfloat16,
            1 => epcDataType_t::epcFloat16,
            2 => epcDataType_t::epcFloat8e4m3,
            3 => epcDataType_t::epcFloat32,
            4 => epcDataType_t::epcInt32,
            5 => epcDataType_t::epcInt64,
            6 => epcDataType_t::epcBool,
            other => {
                return Err(Failure::argument(format!(
                    "{what}: dtype {other} is not an epcDataType_t"
                )));
            }
        };
        let mut shape = Vec::with_capacity(3);
        for &size in &self.sizes[..self.ndim as usize] {
            shape.push(usize::try_from(size).map_err(|_| {
                Failure::argument(format!("{what}: size {size} does not fit this machine"))
            })?);
        }
        let elements = shape
            .iter()
            .try_fold(1usize, |n, &s| n.checked_mul(s))
            .ok_or_else(|| Failure::argument(format!("{what}: sizes {shape:?} overflow")))?;
        if self.data.is_null() && elements > 0 {
            return Err(Failure::argument(format!(
                "{what}: data is null for {elements} elements"
            )));
        }
        // SAFETY: the C contract of epcTensor_t: `data` is device memory of the group's GPU
        // holding the described elements, alive until the work given it has run. The runtime
        // checks the shape and alignment against what the kernels index.
        unsafe { Tensor::from_raw(self.data as u64, &shape, dtype.elem()) }.map_err(Failure::from)
    }

    /// No tensor (`ndim` 0), for a view a spec does not have.
    pub(crate) fn none() -> epcTensor_t {
        epcTensor_t {
            data: std::ptr::null_mut(),
            ndim: 0,
            sizes: [0; 3],
            dtype: 0,
        }
    }

    /// A descriptor of a runtime view (a received buffer).
    pub(crate) fn of(view: &Tensor) -> epcTensor_t {
        let mut sizes = [0u64; 3];
        for (s, &v) in sizes.iter_mut().zip(view.shape()) {
            *s = v as u64;
        }
        epcTensor_t {
            data: view.ptr() as *mut c_void,
            ndim: view.shape().len() as u32,
            sizes,
            dtype: epcDataType_t::of(view.elem()) as i32,
        }
    }
}

/// `n` descriptors at `ptr`, each converted; a null array is an error unless `n` is 0.
pub(crate) fn tensors(ptr: *const epcTensor_t, n: u32, what: &str) -> Result<Vec<Tensor>, Failure> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(Failure::argument(format!("{what} is null")));
    }
    // SAFETY: the caller passes `n` descriptors at `ptr` (the documented contract of every
    // entry point taking an array of tensors); null was rejected above.
    let descriptors = unsafe { std::slice::from_raw_parts(ptr, n as usize) };
    descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| d.tensor(&format!("{what}[{i}]")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(data: usize, ndim: u32, sizes: [u64; 3], dtype: i32) -> epcTensor_t {
        epcTensor_t {
            data: data as *mut c_void,
            ndim,
            sizes,
            dtype,
        }
    }

    #[test]
    fn descriptors_are_checked_before_the_runtime_sees_them() {
        let bad = [
            (descriptor(256, 0, [1, 1, 1], 0), "ndim is 0"),
            (descriptor(256, 4, [1, 1, 1], 0), "ndim is 4"),
            (descriptor(256, 2, [4, 8, 0], 9), "dtype 9"),
            (descriptor(256, 2, [4, 8, 0], -1), "dtype -1"),
            (
                descriptor(0, 2, [4, 8, 0], 0),
                "data is null for 32 elements",
            ),
            (descriptor(256, 3, [u64::MAX, 2, 2], 0), "overflow"),
        ];
        for (d, want) in bad {
            let message = match d.tensor("x") {
                Err(f) => f.message().to_owned(),
                Ok(t) => panic!("{d:?} accepted as {t:?}"),
            };
            assert!(message.contains(want), "{message}");
        }
        // An empty tensor may be null; a good one keeps its shape and type.
        assert!(descriptor(0, 2, [0, 8, 0], 0).tensor("x").is_ok());
        let t = descriptor(4096, 2, [4, 8, 99], 3).tensor("w").unwrap();
        assert_eq!(t.shape(), &[4, 8]);
        assert_eq!(t.elem(), Elem::F32);
        let back = epcTensor_t::of(&t);
        assert_eq!((back.ndim, back.sizes, back.dtype), (2, [4, 8, 0], 3));
    }

    #[test]
    fn arrays_of_descriptors_are_checked() {
        assert!(tensors(std::ptr::null(), 0, "x").unwrap().is_empty());
        let err = tensors(std::ptr::null(), 2, "x").err().unwrap();
        assert!(err.message().contains("x is null"));
        let ds = [
            descriptor(256, 1, [4, 0, 0], 4),
            descriptor(256, 1, [4, 0, 0], 7),
        ];
        let err = tensors(ds.as_ptr(), 2, "x").err().unwrap();
        assert!(err.message().contains("x[1]: dtype 7"), "{}", err.message());
    }
}
