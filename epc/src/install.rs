//! The main job's one install step: NVRTC from its pip wheel, when none is found and epc runs
//! from a build inside a checkout of this repository (as `cargo run --release` does).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ep_runtime::NvrtcSearch;

/// When no NVRTC is found (and neither `EPC_NVRTC` nor `EPC_NO_INSTALL=1` is set), runs the
/// checkout's `scripts/install-nvrtc` (the test command's installer: the `nvidia-cuda-nvrtc`
/// wheel into the checkout's `.epc/pip`, which the NVRTC search then finds) and says so. An epc
/// that does not run from a checkout installs nothing; a failed install is reported and the
/// main job goes on without NVRTC.
pub fn nvrtc_if_missing() {
    if std::env::var_os("EPC_NVRTC").is_some()
        || std::env::var("EPC_NO_INSTALL").as_deref() == Ok("1")
    {
        return;
    }
    if NvrtcSearch::from_env().load().is_ok() {
        return;
    }
    let Some(script) = std::env::current_exe()
        .ok()
        .and_then(|exe| checkout_script(&exe))
    else {
        return;
    };
    println!(
        "NVRTC not found: running {} (it installs the nvidia-cuda-nvrtc wheel into the checkout's \
         .epc/pip with pip; EPC_NO_INSTALL=1 turns this off)",
        script.display()
    );
    match Command::new("bash")
        .arg(&script)
        .stdout(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => {}
        Ok(status) => println!("the NVRTC install failed ({status}); going on without NVRTC"),
        Err(e) => println!("the NVRTC install could not start ({e}); going on without NVRTC"),
    }
}

/// `scripts/install-nvrtc` of the checkout the executable was built in: the nearest folder
/// above it that holds this repository's layout (the script beside `ep-codegen/Cargo.toml`).
fn checkout_script(exe: &Path) -> Option<PathBuf> {
    exe.ancestors()
        .skip(1)
        .find(|dir| {
            dir.join("scripts/install-nvrtc").is_file()
                && dir.join("ep-codegen/Cargo.toml").is_file()
        })
        .map(|dir| dir.join("scripts/install-nvrtc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_found_only_in_a_checkout_above_the_executable() {
        let root = tempfile::tempdir().unwrap();
        let exe = root.path().join("repo/target/release/epc");
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        assert_eq!(checkout_script(&exe), None);
        // A scripts/ folder alone is not a checkout.
        std::fs::create_dir_all(root.path().join("repo/scripts")).unwrap();
        std::fs::write(
            root.path().join("repo/scripts/install-nvrtc"),
            "#!/bin/sh\n",
        )
        .unwrap();
        assert_eq!(checkout_script(&exe), None);
        std::fs::create_dir_all(root.path().join("repo/ep-codegen")).unwrap();
        std::fs::write(root.path().join("repo/ep-codegen/Cargo.toml"), "").unwrap();
        assert_eq!(
            checkout_script(&exe),
            Some(root.path().join("repo/scripts/install-nvrtc"))
        );
        // An executable outside the checkout finds nothing.
        assert_eq!(checkout_script(&root.path().join("bin/epc")), None);
    }
}
