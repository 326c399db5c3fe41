//! GPU architectures as NVRTC names them.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A real architecture `sm_XX` (cubins are compiled for exactly one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arch(pub u32);

impl Arch {
    /// Hopper (H100, H200): the default target when no GPU is present.
    pub const SM90: Arch = Arch(90);

    /// From a compute capability (major, minor).
    pub fn from_capability(major: i32, minor: i32) -> Arch {
        Arch((major.max(0) * 10 + minor.max(0)) as u32)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sm_{}", self.0)
    }
}

impl FromStr for Arch {
    type Err = Error;

    /// Accepts `sm_90`, `90` and `9.0`.
    fn from_str(s: &str) -> Result<Arch, Error> {
        let t = s.trim();
        let digits = t.strip_prefix("sm_").unwrap_or(t).replace('.', "");
        match digits.parse::<u32>() {
            Ok(n) if (70..=200).contains(&n) => Ok(Arch(n)),
            _ => Err(Error::BadArch(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Arch;

    #[test]
    fn parses_the_usual_spellings() {
        assert_eq!("sm_90".parse::<Arch>().unwrap(), Arch(90));
        assert_eq!("9.0".parse::<Arch>().unwrap(), Arch(90));
        assert_eq!("100".parse::<Arch>().unwrap(), Arch(100));
        assert_eq!(Arch::from_capability(9, 0).to_string(), "sm_90");
        for bad in ["compute_90", "sm_", "sm_5", "hopper", ""] {
            assert!(bad.parse::<Arch>().is_err(), "{bad}");
        }
    }
}
