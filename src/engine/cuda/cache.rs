//! Compiled kernels kept on disk, so that only the first load of a model on a machine waits for
//! NVRTC (seconds: the decode product kernel comes in several shapes).
//!
//! Design decision: an image is named by a SHA-256 of everything that decides its bytes — the
//! source, the NVRTC options (architecture, storage types) and the NVRTC version — so a cached
//! file is never stale and needs no invalidation; a new source or library simply misses. Writes go
//! through a temporary file and a rename, so a reader never sees half an image, and any failure to
//! read or write the cache falls back to compiling.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The folder of compiled kernels: `LLMEVAL_KERNEL_CACHE` (a folder, or `off` for none), else
/// `$XDG_CACHE_HOME/llmeval/kernels`, else `$HOME/.cache/llmeval/kernels`.
pub fn dir() -> Option<PathBuf> {
    dir_from(|k| std::env::var_os(k))
}

/// [`dir`] with the environment read through `env`.
fn dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(v) = var("LLMEVAL_KERNEL_CACHE") {
        return (v != "off").then(|| PathBuf::from(v));
    }
    var("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache"))).map(|c| c.join("llmeval").join("kernels"))
}

/// Where an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cache,
}

/// The file an image of `parts` (source, options, version…) is kept in under `dir`.
fn path<P: AsRef<[u8]>>(dir: &Path, parts: &[P]) -> PathBuf {
    let mut h = Sha256::new();
    for p in parts {
        // each part's length first: ("ab", "c") and ("a", "bc") differ
        h.update((p.as_ref().len() as u64).to_le_bytes());
        h.update(p);
    }
    dir.join(format!("{}.bin", hex::encode(h.finalize())))
}

/// The image of `parts`: read from `dir`, or made by `compile` and stored there (best effort: a
/// folder that cannot be written only costs the next load a compile).
pub fn image<P: AsRef<[u8]>>(dir: Option<&Path>, parts: &[P], compile: impl FnOnce() -> Result<Vec<u8>, String>) -> Result<(Vec<u8>, Origin), String> {
    let file = dir.map(|d| path(d, parts));
    if let Some(bytes) = file.as_ref().and_then(|f| std::fs::read(f).ok()).filter(|b| !b.is_empty()) {
        return Ok((bytes, Origin::Cache));
    }
    let bytes = compile()?;
    if let Some(f) = &file {
        store(f, &bytes);
    }
    Ok((bytes, Origin::Compiled))
}

/// Writes `bytes` to `file` through a temporary file in the same folder; errors are ignored.
pub fn store(file: &Path, bytes: &[u8]) {
    let Some(dir) = file.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, file).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

/// Forgets the image of `parts` (one that the driver refused to load).
pub fn forget<P: AsRef<[u8]>>(dir: Option<&Path>, parts: &[P]) {
    if let Some(d) = dir {
        let _ = std::fs::remove_file(path(d, parts));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("llmeval-kcache-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn an_image_is_compiled_once_then_read_back() {
        let dir = temp("once");
        let calls = Cell::new(0);
        let compile = |b: &'static [u8]| {
            let calls = &calls;
            move || {
                calls.set(calls.get() + 1);
                Ok(b.to_vec())
            }
        };
        let parts: [&[u8]; 3] = [b"source", b"--gpu-architecture=sm_90", b"13.0"];
        assert_eq!(image(Some(&dir), &parts, compile(b"cubin")).unwrap(), (b"cubin".to_vec(), Origin::Compiled));
        assert_eq!(image(Some(&dir), &parts, compile(b"other")).unwrap(), (b"cubin".to_vec(), Origin::Cache));
        assert_eq!(calls.get(), 1);
        // any part that differs is another image
        for other in [[b"source".as_slice(), b"--gpu-architecture=sm_80", b"13.0"], [b"sourc", b"e--gpu-architecture=sm_90", b"13.0"], [b"source", b"--gpu-architecture=sm_90", b"12.8"]] {
            assert_eq!(image(Some(&dir), &other, compile(b"x")).unwrap().1, Origin::Compiled);
        }
        assert_eq!(calls.get(), 4);
        // no temporary files are left
        let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".bin") && n.len() == 64 + 4), "{names:?}");
        // a refused image is forgotten and compiled again
        forget(Some(&dir), &parts);
        assert_eq!(image(Some(&dir), &parts, compile(b"cubin2")).unwrap(), (b"cubin2".to_vec(), Origin::Compiled));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_folder_follows_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.into());
        assert_eq!(dir_from(env(&[("HOME", "/h")])), Some(PathBuf::from("/h/.cache/llmeval/kernels")));
        assert_eq!(dir_from(env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")])), Some(PathBuf::from("/x/llmeval/kernels")));
        assert_eq!(dir_from(env(&[("HOME", "/h"), ("XDG_CACHE_HOME", ""), ("LLMEVAL_KERNEL_CACHE", "/k")])), Some(PathBuf::from("/k")));
        assert_eq!(dir_from(env(&[("HOME", "/h"), ("LLMEVAL_KERNEL_CACHE", "off")])), None);
        assert_eq!(dir_from(env(&[])), None);
    }

    #[test]
    fn without_a_usable_folder_it_compiles_every_time() {
        let parts: [&[u8]; 1] = [b"s"];
        assert_eq!(image(None, &parts, || Ok(vec![1])).unwrap(), (vec![1], Origin::Compiled));
        // a "folder" that is a file: nothing can be stored, nothing fails
        let file = temp("file");
        std::fs::write(&file, b"not a folder").unwrap();
        for _ in 0..2 {
            assert_eq!(image(Some(&file), &parts, || Ok(vec![2])).unwrap(), (vec![2], Origin::Compiled));
        }
        // a compile error is returned, and nothing is stored
        let dir = temp("err");
        assert_eq!(image(Some(&dir), &parts, || Err("NVRTC: bad".into())), Err("NVRTC: bad".to_string()));
        assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none());
        let _ = std::fs::remove_file(&file);
    }
}
