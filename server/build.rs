//! Makes sure the web dashboard is built before the server embeds it (`src/api/ui.rs` embeds
//! `../ui/dist` with rust-embed). When `ui/dist/index.html` is missing or older than the UI
//! sources, this runs `npm ci` (or `npm install` without a lockfile) and `npm run build` in
//! `ui/`. Without npm, or when the build fails, it writes a placeholder `index.html` saying the
//! dashboard was not built and emits a cargo warning, so the server still compiles.
//! `MESHTRACE_SKIP_UI_BUILD=1` skips npm and only ensures the placeholder exists.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

const WATCHED: &[&str] = &[
    "src",
    "index.html",
    "package.json",
    "package-lock.json",
    "vite.config.ts",
    "tsconfig.json",
    // The `/api/v1` types are generated from it (`npm run types`).
    "../docs/openapi.json",
];

const PLACEHOLDER: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>meshtrace</title></head><body>\n<h1>meshtrace</h1>\n<p>The web dashboard was not built \
(npm was unavailable or the build failed when this binary was compiled). Install Node.js and npm, \
then rebuild, or run <code>npm ci &amp;&amp; npm run build</code> in <code>ui/</code>. The query API \
under <code>/api/</code> works regardless.</p>\n<!-- meshtrace-ui-placeholder -->\n</body></html>\n";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ui = manifest.join("..").join("ui");
    let dist = ui.join("dist");
    let index = dist.join("index.html");
    for name in WATCHED {
        let p = ui.join(name);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    println!("cargo:rerun-if-env-changed=MESHTRACE_SKIP_UI_BUILD");

    let skip = std::env::var("MESHTRACE_SKIP_UI_BUILD").is_ok_and(|v| !v.is_empty() && v != "0");
    if !skip && ui.join("package.json").exists() && needs_build(&ui, &index) {
        if let Err(e) = build_ui(&ui) {
            // A previous build (if any) stays in place; otherwise the placeholder is written.
            println!("cargo:warning=web dashboard not built: {e}");
        }
    }
    if !index.exists() {
        fs::create_dir_all(&dist).expect("create ui/dist");
        fs::write(&index, PLACEHOLDER).expect("write ui/dist/index.html");
        if !skip {
            println!("cargo:warning=serving a placeholder page instead of the web dashboard");
        }
    }
    println!("cargo:rerun-if-changed={}", index.display());
}

fn is_placeholder(index: &Path) -> bool {
    fs::read_to_string(index).is_ok_and(|s| s.contains("meshtrace-ui-placeholder"))
}

/// True when the dashboard was never built, is a placeholder, or a source is newer than it.
fn needs_build(ui: &Path, index: &Path) -> bool {
    let Some(built) = mtime(index) else {
        return true;
    };
    if is_placeholder(index) {
        return true;
    }
    WATCHED
        .iter()
        .filter_map(|name| newest(&ui.join(name)))
        .any(|t| t > built)
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The newest modification time of a file or of any file under a directory.
fn newest(p: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(p).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    fs::read_dir(p)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest(&e.path()))
        .max()
}

fn build_ui(ui: &Path) -> Result<(), String> {
    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    run(Command::new(npm).arg("--version").current_dir(ui))
        .map_err(|e| format!("npm is unavailable ({e})"))?;
    let lock = ui.join("package-lock.json");
    let installed = ui.join("node_modules").join(".package-lock.json");
    let stale_modules = match (mtime(&installed), mtime(&lock)) {
        (Some(i), Some(l)) => l > i,
        (None, _) => true,
        (Some(_), None) => false,
    };
    if stale_modules {
        let step = if lock.exists() { "ci" } else { "install" };
        run(Command::new(npm)
            .args([step, "--no-audit", "--no-fund"])
            .current_dir(ui))?;
    }
    run(Command::new(npm).args(["run", "build"]).current_dir(ui))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    Err(format!(
        "{cmd:?} failed with {}: {}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}
