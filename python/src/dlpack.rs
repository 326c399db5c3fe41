//! Tensors in and out without a copy: a caller's tensor read through DLPack (`__dlpack__`) or
//! `__cuda_array_interface__`, and the group's views handed out as DLPack capsules that keep the
//! group alive while a tensor views its memory.

use std::ffi::{CStr, c_void};

use ep_runtime::{Elem, Tensor};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict, PyTuple};

use crate::errors::tensor_error;

/// DLPack's device type of CUDA memory.
const DL_CUDA: i32 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
struct DlDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DlDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DlTensor {
    data: *mut c_void,
    device: DlDevice,
    ndim: i32,
    dtype: DlDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DlManagedTensor {
    dl_tensor: DlTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DlManagedTensor)>,
}

const DLTENSOR: &CStr = c"dltensor";
const USED_DLTENSOR: &CStr = c"used_dltensor";

/// DLPack's (code, bits) of an element type; FP8 codes travel as uint8 (the Python layer views
/// them as `torch.float8_e4m3fn`).
fn dl_type(elem: Elem) -> DlDataType {
    let (code, bits) = match elem {
        Elem::Bf16 => (4, 16),
        Elem::F16 => (2, 16),
        Elem::Fp8E4m3 => (1, 8),
        Elem::F32 => (2, 32),
        Elem::I32 => (0, 32),
        Elem::I64 => (0, 64),
        Elem::Bool => (6, 8),
    };
    DlDataType {
        code,
        bits,
        lanes: 1,
    }
}

fn elem_of(t: DlDataType) -> Option<Elem> {
    if t.lanes != 1 {
        return None;
    }
    match (t.code, t.bits) {
        (4, 16) => Some(Elem::Bf16),
        (2, 16) => Some(Elem::F16),
        (1, 8) | (10, 8) => Some(Elem::Fp8E4m3),
        (2, 32) => Some(Elem::F32),
        (0, 32) => Some(Elem::I32),
        (0, 64) => Some(Elem::I64),
        (6, 8) => Some(Elem::Bool),
        _ => None,
    }
}

/// Whether `strides` (elements) describe a row-major contiguous tensor of `shape`.
fn contiguous(shape: &[usize], strides: &[i64]) -> bool {
    let mut expected: i64 = 1;
    for (&size, &stride) in shape.iter().zip(strides).rev() {
        if size > 1 && stride != expected {
            return false;
        }
        expected = expected.saturating_mul(size as i64);
    }
    true
}

/// The caller's tensor `obj` (`what` names it in errors), on CUDA device `device`: through
/// `__dlpack__` when it has one, else `__cuda_array_interface__`. It must be contiguous and have
/// at most three dimensions; the caller keeps it alive until the work given it has run.
pub fn tensor_of(obj: &Bound<'_, PyAny>, what: &str, device: usize) -> PyResult<Tensor> {
    if obj.hasattr("__dlpack__")? {
        from_dlpack(obj, what, device)
    } else if obj.hasattr("__cuda_array_interface__")? {
        from_cuda_array_interface(obj, what)
    } else {
        Err(tensor_error(format!(
            "{what}: a {} is not a device tensor (it has neither __dlpack__ nor __cuda_array_interface__)",
            obj.get_type().name()?
        )))
    }
}

fn from_dlpack(obj: &Bound<'_, PyAny>, what: &str, device: usize) -> PyResult<Tensor> {
    // stream=-1: no synchronization; epc's work goes on the stream the caller names, the one
    // the producer's work is ordered on.
    let kwargs = PyDict::new(obj.py());
    kwargs.set_item("stream", -1)?;
    let capsule = obj.call_method("__dlpack__", (), Some(&kwargs))?;
    let capsule = capsule
        .cast::<PyCapsule>()
        .map_err(|_| tensor_error(format!("{what}: __dlpack__ did not return a capsule")))?;
    let managed = capsule
        .pointer_checked(Some(DLTENSOR))
        .map_err(|_| {
            tensor_error(format!(
                "{what}: __dlpack__ returned a used or unnamed capsule"
            ))
        })?
        .as_ptr()
        .cast::<DlManagedTensor>();
    // SAFETY: a "dltensor" capsule holds a DLManagedTensor, alive until its deleter runs, which
    // only this consumer calls (below, after reading it).
    let read = unsafe { read_dl(&(*managed).dl_tensor, what, device) };
    // Consume the capsule as the protocol asks: rename it, then release the exported view (the
    // caller's object still holds the memory).
    // SAFETY: the capsule is live (held by `capsule`); renaming to "used_dltensor" tells its own
    // destructor not to call the deleter, which we call exactly once.
    unsafe {
        pyo3::ffi::PyCapsule_SetName(capsule.as_ptr(), USED_DLTENSOR.as_ptr());
        if let Some(deleter) = (*managed).deleter {
            deleter(managed);
        }
    }
    read
}

