//! A small, tolerant PEM reader/writer: `\r\n`, indentation and text between blocks are accepted.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub(crate) struct Block {
    pub label: String,
    /// RFC 1421 headers (`Proc-Type: 4,ENCRYPTED`, `DEK-Info: ..`) were present.
    pub has_headers: bool,
    pub der: Vec<u8>,
}

/// All PEM blocks in `text`, in order. Text outside blocks is ignored.
pub(crate) fn parse(text: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, bool, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        match current.as_mut() {
            None => {
                if let Some(label) = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|l| l.strip_suffix("-----"))
                {
                    current = Some((label.to_string(), false, String::new()));
                }
            }
            Some((label, has_headers, body)) => {
                if let Some(end) = line
                    .strip_prefix("-----END ")
                    .and_then(|l| l.strip_suffix("-----"))
                {
                    if end != label {
                        return Err(format!(
                            "line {}: END {end:?} closes BEGIN {label:?}",
                            n + 1
                        ));
                    }
                    let der = STANDARD
                        .decode(body.as_bytes())
                        .map_err(|e| format!("{label} block has invalid base64: {e}"))?;
                    blocks.push(Block {
                        label: label.clone(),
                        has_headers: *has_headers,
                        der,
                    });
                    current = None;
                } else if line.starts_with("-----BEGIN ") {
                    return Err(format!("line {}: BEGIN inside {label:?} block", n + 1));
                } else if line.contains(':') {
                    *has_headers = true;
                } else {
                    body.push_str(line);
                }
            }
        }
    }
    if let Some((label, _, _)) = current {
        return Err(format!("{label} block has no END line"));
    }
    Ok(blocks)
}

/// PEM text with 64-column base64 lines and LF line ends.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}
