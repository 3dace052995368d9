//! Embeds the web console (web/dist, built by scripts/build-web.sh) into corrald.
//! Writes `$OUT_DIR/web_assets.rs`: a table of (path, bytes) with `include_bytes!` for
//! every file. A clean clone without web/dist still compiles: the table is empty and
//! corrald serves a page saying how to build the console.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dist = manifest.join("../../web/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut files = Vec::new();
    collect(&dist, &dist, &mut files);
    files.sort();
    let mut out = String::from("pub static WEB_ASSETS: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in &files {
        // Each file also triggers a rebuild when it changes.
        println!("cargo:rerun-if-changed={}", abs.display());
        let _ = writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?})),",
            abs.display().to_string()
        );
    }
    out.push_str("];\n");
    // `corrald --version` says whether the console is inside, so an installed binary can
    // be checked (scripts/install.sh does); a build without it says how to get it.
    let console = if files.iter().any(|(rel, _)| rel == "index.html") {
        format!("web console embedded, {} files", files.len())
    } else {
        println!(
            "cargo:warning=web/dist is not built: this corrald serves only a page saying so. \
             Run scripts/build-web.sh before building, or scripts/install.sh, which does both"
        );
        "web console not built".to_string()
    };
    println!("cargo:rustc-env=CORRAL_WEB_CONSOLE={console}");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    if let Err(e) = std::fs::write(out_dir.join("web_assets.rs"), out) {
        panic!("cannot write web_assets.rs: {e}");
    }
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(root, &path, files);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel = rel.to_string_lossy().replace('\\', "/");
            let abs = path.canonicalize().unwrap_or(path.clone());
            files.push((rel, abs));
        }
    }
}
