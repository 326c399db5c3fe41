//! The validated spec: every field a compile-time constant of the generated kernels.
//!
//! A [`Spec`] is only built by [`crate::parse_spec`] (or [`Spec::from_yaml`]), which resolves the
//! defaults of the YAML file and checks every rule of [`crate::validate`]; its fields are therefore
//! always consistent (`experts % ranks == 0`, and so on). Its fields are private to this crate and
//! read through methods of the same name, so a caller cannot build or edit one around validation;
//! [`Spec::with_ranks`] and [`Spec::with_tuning`] derive a changed spec and validate it again.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Which kernel family a deployment uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Decode: 1 to a few hundred tokens per rank, expert-major receive buffers, latency first.
    LowLatency,
    /// Prefill and training: thousands of tokens per rank, deduplicated per rank, bandwidth first.
    HighThroughput,
}

impl Mode {
    /// The spelling in a spec (`low_latency`, `high_throughput`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::LowLatency => "low_latency",
            Mode::HighThroughput => "high_throughput",
        }
    }
}

/// Element types of activations and payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    Fp16,
    /// 8-bit float e4m3 with per-block scales (dispatch payloads only).
    Fp8E4m3,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> u32 {
        match self {
            Dtype::Bf16 | Dtype::Fp16 => 2,
            Dtype::Fp8E4m3 => 1,
        }
    }

    /// The spelling used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bf16 => "bf16",
            Dtype::Fp16 => "fp16",
            Dtype::Fp8E4m3 => "fp8_e4m3",
        }
    }
}

/// How FP8 block scales are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleFormat {
    /// One f32 per block: `amax / 448`.
    F32,
    /// The f32 scale rounded up to a power of two (unsigned 8-bit exponent, as DeepSeek-V3.1+).
    Ue8m0,
}

/// FP8 quantization of dispatch payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Fp8 {
    /// Channels per scale block (128).
    pub block: u32,
    /// Scale storage.
    pub scale: ScaleFormat,
}

/// Element type of `topk_idx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexDtype {
    /// 32-bit signed.
    I32,
    /// 64-bit signed (PyTorch's default for `topk` indices, and DeepEP's).
    I64,
}

impl IndexDtype {
    /// Bytes per element.
    pub fn size(self) -> u32 {
        match self {
            IndexDtype::I32 => 4,
            IndexDtype::I64 => 8,
        }
    }
}

/// Receive layout of high-throughput dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// One row per (source rank, token) with at least one expert here, ordered by (rank, token).
    Flat,
    /// Rows grouped by local expert, each group padded to `expert_alignment`.
    ExpertMajor,
}

/// The most rows that can ever arrive on one rank in high-throughput mode (the largest
/// `max_recv_tokens_per_rank` that is not wasted): flat, one per sender token; expert-major, one
/// per slot whose expert is here, plus each local expert's padding.
pub(crate) fn recv_rows_ceiling(
    layout: Layout,
    experts: i64,
    top_k: i64,
    ranks: i64,
    tokens: i64,
    expert_alignment: i64,
) -> i64 {
    let senders = ranks.saturating_mul(tokens);
    let local = experts / ranks.max(1);
    match layout {
        Layout::Flat => senders,
        Layout::ExpertMajor => senders
            .saturating_mul(top_k.min(local).max(1))
            .saturating_add(local.saturating_mul(expert_alignment - 1)),
    }
}

/// Settings that exist only in high-throughput mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct HighThroughput {
    /// Capacity of the receive buffer in rows.
    pub max_recv_tokens_per_rank: u32,
    /// Receive layout.
    pub layout: Layout,
    /// Row alignment of each expert's group (`expert_major` only; 1 for `flat`).
    pub expert_alignment: u32,
}

