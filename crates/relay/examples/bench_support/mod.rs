//! What the relay's benchmarks share: arguments, emulated portals at the
//! standard limit, secret files.

use b24_emulator::Portal;

/// `--name N` from the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An emulated portal at the standard limit (burst 50, 2 requests/s).
pub async fn portal(domain: &str, secret: &str, seed: serde_json::Value) -> Portal {
    Portal::builder()
        .domain(domain)
        .webhook(1, secret, &["crm", "user"])
        .rate_limit(50, 2.0)
        .seed(seed)
        .start()
        .await
        .expect("portal starts")
}

/// Writes `text` to `dir/name` and returns the path (a secret file).
pub fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}
