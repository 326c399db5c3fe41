//! [`NcclVersion`]: NCCL's version as the library reports it and as `nccl.h` declares it.

use std::fmt;

use crate::Error;

/// An NCCL version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NcclVersion {
    /// Major version (2).
    pub major: u32,
    /// Minor version (28 for 2.28.x).
    pub minor: u32,
    /// Patch level.
    pub patch: u32,
}

impl NcclVersion {
    /// The oldest NCCL the `nccl` transport works with: symmetric windows
    /// (`ncclCommWindowRegister`) and the device API (`ncclDevCommCreate`) arrived in 2.28.
    pub const MINIMUM: NcclVersion = NcclVersion {
        major: 2,
        minor: 28,
        patch: 0,
    };

    /// Decodes `ncclGetVersion`'s code: `major*10000 + minor*100 + patch` since 2.9,
    /// `major*1000 + minor*100 + patch` before. `None` for a code no NCCL returns (<= 0).
    pub fn from_code(code: i32) -> Option<NcclVersion> {
        let code = u32::try_from(code).ok().filter(|&c| c > 0)?;
        Some(if code >= 10000 {
            NcclVersion {
                major: code / 10000,
                minor: code % 10000 / 100,
                patch: code % 100,
            }
        } else {
            NcclVersion {
                major: code / 1000,
                minor: code % 1000 / 100,
                patch: code % 100,
            }
        })
    }

    /// `major*10000 + minor*100 + patch`, the code of NCCL >= 2.9.
    pub fn code(self) -> u32 {
        self.major * 10000 + self.minor * 100 + self.patch
    }

    /// Whether this version is at least [`NcclVersion::MINIMUM`].
    pub fn is_supported(self) -> bool {
        self >= NcclVersion::MINIMUM
    }

    /// [`Error::NcclTooOld`] (naming `location`) unless this version is supported.
    pub fn check_supported(self, location: &str) -> Result<(), Error> {
        if self.is_supported() {
            Ok(())
        } else {
            Err(Error::NcclTooOld {
                version: self.to_string(),
                location: location.to_owned(),
            })
        }
    }

    /// The version `nccl.h` declares (`#define NCCL_MAJOR 2`, `NCCL_MINOR`, `NCCL_PATCH`).
    pub fn from_header(nccl_h: &str) -> Result<NcclVersion, String> {
        let field = |name: &str| -> Result<u32, String> {
            let value = nccl_h
                .lines()
                .filter_map(|line| {
                    let mut words = line.split_whitespace();
                    match (words.next(), words.next(), words.next()) {
                        (Some("#define"), Some(n), Some(v)) if n == name => Some(v),
                        _ => None,
                    }
                })
                .next()
                .ok_or_else(|| format!("it does not define {name}"))?;
            value.parse().map_err(|_| {
                if value.contains("${") {
                    format!(
                        "{name} is `{value}`: this is NCCL's unprocessed nccl.h.in, not an \
                         installed nccl.h"
                    )
                } else {
                    format!("{name} is `{value}`, not a number")
                }
            })
        };
        Ok(NcclVersion {
            major: field("NCCL_MAJOR")?,
            minor: field("NCCL_MINOR")?,
            patch: field("NCCL_PATCH")?,
        })
    }
}

impl fmt::Display for NcclVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}