/// Performance knobs. `None` means `auto`: the heuristics (and later the tuner) choose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Tuning {
    /// Streaming multiprocessors the communication kernels may occupy.
    #[serde(serialize_with = "auto_or_value")]
    pub sms: Option<u32>,
    /// Warps per thread block.
    #[serde(serialize_with = "auto_or_value")]
    pub warps_per_block: Option<u32>,
    /// Tokens one warp handles per step.
    #[serde(serialize_with = "auto_or_value")]
    pub tokens_per_warp: Option<u32>,
    /// Bytes per vector load/store (4, 8 or 16).
    #[serde(serialize_with = "auto_or_value")]
    pub vector_bytes: Option<u32>,
    /// Independent loads kept in flight per thread.
    #[serde(serialize_with = "auto_or_value")]
    pub unroll: Option<u32>,
}

/// Writes a knob as it is spelled in YAML: its value, or `auto`.
fn auto_or_value<S: serde::Serializer>(knob: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match knob {
        Some(v) => s.serialize_u32(*v),
        None => s.serialize_str("auto"),
    }
}

/// One deployment's dispatch/combine problem, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Spec {
    /// Name, used for files and kernel folders: 1 to 64 letters, digits, `-` and `_`.
    pub(crate) name: String,
    /// Kernel family.
    pub(crate) mode: Mode,
    /// Hidden size H (channels per token).
    pub(crate) hidden: u32,
    /// Activation dtype.
    pub(crate) dtype: Dtype,
    /// Payload dtype of dispatch.
    pub(crate) dispatch_dtype: Dtype,
    /// FP8 settings, present exactly when `dispatch_dtype` is FP8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fp8: Option<Fp8>,
    /// Payload dtype of combine.
    pub(crate) combine_dtype: Dtype,
    /// Element type of `topk_idx`.
    pub(crate) index_dtype: IndexDtype,
    /// Total experts E.
    pub(crate) experts: u32,
    /// Experts per token K.
    pub(crate) top_k: u32,
    /// Ranks R.
    pub(crate) ranks: u32,
    /// Ranks per NVLink domain G (G == R: one node).
    pub(crate) nvlink_domain: u32,
    /// Most tokens a rank sends per call (M).
    pub(crate) max_tokens_per_rank: u32,
    /// High-throughput settings, present exactly in that mode (written flat, as in YAML).
    #[serde(flatten)]
    pub(crate) high_throughput: Option<HighThroughput>,
    /// Performance knobs.
    pub(crate) tuning: Tuning,
}

impl Spec {
    /// Parses and validates YAML text. `file` only labels errors.
    pub fn from_yaml(text: &str, file: Option<&str>) -> Result<Spec, crate::SpecErrors> {
        crate::validate::parse_and_validate(text, file)
    }

    /// The same deployment on `ranks` ranks of one NVLink domain (name suffixed `-r<ranks>`),
    /// validated again. A high-throughput receive buffer larger than every row `ranks` ranks
    /// can send (`ranks x max_tokens_per_rank`) is capped to that. A spec that already has
    /// `ranks` ranks in one domain is returned as it is (same name, same hash: the same tuning
    /// entry).
    pub fn with_ranks(&self, ranks: u32) -> Result<Spec, crate::SpecErrors> {
        if self.ranks == ranks && self.nvlink_domain == ranks {
            return Ok(self.clone());
        }
        let mut s = self.clone();
        s.ranks = ranks;
        s.nvlink_domain = ranks;
        s.name = format!("{}-r{ranks}", self.name);
        // Fewer ranks can send fewer rows: a receive buffer larger than all of them is capped.
        if let Some(ht) = &mut s.high_throughput {
            let most = recv_rows_ceiling(
                ht.layout,
                i64::from(s.experts),
                i64::from(s.top_k),
                i64::from(ranks),
                i64::from(s.max_tokens_per_rank),
                i64::from(ht.expert_alignment.max(1)),
            );
            if i64::from(ht.max_recv_tokens_per_rank) > most {
                ht.max_recv_tokens_per_rank = u32::try_from(most).unwrap_or(u32::MAX);
            }
        }
        s.revalidated()
    }

