//! Element conversions shared by the references: 16-bit activations to and from f32.

use ep_codegen::Dtype;
use half::{bf16, f16};

/// The f32 value of a 16-bit activation (`bf16` or `fp16`) given as bits.
pub fn to_f32(bits: u16, dtype: Dtype) -> f32 {
    match dtype {
        Dtype::Fp16 => f16::from_bits(bits).to_f32(),
        _ => bf16::from_bits(bits).to_f32(),
    }
}

/// `v` rounded to nearest-even into a 16-bit activation (`cvt.rn.bf16.f32` / `cvt.rn.f16.f32`).
pub fn from_f32(v: f32, dtype: Dtype) -> u16 {
    match dtype {
        Dtype::Fp16 => f16::from_f32(v).to_bits(),
        _ => bf16::from_f32(v).to_bits(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rounds_to_nearest_even() {
        for bits in [0u16, 0x3f80, 0xbf80, 0x7f7f, 0x0001] {
            assert_eq!(from_f32(to_f32(bits, Dtype::Bf16), Dtype::Bf16), bits);
        }
        // 1 + 2^-8 lies halfway between bf16 1.0 and 1 + 2^-7: ties go to the even 1.0.
        assert_eq!(from_f32(1.0 + 1.0 / 256.0, Dtype::Bf16), 0x3f80);
        assert_eq!(from_f32(1.0 + 3.0 / 256.0, Dtype::Bf16), 0x3f82);
        assert_eq!(to_f32(0x3c00, Dtype::Fp16), 1.0);
    }
}
