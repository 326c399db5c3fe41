//! FP8 e4m3 quantization of dispatch payloads. The kernels implement exactly this:
//!
//! For each token and each block of 128 channels, with x the channel values as f32:
//!   amax      = max(max_i |x_i|, 1e-4)
//!   scale_inv = amax / 448                       (f32 division, round to nearest)
//!   ue8m0:      scale_inv = 2^ceil(log2(scale_inv))  (exact: round the f32 up to a power of two)
//!   scale     = 448 / amax  (f32)  or, for ue8m0, 1 / scale_inv (exact)
//!   q_i       = e4m3(x_i * scale)                (f32 product, then round to nearest even with
//!                                                 saturation to +-448: cvt.rn.satfinite.e4m3x2.f32)
//! The receiver gets q and scale_inv; x_i is approximately q_i * scale_inv.

use ep_codegen::ScaleFormat;

/// Largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;
/// Smallest amax used for a scale (an all-zero block would otherwise divide by zero).
pub const AMAX_FLOOR: f32 = 1e-4;

/// f32 to e4m3 (OCP "fn" variant: no infinities, NaN = 0x7f), round to nearest even, saturating
/// finite values to +-448.
pub fn e4m3_from_f32(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7e;
    }
    // Below the smallest normal (2^-6) the step is 2^-9; the division by a power of two is exact.
    if a < 2f32.powi(-6) {
        let m = (a * 512.0).round_ties_even() as u8; // 0..=8; 8 is the smallest normal, 0x08
        return sign | m;
    }
    let exponent = ((a.to_bits() >> 23) & 0xff) as i32 - 127; // floor(log2 a), a is normal
    let mantissa = a / 2f32.powi(exponent) - 1.0; // exact, in [0, 1)
    let mut q = (mantissa * 8.0).round_ties_even() as u32;
    let mut e = exponent + 7;
    if q == 8 {
        q = 0;
        e += 1;
    }
    if e > 15 || (e == 15 && q == 7) {
        return sign | 0x7e;
    }
    sign | ((e as u8) << 3) | q as u8
}

/// e4m3 to f32 (exact).
pub fn e4m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = i32::from((code >> 3) & 0xf);
    let m = f32::from(code & 7);
    if e == 15 && code & 7 == 7 {
        return f32::NAN;
    }
    if e == 0 {
        sign * m * 2f32.powi(-9)
    } else {
        sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
    }
}

/// The smallest power of two >= a positive finite f32 (exact).
pub fn round_up_pow2(v: f32) -> f32 {
    let bits = v.to_bits();
    if bits & 0x007f_ffff == 0 {
        v
    } else {
        f32::from_bits((bits & 0x7f80_0000) + 0x0080_0000)
    }
}

/// Quantizes one block of channel values: (codes, scale_inv).
pub fn quantize_block(x: &[f32], format: ScaleFormat) -> (Vec<u8>, f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(AMAX_FLOOR);
    let (scale, scale_inv) = match format {
        ScaleFormat::F32 => (E4M3_MAX / amax, amax / E4M3_MAX),
        ScaleFormat::Ue8m0 => {
            let inv = round_up_pow2(amax / E4M3_MAX);
            (1.0 / inv, inv)
        }
    };
    (
        x.iter().map(|v| e4m3_from_f32(v * scale)).collect(),
        scale_inv,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in 0u8..=0xfe {
            if code & 0x7f == 0x7f {
                continue;
            }
            let v = e4m3_to_f32(code);
            let back = e4m3_from_f32(v);
            // -0 and +0 both decode to zero; the sign is kept.
            assert_eq!(back, code, "code {code:#04x} = {v}");
        }
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
    }

    #[test]
    fn ties_go_to_even_and_large_values_saturate() {
        for code in 0u8..0x7e {
            let (lo, hi) = (e4m3_to_f32(code), e4m3_to_f32(code + 1));
            let mid = (lo + hi) / 2.0;
            let even = if code % 2 == 0 { code } else { code + 1 };
            assert_eq!(
                e4m3_from_f32(mid),
                even,
                "midpoint of {code:#04x} and the next"
            );
            assert_eq!(e4m3_from_f32(lo + (hi - lo) * 0.25), code);
            assert_eq!(e4m3_from_f32(lo + (hi - lo) * 0.75), code + 1);
        }
        assert_eq!(e4m3_from_f32(1e9), 0x7e);
        assert_eq!(e4m3_from_f32(f32::INFINITY), 0x7e);
        assert_eq!(e4m3_from_f32(-460.0), 0xfe);
        assert_eq!(e4m3_from_f32(f32::NAN), 0x7f);
    }

    #[test]
    fn block_scales_follow_the_formula() {
        let x: Vec<f32> = (0..128).map(|i| (i as f32 - 64.0) * 0.37).collect();
        let (q, inv) = quantize_block(&x, ScaleFormat::F32);
        assert_eq!(inv, 64.0 * 0.37 / 448.0);
        assert_eq!(q[0], 0xfe, "the amax channel maps to -448");
        let (_, inv2) = quantize_block(&x, ScaleFormat::Ue8m0);
        assert_eq!(inv2, round_up_pow2(inv));
        assert!(inv2 >= inv && inv2 < 2.0 * inv);
        let (zeros, zinv) = quantize_block(&[0.0; 128], ScaleFormat::F32);
        assert!(zeros.iter().all(|&c| c == 0));
        assert_eq!(zinv, AMAX_FLOOR / 448.0);
        assert_eq!(round_up_pow2(0.75), 1.0);
        assert_eq!(round_up_pow2(0.5), 0.5);
    }
}