    /// The same deployment with other performance knobs, validated again (a knob out of range is
    /// refused with the rule it breaks, as in a YAML file).
    ///
    /// ```
    /// # let yaml = "name: demo\nmode: low_latency\nhidden: 4096\nexperts: 64\ntop_k: 6\n\
    /// #             ranks: 8\nmax_tokens_per_rank: 128\n";
    /// # let spec = ep_codegen::Spec::from_yaml(yaml, None).unwrap();
    /// let tuned = spec.with_tuning(ep_codegen::Tuning { sms: Some(24), ..spec.tuning() }).unwrap();
    /// assert_eq!(tuned.tuning().sms, Some(24));
    /// assert!(spec.with_tuning(ep_codegen::Tuning { sms: Some(0), ..spec.tuning() }).is_err());
    /// ```
    pub fn with_tuning(&self, tuning: Tuning) -> Result<Spec, crate::SpecErrors> {
        let mut s = self.clone();
        s.tuning = tuning;
        s.revalidated()
    }

    /// This spec after edits of its fields, checked again by every rule.
    fn revalidated(self) -> Result<Spec, crate::SpecErrors> {
        Spec::from_yaml(&self.to_canonical_yaml(), Some(&self.name))
    }

    /// Name, used for files and kernel folders (one path component; see the validation rules).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kernel family.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Hidden size H (channels per token).
    pub fn hidden(&self) -> u32 {
        self.hidden
    }

    /// Activation dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Payload dtype of dispatch.
    pub fn dispatch_dtype(&self) -> Dtype {
        self.dispatch_dtype
    }

    /// FP8 settings, present exactly when [`Spec::dispatch_dtype`] is FP8.
    pub fn fp8(&self) -> Option<Fp8> {
        self.fp8
    }

    /// Payload dtype of combine.
    pub fn combine_dtype(&self) -> Dtype {
        self.combine_dtype
    }

    /// Element type of `topk_idx`.
    pub fn index_dtype(&self) -> IndexDtype {
        self.index_dtype
    }

    /// Total experts E (a multiple of [`Spec::ranks`]).
    pub fn experts(&self) -> u32 {
        self.experts
    }

    /// Experts per token K.
    pub fn top_k(&self) -> u32 {
        self.top_k
    }

    /// Ranks R (at least 1).
    pub fn ranks(&self) -> u32 {
        self.ranks
    }

    /// Ranks per NVLink domain G (G == R: one node).
    pub fn nvlink_domain(&self) -> u32 {
        self.nvlink_domain
    }

    /// Most tokens a rank sends per call (M).
    pub fn max_tokens_per_rank(&self) -> u32 {
        self.max_tokens_per_rank
    }

    /// High-throughput settings, present exactly in that mode.
    pub fn high_throughput(&self) -> Option<HighThroughput> {
        self.high_throughput
    }

    /// Performance knobs (`None` = auto); change them with [`Spec::with_tuning`].
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// The sizes as `usize`, for indexing.
    pub fn dims(&self) -> Dims {
        Dims {
            ranks: self.ranks as usize,
            local: self.local_experts() as usize,
            experts: self.experts as usize,
            tokens: self.max_tokens_per_rank as usize,
            hidden: self.hidden as usize,
            top_k: self.top_k as usize,
        }
    }

    /// Local experts per rank, L = E / R.
    pub fn local_experts(&self) -> u32 {
        self.experts / self.ranks
    }

    /// The spec as canonical YAML (every default resolved): what the hash covers. It parses back
    /// to the same spec.
    pub fn to_canonical_yaml(&self) -> String {
        crate::canonical::to_yaml(self)
    }

    /// SHA-256 of the canonical YAML, as 16 hex digits: names the spec in generated files.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.to_canonical_yaml().as_bytes());
        hex(&digest[..8])
    }
}

/// A spec's sizes as `usize` (see [`Spec::dims`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// R.
    pub ranks: usize,
    /// L = E / R.
    pub local: usize,
    /// E.
    pub experts: usize,
    /// M, max tokens per rank.
    pub tokens: usize,
    /// H.
    pub hidden: usize,
    /// K.
    pub top_k: usize,
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
