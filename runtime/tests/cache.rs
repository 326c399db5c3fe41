//! The cubin cache: keys, atomic install, verified reads, rebuilds, and two processes at once.
//! A fake compiler stands in for NVRTC, so these run everywhere.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ep_codegen::{KernelSource, Renderer, find_builtin};
use ep_runtime::{Arch, CacheOutcome, CompileOutput, Compiler, Error, KernelCache};

/// "Compiles" by prefixing the source, optionally slowly, counting calls.
struct FakeCompiler {
    calls: AtomicUsize,
    delay: Duration,
    options: Vec<String>,
}

impl FakeCompiler {
    fn new() -> FakeCompiler {
        FakeCompiler {
            calls: AtomicUsize::new(0),
            delay: Duration::ZERO,
            options: vec!["-O3".into()],
        }
    }
}

impl Compiler for FakeCompiler {
    fn id(&self) -> String {
        "fake 1.0".into()
    }
    fn options(&self, arch: Arch) -> Vec<String> {
        let mut o = self.options.clone();
        o.push(format!("--arch={arch}"));
        o
    }
    fn compile_to_cubin(&self, kernel: &KernelSource, arch: Arch) -> Result<CompileOutput, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        let mut cubin = format!("CUBIN {arch}\n").into_bytes();
        cubin.extend_from_slice(kernel.source.as_bytes());
        Ok(CompileOutput {
            cubin,
            log: "ptxas info    : Used 17 registers".into(),
        })
    }
}

fn kernel() -> KernelSource {
    let spec = find_builtin("mixtral-8x7b-ht").unwrap().parse().unwrap();
    Renderer::new().unwrap().render(&spec).unwrap().remove(0)
}

fn entry_files(
    cache: &KernelCache,
    compiler: &dyn Compiler,
    k: &KernelSource,
) -> std::path::PathBuf {
    cache
        .entry_dir(k, &KernelCache::key(compiler, k, Arch::SM90))
        .unwrap()
}

#[test]
fn miss_then_hit_with_one_folder_per_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::new(dir.path());
    let compiler = FakeCompiler::new();
    let k = kernel();
    let first = cache.get_or_compile(&compiler, &k, Arch::SM90).unwrap();
    assert_eq!(first.outcome, CacheOutcome::Miss);
    assert_eq!(first.metadata.stats.registers, Some(17));
    let second = cache.get_or_compile(&compiler, &k, Arch::SM90).unwrap();
    assert_eq!(second.outcome, CacheOutcome::Hit);
    assert_eq!(second.cubin, first.cubin);
    assert_eq!(compiler.calls.load(Ordering::SeqCst), 1);
    let entry = entry_files(&cache, &compiler, &k);
    assert!(
        entry
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("mixtral-8x7b-ht.layout-")
    );
    for f in ["kernel.cu", "kernel.cubin", "metadata.json"] {
        assert!(entry.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(entry.join("kernel.cu")).unwrap(),
        k.source
    );
    // Nothing temporary is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn the_key_covers_source_options_arch_and_compiler() {
    let k = kernel();
    let compiler = FakeCompiler::new();
    let base = KernelCache::key(&compiler, &k, Arch::SM90);
    assert_eq!(base, KernelCache::key(&compiler, &k, Arch::SM90));
    assert_ne!(base, KernelCache::key(&compiler, &k, Arch::sm(100)));
    let mut other_source = k.clone();
    other_source.source.push(' ');
    assert_ne!(base, KernelCache::key(&compiler, &other_source, Arch::SM90));
    let mut other_options = FakeCompiler::new();
    other_options.options.push("-lineinfo".into());
    assert_ne!(base, KernelCache::key(&other_options, &k, Arch::SM90));
}

