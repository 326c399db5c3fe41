//! Writing arrays as NumPy `.npy` files (format version 1.0), for `epc run --dump`.

use std::path::Path;

use anyhow::{Context, Result};

/// Element types written. 16-bit activations are written as their bit patterns (`<u2`);
/// view them with `numpy.ndarray.view` (e.g. `torch.from_numpy(a.view('int16')).view(torch.bfloat16)`).
pub enum Data<'a> {
    /// `|u1`.
    U8(&'a [u8]),
    /// `<u2`.
    U16(&'a [u16]),
    /// `<i4`.
    I32(&'a [i32]),
    /// `<i8`.
    I64(&'a [i64]),
    /// `<f4`.
    F32(&'a [f32]),
}

/// Writes `data` with `shape` (row-major) to `path`.
pub fn write(path: &Path, shape: &[usize], data: Data<'_>) -> Result<()> {
    let (descr, bytes): (&str, Vec<u8>) = match data {
        Data::U8(v) => ("|u1", v.to_vec()),
        Data::U16(v) => ("<u2", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::I32(v) => ("<i4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::I64(v) => ("<i8", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::F32(v) => ("<f4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    };
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + bytes.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes);
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_describes_the_array() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        write(&path, &[2, 3], Data::I32(&[1, 2, 3, 4, 5, 6])).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(
            header.contains("'descr': '<i4'") && header.contains("'shape': (2, 3)"),
            "{header}"
        );
        assert_eq!(bytes.len(), 10 + len + 24);
        assert_eq!(&bytes[10 + len..10 + len + 4], &1i32.to_le_bytes());
        write(&path, &[4], Data::U8(&[1, 2, 3, 4])).unwrap();
        let header = String::from_utf8_lossy(&std::fs::read(&path).unwrap()[10..74]).into_owned();
        assert!(header.contains("'shape': (4,)"), "{header}");
    }
}
