//! `include/epc.h` is what cbindgen makes of the crate today.

use std::path::Path;

#[test]
fn the_header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .unwrap()
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = crate_dir.join("include/epc.h");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        if std::env::var_os("EPC_UPDATE_HEADER").is_some() {
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        panic!(
            "{} is out of date with capi/src; regenerate it with \
             `EPC_UPDATE_HEADER=1 cargo test -p ep-capi --test header`",
            path.display()
        );
    }
}
