//! Rendering: snapshots of generated source, template overrides, strict mode, exports.

use ep_codegen::{Renderer, Spec, builtin_specs, find_builtin};

fn builtin(name: &str) -> Spec {
    find_builtin(name)
        .unwrap_or_else(|| panic!("spec {name} is embedded"))
        .parse()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The snapshot folder: beside this file when built here, else found above the working folder
/// (test executables copied to another machine run from a checkout of the repository).
fn snapshot_dir() -> std::path::PathBuf {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    if built.is_dir() {
        return built;
    }
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            cwd.ancestors()
                .map(|a| a.join("ep-codegen/tests/snapshots"))
                .find(|p| p.is_dir())
        })
        .unwrap_or(built)
}

#[test]
fn snapshot_kernels() {
    let renderer = Renderer::new().unwrap();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(snapshot_dir());
    settings.set_prepend_module_to_snapshot(true);
    settings.bind(|| {
        for (name, count) in [
            ("deepseek-v3-ht", 4),
            ("deepseek-v3-ll", 3),
            ("gpt-oss-120b-ll", 3),
            ("kimi-k2-ll", 3),
        ] {
            let kernels = renderer.render(&builtin(name)).unwrap();
            assert_eq!(kernels.len(), count, "{name}");
            for k in kernels {
                insta::assert_snapshot!(format!("{name}.{}", k.name), k.source);
            }
        }
    });
}

#[test]
fn every_builtin_spec_is_valid_and_renders() {
    let renderer = Renderer::new().unwrap();
    let mut count = 0;
    for b in builtin_specs() {
        let spec = b.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.name(), b.stem(), "spec name matches its file name");
        let kernels = renderer.render(&spec).unwrap();
        for k in &kernels {
            assert!(k.source.starts_with("/*\n"), "header comment first");
            assert!(k.source.contains(&spec.hash()));
            assert!(!k.source.contains("{{"), "no unrendered handlebars");
            assert!(
                !k.source.contains("#include"),
                "kernels need no toolkit header"
            );
            assert!(!k.source.contains("\n\n\n"), "no runs of blank lines");
        }
        count += 1;
    }
    assert!(
        count >= 8,
        "at least eight deployments in specs/, found {count}"
    );
}

/// The parameter names of `entry`'s definition in `source`.
fn signature(source: &str, entry: &str) -> Vec<String> {
    let start = source
        .find(&format!("{entry}("))
        .unwrap_or_else(|| panic!("{entry} is defined"))
        + entry.len()
        + 1;
    let end = start + source[start..].find(") {").expect("a parameter list");
    source[start..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{") && !l.trim().is_empty())
        .flat_map(|l| l.split(','))
        .filter_map(|p| p.split_whitespace().last())
        .map(str::to_owned)
        .collect()
}

#[test]
fn manifest_parameters_match_the_generated_signatures() {
    let renderer = Renderer::new().unwrap();
    for b in builtin_specs() {
        for k in renderer.render(&b.parse().unwrap()).unwrap() {
            for entry in &k.entries {
                let planned: Vec<&str> = k
                    .params
                    .iter()
                    .filter(|p| p.entry == entry.as_str())
                    .map(|p| p.name)
                    .collect();
                assert_eq!(
                    planned,
                    signature(&k.source, entry),
                    "{} {entry}",
                    k.file_name
                );
            }
        }
    }
}

#[test]
fn rendering_is_deterministic_and_spec_sensitive() {
    let renderer = Renderer::new().unwrap();
    let a = renderer.render(&builtin("deepseek-v3-ht")).unwrap();
    let b = renderer.render(&builtin("deepseek-v3-ht")).unwrap();
    assert_eq!(a[0].source, b[0].source);
    assert_eq!(a[0].source_hash, b[0].source_hash);
    let c = renderer.render(&builtin("deepseek-v3-ll")).unwrap();
    assert_ne!(a[0].source_hash, c[0].source_hash);
}

#[test]
fn an_override_folder_replaces_a_template() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("partials")).unwrap();
    std::fs::write(
        dir.path().join("partials/header.hbs"),
        "// custom header for {{spec.name}}\n",
    )
    .unwrap();
    let renderer = Renderer::with_overrides(dir.path()).unwrap();
    let k = renderer.render(&builtin("mixtral-8x7b-ht")).unwrap();
    assert!(
        k[0].source
            .starts_with("// custom header for mixtral-8x7b-ht\n")
    );
    assert!(k[0].source.contains("constexpr int kNumExperts = 8;"));
}

#[test]
fn strict_mode_rejects_a_missing_variable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("layout.cu.hbs"),
        "int x = {{no_such_variable}};\n",
    )
    .unwrap();
    let renderer = Renderer::with_overrides(dir.path()).unwrap();
    let err = renderer.render(&builtin("mixtral-8x7b-ht")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("layout.cu"), "{text}");
    assert!(text.contains("no_such_variable"), "{text}");
}

#[test]
fn a_broken_override_template_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("layout.cu.hbs"), "{{#if}}\n").unwrap();
    let err = match Renderer::with_overrides(dir.path()) {
        Ok(_) => panic!("a template with an unclosed block must not load"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("template `layout.cu`"), "{err}");
}

#[test]
fn html_is_not_escaped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("layout.cu.hbs"),
        "a < b && c > \"{{kernel.title}}\"\n",
    )
    .unwrap();
    // Spec names hold no character HTML escapes; the title holds `=` (escaped as `&#x3D;`).
    let spec = builtin("mixtral-8x7b-ht");
    let k = Renderer::with_overrides(dir.path())
        .unwrap()
        .render(&spec)
        .unwrap();
    let title = k[0]
        .source
        .strip_prefix("a < b && c > \"")
        .and_then(|s| s.strip_suffix("\"\n"))
        .unwrap();
    assert!(
        title.contains(&format!("E={}", spec.experts())) && !title.contains("&#"),
        "{title}"
    );
}

#[test]
fn export_writes_sources_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let spec = builtin("kimi-k2-ll");
    let kernels = Renderer::new().unwrap().render(&spec).unwrap();
    ep_codegen::export(dir.path(), &spec, &kernels, false).unwrap();
    let cu = std::fs::read_to_string(dir.path().join("kimi-k2-ll.layout.cu")).unwrap();
    assert_eq!(cu, kernels[0].source);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["spec_hash"], spec.hash());
    assert_eq!(manifest["spec"]["experts"], 384);
    let k = &manifest["kernels"][0];
    assert_eq!(k["entries"][0], "epc_layout");
    assert_eq!(k["file_name"], "kimi-k2-ll.layout.cu");
    assert_eq!(k["constants"]["local_experts"], 6);
    assert_eq!(k["launch"]["block_threads"], 256);
    assert_eq!(k["params"][0]["name"], "topk_idx");
}
