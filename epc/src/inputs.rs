//! Resolving SPEC arguments and the environment's optional pieces (NVRTC, GPU).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use ep_codegen::{Renderer, Spec, builtin_specs, closest_builtin, find_builtin, parse_spec_file};
use ep_runtime::{Error, Gpu, Jit};

/// A spec and where it came from.
pub struct Loaded {
    /// `specs/x.yaml (built-in)` or the path given.
    pub origin: String,
    /// The validated spec.
    pub spec: Spec,
}

/// Resolves SPEC arguments (files, `-` for standard input, or built-in names); none means every
/// built-in spec. Every argument is tried, and all errors are reported together.
pub fn load_specs(args: &[String]) -> Result<Vec<Loaded>> {
    let mut results: Vec<(String, Result<Spec, String>)> = Vec::new();
    if args.is_empty() {
        for b in builtin_specs() {
            results.push((
                format!("specs/{} (built-in)", b.file),
                b.parse().map_err(|e| e.to_string()),
            ));
        }
    }
    let mut stdin_read = false;
    for arg in args {
        let path = Path::new(arg);
        let parsed = if arg == "-" {
            let parsed = if stdin_read {
                Err("`-` is given twice; standard input holds one spec".to_owned())
            } else {
                stdin_read = true;
                read_stdin().and_then(|bytes| {
                    ep_codegen::spec_text(&bytes, STDIN_ORIGIN)
                        .map_err(|e| e.to_string())
                        .and_then(|text| {
                            Spec::from_yaml(text, Some(STDIN_ORIGIN)).map_err(|e| e.to_string())
                        })
                })
            };
            (STDIN_ORIGIN.to_owned(), parsed)
        } else if path.is_file() {
            (
                arg.clone(),
                parse_spec_file(path).map_err(|e| e.to_string()),
            )
        } else if let Some(b) = find_builtin(arg) {
            (
                format!("specs/{} (built-in)", b.file),
                b.parse().map_err(|e| e.to_string()),
            )
        } else {
            (arg.clone(), Err(unknown(arg)))
        };
        results.push(parsed);
    }
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for (origin, parsed) in results {
        match parsed {
            Ok(spec) => loaded.push(Loaded { origin, spec }),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(loaded)
}

/// How a spec read from standard input is named in messages.
const STDIN_ORIGIN: &str = "<stdin>";

/// Standard input's bytes, at most one more than a spec may hold (`ep_codegen::spec_text` then
/// refuses more than that, and text that is not UTF-8, with the place).
fn read_stdin() -> std::result::Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(ep_codegen::MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading a spec from standard input: {e}"))?;
    Ok(bytes)
}

/// Why `arg` names no spec: a folder, a missing file, or an unknown (perhaps misspelled)
/// built-in name.
fn unknown(arg: &str) -> String {
    let path = Path::new(arg);
    if path.is_dir() {
        return format!("`{arg}` is a folder; give a .yaml file or a built-in name");
    }
    let looks_like_a_file = arg.contains(std::path::MAIN_SEPARATOR)
        || arg.contains('/')
        || path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    if looks_like_a_file {
        return format!("`{arg}`: no such file");
    }
    match closest_builtin(arg) {
        Some(best) => {
            format!("`{arg}` is neither a file nor a built-in spec; did you mean `{best}`?")
        }
        None => {
            let names: Vec<&str> = builtin_specs().map(|b| b.stem()).collect();
            format!(
                "`{arg}` is neither a file nor a built-in spec (built-ins: {})",
                names.join(", ")
            )
        }
    }
}

/// The renderer, with the override folder when one is given.
pub fn renderer(templates: Option<&Path>) -> Result<Renderer> {
    match templates {
        Some(dir) => {
            Renderer::with_overrides(dir).context("loading the template overrides (--templates)")
        }
        None => Ok(Renderer::new()?),
    }
}

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// NVRTC with the default cache, or the reason it is absent (an error under EPC_REQUIRE_NVRTC=1).
pub fn optional_jit() -> Result<std::result::Result<Jit, String>> {
    match Jit::nvrtc() {
        Ok(jit) => Ok(Ok(jit)),
        Err(e) if required("EPC_REQUIRE_NVRTC") => Err(e).context("EPC_REQUIRE_NVRTC=1"),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// The first GPU, or the reason there is none (an error under EPC_REQUIRE_GPU=1).
pub fn optional_gpu() -> Result<std::result::Result<Gpu, String>> {
    match Gpu::open(0) {
        Ok(gpu) => Ok(Ok(gpu)),
        Err(e @ (Error::DriverNotFound { .. } | Error::NoGpu { .. }))
            if !required("EPC_REQUIRE_GPU") =>
        {
            Ok(Err(e.to_string()))
        }
        Err(e) => Err(e).context("opening the GPU"),
    }
}
