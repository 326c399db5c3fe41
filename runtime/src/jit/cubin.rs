//! Reads resource figures from a cubin (an ELF file), so they are known whatever the compiler
//! printed. The per-kernel attributes live in the `.nv.info` section as records of
//! `{u8 format, u8 attribute, u16 size, payload}`; format 4 carries a payload of
//! `{u32 symbol, u32 value}` for the attributes read here.

/// `EIATTR_REGCOUNT`: registers per thread.
const ATTR_REGCOUNT: u8 = 0x2f;
/// `EIATTR_FRAME_SIZE`: bytes of per-thread stack frame (local memory; spills land here).
const ATTR_FRAME_SIZE: u8 = 0x11;
/// Record format with a 16-bit size and a payload.
const FORMAT_SIZED: u8 = 4;

/// Figures of the kernels in one cubin (the largest, when it holds several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CubinStats {
    /// Registers per thread.
    pub registers: Option<u32>,
    /// Per-thread stack frame in bytes.
    pub stack_frame_bytes: Option<u32>,
}

/// Reads the figures; `None` fields when the file is not a 64-bit little-endian ELF with them.
pub fn stats(elf: &[u8]) -> CubinStats {
    let mut out = CubinStats::default();
    let Some(info) = section(elf, ".nv.info") else {
        return out;
    };
    let mut at = 0usize;
    while at + 4 <= info.len() {
        let (format, attr) = (info[at], info[at + 1]);
        if format != FORMAT_SIZED {
            // Formats 1-3 have no payload beyond their 2-byte value.
            at += 4;
            continue;
        }
        let size = usize::from(u16::from_le_bytes([info[at + 2], info[at + 3]]));
        let payload = info.get(at + 4..at + 4 + size);
        if let Some(value) = payload.and_then(|p| u32_at(p, 4)) {
            let slot = match attr {
                ATTR_REGCOUNT => Some(&mut out.registers),
                ATTR_FRAME_SIZE => Some(&mut out.stack_frame_bytes),
                _ => None,
            };
            if let Some(slot) = slot {
                *slot = Some(slot.map_or(value, |v| v.max(value)));
            }
        }
        at += 4 + size;
    }
    out
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The bytes of the section called `name`.
fn section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    // ELF64 little-endian only.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64_at(elf, 0x28)?).ok()?;
    let entsize = usize::from(u16_at(elf, 0x3a)?);
    let count = usize::from(u16_at(elf, 0x3c)?);
    let strndx = usize::from(u16_at(elf, 0x3e)?);
    let header = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(entsize)?)?;
        let name = u32_at(elf, h)?;
        let offset = usize::try_from(u64_at(elf, h + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(elf, h + 0x20)?).ok()?;
        Some((name, offset, size))
    };
    let (_, str_off, str_size) = header(strndx)?;
    let names = elf.get(str_off..str_off.checked_add(str_size)?)?;
    (0..count).find_map(|i| {
        let (n, offset, size) = header(i)?;
        let rest = names.get(n as usize..)?;
        let end = rest.iter().position(|&c| c == 0)?;
        (&rest[..end] == name.as_bytes())
            .then(|| elf.get(offset..offset.checked_add(size)?))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_gives_no_figures_and_no_panic() {
        assert_eq!(stats(b""), CubinStats::default());
        assert_eq!(stats(b"\x7fELF\x02\x01\0\0"), CubinStats::default());
        let mut fake = vec![0u8; 256];
        fake[..6].copy_from_slice(b"\x7fELF\x02\x01");
        fake[0x28] = 0xff;
        fake[0x3c] = 0xff;
        assert_eq!(stats(&fake), CubinStats::default());
    }
}
