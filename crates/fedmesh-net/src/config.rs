//! Reading the mesh's YAML config files (a node's, governance's), whose relative paths start
//! from the file's folder so that a mesh folder can be moved as a whole.

use std::path::{Path, PathBuf};

use crate::NetError;

/// Reads a YAML config file, naming the file in any error.
pub fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, NetError> {
    let text = std::fs::read_to_string(path).map_err(|error| NetError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    serde_norway::from_str(&text).map_err(|e| NetError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Makes a relative `path` start from `dir` (a config file's folder).
pub fn anchor(dir: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = dir.join(&*path);
    }
}

/// The folder a config file is in.
pub fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}
