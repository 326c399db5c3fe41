//! GPU architectures as NVRTC names them, and the oldest one a spec's kernels compile for.

use std::fmt;
use std::str::FromStr;

use ep_codegen::{Dtype, Spec};

use crate::Error;

/// A real architecture, `sm_XX` or its architecture-specific variant `sm_XXa` (cubins are
/// compiled for exactly one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arch {
    /// `XX`: 10 * major + minor of the compute capability.
    pub number: u32,
    /// `sm_XXa`: the architecture-specific variant (sm_90a and newer), whose cubins run only on
    /// exactly that architecture.
    pub specific: bool,
}

/// The spellings `--arch` accepts, for messages.
pub const ARCH_SPELLINGS: &str = "sm_90, 90 or 9.0 (a real architecture), sm_90a, sm_100a, ... (architecture-specific, 90 and up)";

impl Arch {
    /// Hopper (H100, H200): the default target when no GPU is present.
    pub const SM90: Arch = Arch::sm(90);

    /// `sm_<number>`.
    pub const fn sm(number: u32) -> Arch {
        Arch {
            number,
            specific: false,
        }
    }

    /// From a compute capability (major, minor).
    pub fn from_capability(major: i32, minor: i32) -> Arch {
        Arch::sm((major.max(0) * 10 + minor.max(0)) as u32)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sm_{}{}",
            self.number,
            if self.specific { "a" } else { "" }
        )
    }
}

impl FromStr for Arch {
    type Err = Error;

    /// Accepts `sm_90`, `90`, `9.0` and `sm_90a`; refuses `compute_90` (a virtual architecture:
    /// PTX, not the cubin epc caches and loads) and anything else, listing the spellings.
    fn from_str(s: &str) -> Result<Arch, Error> {
        let bad = |why: &str| Error::BadArch {
            given: s.to_owned(),
            why: why.to_owned(),
        };
        let t = s.trim().to_ascii_lowercase();
        if let Some(rest) = t.strip_prefix("compute_") {
            return Err(bad(&format!(
                "compute_XX is a virtual architecture (PTX); epc compiles a cubin for a real one: \
                 use sm_{rest}"
            )));
        }
        let body = t.strip_prefix("sm_").unwrap_or(&t);
        let (digits, specific) = match body.strip_suffix('a') {
            Some(d) => (d, true),
            None => (body, false),
        };
        let digits = match digits.split_once('.') {
            Some((major, minor)) if !major.is_empty() && minor.len() == 1 => {
                format!("{major}{minor}")
            }
            Some(_) => return Err(bad("expected major.minor, such as 9.0")),
            None => digits.to_owned(),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("not an architecture name"));
        }
        let number: u32 = digits.parse().map_err(|_| bad("number out of range"))?;
        if !(30..=999).contains(&number) {
            return Err(bad("no such architecture number"));
        }
        if specific && number < 90 {
            return Err(bad(
                "architecture-specific variants (sm_XXa) exist from sm_90a on",
            ));
        }
        Ok(Arch { number, specific })
    }
}

/// The oldest architecture a spec's kernels compile for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchNeed {
    /// The oldest architecture.
    pub minimum: Arch,
    /// The spec's setting that needs it (`dispatch_dtype fp8_e4m3`).
    pub setting: String,
    /// The PTX instruction the kernels use for it.
    pub instruction: &'static str,
    /// What to change to run on an older GPU.
    pub alternative: &'static str,
}

/// The oldest architecture the kernels rendered from the embedded templates need for `spec`
/// beyond NVRTC's own oldest (the conversions of `partials/convert.hbs`; measured with NVRTC
/// 13.0, whose ptxas reports `Feature ... requires .target sm_XX or higher` below it):
/// - FP8 e4m3 dispatch (`cvt.rn.satfinite.e4m3x2.f32` in the dispatch): sm_89;
/// - BF16 activations (`cvt.rn.bf16.f32` in the combine): sm_80.
///
/// FP16 activations need nothing beyond NVRTC's oldest architecture. `None` when the spec needs nothing more.
pub fn spec_needs(spec: &Spec) -> Option<ArchNeed> {
    if spec.fp8().is_some() || spec.dispatch_dtype() == Dtype::Fp8E4m3 {
        return Some(ArchNeed {
            minimum: Arch::sm(89),
            setting: format!("dispatch_dtype {}", spec.dispatch_dtype().as_str()),
            instruction: "cvt.rn.satfinite.e4m3x2.f32",
            alternative: "dispatch_dtype: bf16",
        });
    }
    // Both modes' combines convert f32 sums to bf16.
    if spec.dtype() == Dtype::Bf16 {
        return Some(ArchNeed {
            minimum: Arch::sm(80),
            setting: format!("dtype {}", spec.dtype().as_str()),
            instruction: "cvt.rn.bf16.f32",
            alternative: "dtype: fp16",
        });
    }
    None
}

/// [`Error::ArchTooOld`] when `spec`'s kernels need a newer architecture than `arch`.
pub fn check_spec_arch(spec: &Spec, arch: Arch) -> Result<(), Error> {
    match spec_needs(spec) {
        Some(need) if arch.number < need.minimum.number => Err(Error::ArchTooOld {
            spec: spec.name().to_owned(),
            setting: need.setting,
            arch,
            minimum: need.minimum,
            instruction: need.instruction,
            alternative: need.alternative,
        }),
        _ => Ok(()),
    }
}

/// `sm_75, sm_80, ...`.
pub fn list(archs: &[Arch]) -> String {
    archs
        .iter()
        .map(Arch::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::Arch;

    #[test]
    fn parses_the_usual_spellings() {
        assert_eq!("sm_90".parse::<Arch>().unwrap(), Arch::sm(90));
        assert_eq!("9.0".parse::<Arch>().unwrap(), Arch::sm(90));
        assert_eq!("100".parse::<Arch>().unwrap(), Arch::sm(100));
        assert_eq!("12.0".parse::<Arch>().unwrap(), Arch::sm(120));
        assert_eq!("SM_89".parse::<Arch>().unwrap(), Arch::sm(89));
        let a = "sm_90a".parse::<Arch>().unwrap();
        assert_eq!(
            a,
            Arch {
                number: 90,
                specific: true
            }
        );
        assert_eq!(a.to_string(), "sm_90a");
        assert_eq!("sm_100a".parse::<Arch>().unwrap().to_string(), "sm_100a");
        assert_eq!(Arch::from_capability(9, 0).to_string(), "sm_90");
        for bad in [
            "compute_90",
            "sm_",
            "sm_5",
            "hopper",
            "",
            "sm_80a",
            "9.",
            "sm_9x",
        ] {
            let e = bad.parse::<Arch>().unwrap_err().to_string();
            assert!(e.contains("sm_90a"), "{bad}: {e}");
        }
        let e = "compute_90".parse::<Arch>().unwrap_err().to_string();
        assert!(e.contains("virtual") && e.contains("use sm_90"), "{e}");
    }
}