/// The runtime tensor of a DLTensor.
///
/// # Safety
/// `t` must be a live DLTensor (its shape and strides arrays included).
unsafe fn read_dl(t: &DlTensor, what: &str, device: usize) -> PyResult<Tensor> {
    if t.device.device_type != DL_CUDA || t.device.device_id as usize != device {
        return Err(tensor_error(format!(
            "{what}: the tensor is on {}, not on cuda:{device}",
            if t.device.device_type == DL_CUDA {
                format!("cuda:{}", t.device.device_id)
            } else {
                format!("a non-CUDA device (DLPack type {})", t.device.device_type)
            }
        )));
    }
    if !(0..=3).contains(&t.ndim) {
        return Err(tensor_error(format!(
            "{what}: {} dimensions; at most 3",
            t.ndim
        )));
    }
    let ndim = t.ndim as usize;
    let sizes: &[i64] = if ndim == 0 {
        &[]
    } else {
        // SAFETY: DLPack: `shape` holds ndim sizes.
        unsafe { std::slice::from_raw_parts(t.shape, ndim) }
    };
    let shape: Vec<usize> = sizes.iter().map(|&s| s.max(0) as usize).collect();
    if !t.strides.is_null() && ndim > 0 {
        // SAFETY: DLPack: non-null `strides` holds ndim strides.
        let strides = unsafe { std::slice::from_raw_parts(t.strides, ndim) };
        if !contiguous(&shape, strides) {
            return Err(tensor_error(format!(
                "{what}: not contiguous (strides {strides:?} for shape {shape:?}); call .contiguous() first"
            )));
        }
    }
    let elem = elem_of(t.dtype).ok_or_else(|| {
        tensor_error(format!(
            "{what}: DLPack dtype (code {}, {} bits) is not one epc takes (bf16, fp16, fp8 as uint8, f32, i32, i64, bool)",
            t.dtype.code, t.dtype.bits
        ))
    })?;
    let ptr = (t.data as u64).wrapping_add(t.byte_offset);
    // SAFETY: the tensor is CUDA memory of `device` (checked) holding the described contiguous
    // elements; the caller keeps it alive until the work given it has run (the API's contract).
    unsafe { Tensor::from_raw(ptr, &shape, elem) }.map_err(|e| tensor_error(format!("{what}: {e}")))
}

