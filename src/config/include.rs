//! Drop-in files: `include = ["/etc/ccm-agent/conf.d/*.toml"]` in the main file adds the
//! `[[certificates]]` of every matching file, as configuration management writes them (one file
//! per certificate). Patterns may hold `*` and `?` in the file name only; relative patterns are
//! taken from the main file's directory. Matches are read in name order, one file at a time. A
//! pattern without a wildcard names a file that must exist; a wildcard that matches nothing (an
//! empty or missing `conf.d`) adds nothing. Errors name the drop-in file and its key:
//! `/etc/ccm-agent/conf.d/web.toml: certificates[0].pca.ca_id: missing`.

use std::path::{Path, PathBuf};

use super::raw::{RawConfig, RawDropIn};
use super::{ConfigError, toml_error};

/// A drop-in larger than this is refused (one certificate's table is a few hundred bytes).
const MAX_DROP_IN_BYTES: u64 = 1024 * 1024;

/// Appends the certificates of every drop-in to `raw`, labelling each for error messages.
pub(super) fn expand(
    mut raw: RawConfig,
    base: Option<&Path>,
    source_name: &str,
) -> Result<RawConfig, ConfigError> {
    if raw.include.is_empty() {
        return Ok(raw);
    }
    let mut labels: Vec<String> = (0..raw.certificates.len())
        .map(|i| format!("certificates[{i}]"))
        .collect();
    let mut dirs = Vec::new();
    for (i, pattern) in raw.include.iter().enumerate() {
        let key = format!("include[{i}]");
        let (dir, files) =
            matches(pattern, base).map_err(|e| ConfigError::one(source_name, &key, e))?;
        dirs.push(dir);
        for file in files {
            let name = file.display().to_string();
            let text = read(&file).map_err(|e| ConfigError::one(&name, "", e))?;
            let drop_in: RawDropIn =
                toml::from_str(&text).map_err(|e| toml_error(&text, &name, &e))?;
            for (j, cert) in drop_in.certificates.into_iter().enumerate() {
                labels.push(format!("{name}: certificates[{j}]"));
                raw.certificates.push(cert);
            }
        }
    }
    raw.certificate_labels = labels;
    raw.include_dirs = dirs;
    Ok(raw)
}

fn read(file: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_DROP_IN_BYTES {
        return Err(format!(
            "{} bytes: larger than a drop-in may be ({MAX_DROP_IN_BYTES})",
            meta.len()
        ));
    }
    std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))
}

/// The directory a pattern looks in and the files it matches, in name order.
fn matches(pattern: &str, base: Option<&Path>) -> Result<(PathBuf, Vec<PathBuf>), String> {
    let path = Path::new(pattern);
    let path = match base {
        Some(base) if path.is_relative() => base.join(path),
        _ => path.to_path_buf(),
    };
    let Some(file_pattern) = path.file_name().and_then(|n| n.to_str()) else {
        return Err(format!(
            "{pattern:?} does not end in a file name or pattern"
        ));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir.to_string_lossy().contains(['*', '?', '[']) {
        return Err(format!(
            "{pattern:?}: only the file name may hold wildcards (* and ?)"
        ));
    }
    if !file_pattern.contains(['*', '?']) {
        if !path.is_file() {
            return Err(format!("{}: no such file", path.display()));
        }
        return Ok((dir, vec![path]));
    }
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((dir, Vec::new())),
        Err(e) => return Err(format!("{}: cannot list: {e}", dir.display())),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: cannot list: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Hidden files are editors' and package managers' leftovers (`.web.toml.swp`,
        // `.dpkg-new`), never drop-ins.
        if !name.starts_with('.') && wildcard_match(file_pattern, name) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok((dir, files))
}

/// Shell-style matching of a file name: `*` any run of characters, `?` one character.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it has matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn wildcards_match_like_a_shell() {
        assert!(wildcard_match("*.toml", "web.toml"));
        assert!(wildcard_match("*.toml", ".toml"));
        assert!(!wildcard_match("*.toml", "web.toml.bak"));
        assert!(wildcard_match("web-?.toml", "web-1.toml"));
        assert!(!wildcard_match("web-?.toml", "web-12.toml"));
        assert!(wildcard_match("*-*.toml", "a-b-c.toml"));
        assert!(wildcard_match("*", "anything"));
        assert!(!wildcard_match("a*b", "acbd"));
    }
}
