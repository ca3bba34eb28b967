//! Loading network configs from a directory, as libcni does.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{NetConfList, Object};
use crate::error::{Code, Error};
use crate::json;

/// The files in `dir` whose extension is one of `exts` (e.g. `["conflist"]`), sorted by name.
pub fn conf_files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), &e)),
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads a `.conflist` file. Unless `loadOnlyInlinedPlugins` is set, plugin objects from
/// `<dir of the file>/<network name>/*.conf` are appended (the spec's errata).
pub fn conf_list_from_file(path: &Path) -> Result<NetConfList, Error> {
    let bytes = fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), &e))?;
    let mut list: NetConfList =
        json::from_slice(&bytes).map_err(|e| Error { msg: format!("{}: {}", path.display(), e.msg), ..e })?;
    if !list.load_only_inlined_plugins && is_valid_dir_name(&list.name) {
        let side_dir = path.parent().unwrap_or(Path::new(".")).join(&list.name);
        for file in conf_files(&side_dir, &["conf"])? {
            let bytes = fs::read(&file).map_err(|e| Error::io(format!("reading {}", file.display()), &e))?;
            let plugin: Object = json::from_slice(&bytes)?;
            list.plugins.push(plugin);
        }
    }
    list.validate().map_err(|e| Error { msg: format!("{}: {}", path.display(), e.msg), ..e })?;
    list.source = Some(bytes);
    Ok(list)
}

fn is_valid_dir_name(name: &str) -> bool {
    crate::config::is_valid_name(name) && name != "." && name != ".."
}

/// Finds the network `name` in `dir`: the first `.conflist` (by file name) with that
/// name, else a legacy `.conf`/`.json` single config, converted to a list.
pub fn load_conf_list(dir: &Path, name: &str) -> Result<NetConfList, Error> {
    for file in conf_files(dir, &["conflist"])? {
        // A broken file for another network must not hide the one asked for.
        match conf_list_from_file(&file) {
            Ok(list) if list.name == name => return Ok(list),
            Ok(_) => {}
            Err(e) if file_names_network(&file, name) => return Err(e),
            Err(_) => {}
        }
    }
    for file in conf_files(dir, &["conf", "json"])? {
        let bytes = fs::read(&file).map_err(|e| Error::io(format!("reading {}", file.display()), &e))?;
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if obj.get("name").and_then(Value::as_str) == Some(name) {
            return NetConfList::from_conf(&bytes);
        }
    }
    Err(Error::new(Code::InvalidConfig, format!("no network config named {name:?} in {}", dir.display())))
}

fn file_names_network(file: &Path, name: &str) -> bool {
    fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("name").and_then(Value::as_str).map(|n| n == name))
        .unwrap_or(false)
}