fn corrupt_and_rebuild(damage: impl Fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::new(dir.path());
    let compiler = FakeCompiler::new();
    let k = kernel();
    let good = cache.get_or_compile(&compiler, &k, Arch::SM90).unwrap();
    damage(&entry_files(&cache, &compiler, &k));
    let rebuilt = cache.get_or_compile(&compiler, &k, Arch::SM90).unwrap();
    assert_eq!(rebuilt.outcome, CacheOutcome::Rebuilt);
    assert_eq!(rebuilt.cubin, good.cubin);
    assert_eq!(compiler.calls.load(Ordering::SeqCst), 2);
    let after = cache.get_or_compile(&compiler, &k, Arch::SM90).unwrap();
    assert_eq!(after.outcome, CacheOutcome::Hit);
}

#[test]
fn a_truncated_cubin_is_rebuilt() {
    corrupt_and_rebuild(|entry| {
        let cubin = std::fs::read(entry.join("kernel.cubin")).unwrap();
        std::fs::write(entry.join("kernel.cubin"), &cubin[..cubin.len() / 2]).unwrap();
    });
}

#[test]
fn a_flipped_byte_is_rebuilt() {
    corrupt_and_rebuild(|entry| {
        let mut cubin = std::fs::read(entry.join("kernel.cubin")).unwrap();
        cubin[3] ^= 0x40;
        std::fs::write(entry.join("kernel.cubin"), &cubin).unwrap();
    });
}

#[test]
fn broken_or_missing_metadata_is_rebuilt() {
    corrupt_and_rebuild(|entry| std::fs::write(entry.join("metadata.json"), "{ not json").unwrap());
    corrupt_and_rebuild(|entry| std::fs::remove_file(entry.join("metadata.json")).unwrap());
    corrupt_and_rebuild(|entry| std::fs::remove_file(entry.join("kernel.cubin")).unwrap());
}

/// Child side of the two-process test: compile into the cache named by the environment.
#[test]
fn child_compiles_into_shared_cache() {
    let Ok(root) = std::env::var("EPC_CACHE_TEST_CHILD") else {
        return; // Only meaningful when spawned by `two_processes_compiling_at_once_both_succeed`.
    };
    let mut compiler = FakeCompiler::new();
    compiler.delay = Duration::from_millis(300);
    let got = KernelCache::new(root)
        .get_or_compile(&compiler, &kernel(), Arch::SM90)
        .unwrap();
    let expected = compiler
        .compile_to_cubin(&kernel(), Arch::SM90)
        .unwrap()
        .cubin;
    assert_eq!(got.cubin, expected);
}

#[test]
fn two_processes_compiling_at_once_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        std::process::Command::new(&exe)
            .args(["--exact", "child_compiles_into_shared_cache", "--nocapture"])
            .env("EPC_CACHE_TEST_CHILD", dir.path())
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap(), b.join().unwrap())
    });
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "child failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    }
    // Exactly one entry, valid, and no temporary folders left.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let compiler = FakeCompiler::new();
    let hit = KernelCache::new(dir.path())
        .get_or_compile(&compiler, &kernel(), Arch::SM90)
        .unwrap();
    assert_eq!(hit.outcome, CacheOutcome::Hit);
}

#[test]
fn an_unwritable_cache_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, "x").unwrap();
    let err = KernelCache::new(&file)
        .get_or_compile(&FakeCompiler::new(), &kernel(), Arch::SM90)
        .unwrap_err();
    assert!(matches!(err, Error::Cache { .. }), "{err}");
    assert!(err.to_string().contains("not-a-folder"), "{err}");
}

#[test]
fn a_kernel_named_outside_the_cache_is_refused_before_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let compiler = FakeCompiler::new();
    for bad in ["../../escaped", "a/b", ".hidden"] {
        let mut k = kernel();
        k.file_name = format!("{bad}.cu");
        let err = KernelCache::new(&root)
            .get_or_compile(&compiler, &k, Arch::SM90)
            .unwrap_err();
        assert!(matches!(err, Error::UnsafeName { .. }), "{bad}: {err}");
    }
    assert_eq!(compiler.calls.load(Ordering::SeqCst), 0);
    assert!(!root.exists() && !dir.path().join("escaped").exists());
}