fn from_cuda_array_interface(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Tensor> {
    let cai = obj.getattr("__cuda_array_interface__")?;
    let shape: Vec<usize> = cai.get_item("shape")?.extract()?;
    let typestr: String = cai.get_item("typestr")?.extract()?;
    let data: Bound<'_, PyTuple> = cai.get_item("data")?.cast_into()?;
    let ptr: u64 = data.get_item(0)?.extract()?;
    let elem = match typestr.trim_start_matches(['<', '|', '=']) {
        "f2" => Elem::F16,
        "f4" => Elem::F32,
        "i4" => Elem::I32,
        "i8" => Elem::I64,
        "b1" => Elem::Bool,
        "u1" => Elem::Fp8E4m3,
        other => {
            return Err(tensor_error(format!(
                "{what}: typestr {other:?} is not one epc takes through __cuda_array_interface__ (f2, f4, i4, i8, u1); bf16 needs __dlpack__"
            )));
        }
    };
    if let Ok(Some(strides)) = cai.get_item("strides")?.extract::<Option<Vec<i64>>>() {
        let elements: Vec<i64> = strides.iter().map(|s| s / elem.size() as i64).collect();
        if !contiguous(&shape, &elements) {
            return Err(tensor_error(format!(
                "{what}: not contiguous (byte strides {strides:?} for shape {shape:?})"
            )));
        }
    }
    if shape.len() > 3 {
        return Err(tensor_error(format!(
            "{what}: {} dimensions; at most 3",
            shape.len()
        )));
    }
    // SAFETY: __cuda_array_interface__ describes device memory holding these contiguous elements
    // (the producer's contract), kept alive by the caller until the work has run.
    unsafe { Tensor::from_raw(ptr, &shape, elem) }.map_err(|e| tensor_error(format!("{what}: {e}")))
}

/// What a capsule's DLManagedTensor owns: the shape array and a reference to the object whose
/// memory it views.
struct Context {
    shape: Vec<i64>,
    /// Held, never read: dropping it is what lets the group go.
    _owner: Py<PyAny>,
}

unsafe extern "C" fn delete_managed(managed: *mut DlManagedTensor) {
    if managed.is_null() {
        return;
    }
    // SAFETY: `managed` was made by `capsule_of` with Box::into_raw, its context likewise; each
    // is freed once, here.
    let (boxed, context) = unsafe {
        let boxed = Box::from_raw(managed);
        let context = Box::from_raw(boxed.manager_ctx.cast::<Context>());
        (boxed, context)
    };
    drop(boxed);
    // The owner's reference is released with the interpreter attached (a consumer may call this
    // from any thread).
    Python::attach(|_| drop(context));
}

unsafe extern "C" fn delete_capsule(capsule: *mut pyo3::ffi::PyObject) {
    // SAFETY: called by Python for our capsule; unless a consumer renamed it (took the tensor),
    // the DLManagedTensor is still ours to delete.
    unsafe {
        if pyo3::ffi::PyCapsule_IsValid(capsule, DLTENSOR.as_ptr()) == 1 {
            let managed = pyo3::ffi::PyCapsule_GetPointer(capsule, DLTENSOR.as_ptr());
            delete_managed(managed.cast());
        }
    }
}

/// A DLPack capsule viewing `view` on CUDA device `device`, keeping `owner` alive while any
/// tensor made from it lives.
pub fn capsule_of(
    py: Python<'_>,
    view: &Tensor,
    device: usize,
    owner: Py<PyAny>,
) -> PyResult<Py<PyAny>> {
    let mut context = Box::new(Context {
        shape: view.shape().iter().map(|&s| s as i64).collect(),
        _owner: owner,
    });
    let managed = Box::new(DlManagedTensor {
        dl_tensor: DlTensor {
            data: view.ptr() as *mut c_void,
            device: DlDevice {
                device_type: DL_CUDA,
                device_id: device as i32,
            },
            ndim: context.shape.len() as i32,
            dtype: dl_type(view.elem()),
            shape: context.shape.as_mut_ptr(),
            strides: std::ptr::null_mut(),
            byte_offset: 0,
        },
        manager_ctx: std::ptr::null_mut(),
        deleter: Some(delete_managed),
    });
    let managed = Box::into_raw(managed);
    // SAFETY: `managed` is a fresh, valid allocation; the context moves into it (the shape
    // buffer does not move with the Box).
    unsafe { (*managed).manager_ctx = Box::into_raw(context).cast() };
    // SAFETY: a capsule named "dltensor" over the managed tensor, with a destructor that deletes
    // it unless a consumer took it.
    let capsule = unsafe {
        pyo3::ffi::PyCapsule_New(managed.cast(), DLTENSOR.as_ptr(), Some(delete_capsule))
    };
    if capsule.is_null() {
        // SAFETY: the capsule was not made; the managed tensor is still only ours.
        unsafe { delete_managed(managed) };
        return Err(PyErr::fetch(py));
    }
    // SAFETY: PyCapsule_New returned a new reference.
    Ok(unsafe { Py::from_owned_ptr(py, capsule) })
}
