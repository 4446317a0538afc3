//! Where the pinned components that `make tools` installs live.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The directory `make tools` installs into: `$WEIR_TOOLS_DIR`, or `.tools/` at the
/// workspace root.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIR_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    workspace_root().join(".tools")
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The path of an installed binary in `.tools/bin`, or an error saying to run `make tools`.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = tools_dir().join("bin").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingTool {
            tool: name.to_owned(),
            path,
        })
    }
}

/// The Kafka jars installed by `make tools`, as a Java classpath.
pub fn kafka_classpath() -> Result<String> {
    let libs = tools_dir().join("kafka").join("libs");
    let has_broker = std::fs::read_dir(&libs)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("kafka_2.13-"))
        })
        .unwrap_or(false);
    if has_broker {
        Ok(format!("{}/*", libs.display()))
    } else {
        Err(Error::MissingTool {
            tool: "kafka".into(),
            path: libs,
        })
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is released before the service binds it, so another process could take it in
/// between; services that then fail to bind are restarted on new ports by their starters.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("finding a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port();
    Ok(port)
}
