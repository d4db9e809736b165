//! Installing `ambit-cni` into the node's CNI configuration: appended to the primary CNI's
//! config list, so the runtime runs it after the primary plugin for every pod.
//!
//! Invariants:
//! - The primary config is what the runtime would pick: the lexicographically first `*.conf`,
//!   `*.conflist` or `*.json` in the directory that parses and is not ours alone. Files that do
//!   not parse are skipped, as containerd and CRI-O skip them.
//! - We never create a config of our own: without a primary CNI there is no pod network to chain
//!   onto, and a config holding only our plugin would give pods no network at all.
//! - Edits splice text (module `spans`), so everything but our entry stays byte-identical, and
//!   [`unmerge`] of [`merge`] gives back the original bytes.
//! - Writes are atomic (temporary file in the same directory, then rename): the runtime never
//!   reads a half-written config. Re-installing an installed config writes nothing, so the agent
//!   can call [`install`] periodically to undo a primary CNI that rewrote the file.
//! - A single-plugin `.conf` is converted to a `.conflist` of the same stem; the original is
//!   kept as `<name>.ambit-orig` (an extension runtimes ignore) and restored by [`uninstall`].

mod cli;
mod spans;
#[cfg(test)]
mod tests;

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use crate::cni::PLUGIN_TYPE;
pub use cli::{parse_cli, usage_text, CliCommand};

/// Suffix of the backup of a single-plugin config we converted to a conflist.
pub const BACKUP_SUFFIX: &str = ".ambit-orig";
/// Extensions runtimes load CNI configs from (libcni's `ConfFiles`).
const CONFIG_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("not valid JSON: {reason}")]
    Json { reason: String },
    #[error("not a CNI config list: {reason}")]
    NotAConflist { reason: String },
    #[error("not a single-plugin CNI config: {reason}")]
    NotAConf { reason: String },
    #[error("our plugin config is invalid: {reason}")]
    PluginConf { reason: String },
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        source: Box<InstallError>,
    },
    #[error(
        "no primary CNI config in {dir} to chain onto (skipped: {skipped:?}); is the primary CNI installed?"
    )]
    NoPrimaryConfig { dir: PathBuf, skipped: Vec<String> },
    #[error("usage: {reason}\n{}", cli::USAGE)]
    Usage { reason: String },
}

/// Our conflist entry. Every option is written out, so an operator reading the node's config
/// sees where the plugin will call and how long it waits.
pub fn plugin_conf(agent_socket: &str, timeout_ms: u64) -> Value {
    serde_json::json!({
        "type": PLUGIN_TYPE,
        "agent_socket": agent_socket,
        "timeout_ms": timeout_ms,
    })
}

/// Adds `plugin_conf` to the end of the conflist's `plugins`, or updates our entry in place
/// (matched by `type`) if it is there but different. Already up to date: the input, unchanged.
pub fn merge(conflist_json: &str, plugin_conf: &Value) -> Result<String, InstallError> {
    let our_type = plugin_type(plugin_conf)?;
    let rendered = serde_json::to_string(plugin_conf).map_err(|e| InstallError::PluginConf {
        reason: e.to_string(),
    })?;
    let (mut doc, plugins_span) = parse_conflist(conflist_json)?;
    let elements = spans::array_elements(conflist_json, plugins_span.clone()).map_err(scan)?;
    let plugins = plugins_mut(&mut doc)?;
    if plugins.len() != elements.len() {
        return Err(scan_mismatch());
    }
    let ours: Vec<usize> = (0..plugins.len())
        .filter(|&i| is_type(&plugins[i], our_type))
        .collect();

    let mut text = conflist_json.to_owned();
    match ours.as_slice() {
        [] => {
            match elements.last() {
                None => text.insert_str(plugins_span.start + 1, &rendered),
                Some(last) => {
                    // Reuse the indentation before the last entry so the file still reads well.
                    let before_last = match elements.len() {
                        1 => plugins_span.start + 1,
                        n => elements[n - 2].end,
                    };
                    let indent = conflist_json[before_last..last.start].trim_start_matches(',');
                    text.insert_str(last.end, &format!(",{indent}{rendered}"));
                }
            }
            plugins.push(plugin_conf.clone());
        }
        [i] if plugins[*i] == *plugin_conf => return Ok(conflist_json.to_owned()),
        [first, ..] => {
            // Out of date (or duplicated): drop extra copies, then rewrite the first in place.
            let first = *first;
            let mut current = text;
            while let Some(extra) = find_ours(&current, our_type)?.get(1).copied() {
                current = remove_element(&current, extra)?;
            }
            let elements = current_elements(&current)?;
            current.replace_range(elements[first].clone(), &rendered);
            text = current;
            plugins[first] = plugin_conf.clone();
            let mut seen = false;
            plugins.retain(|p| {
                let keep = !is_type(p, our_type) || !seen;
                seen |= is_type(p, our_type);
                keep
            });
        }
    }
    check_splice(&text, &doc)?;
    Ok(text)
}

/// Removes every entry of type `plugin_type` from the conflist's `plugins`; the input unchanged
/// when there is none.
pub fn unmerge(conflist_json: &str, plugin_type: &str) -> Result<String, InstallError> {
    let (mut doc, _) = parse_conflist(conflist_json)?;
    plugins_mut(&mut doc)?.retain(|p| !is_type(p, plugin_type));
    let mut text = conflist_json.to_owned();
    while let Some(last) = find_ours(&text, plugin_type)?.last().copied() {
        text = remove_element(&text, last)?;
    }
    check_splice(&text, &doc)?;
    Ok(text)
}

/// Converts a single-plugin `.conf` into the equivalent `.conflist` (what libcni's
/// `ConfListFromConf` does): the conf becomes the only plugin, `cniVersion` and `name` are
/// lifted to the list.
pub fn conf_to_conflist(conf_json: &str) -> Result<String, InstallError> {
    let conf: Value = serde_json::from_str(conf_json).map_err(|e| InstallError::Json {
        reason: e.to_string(),
    })?;
    let Some(obj) = conf.as_object() else {
        return Err(not_conf("not a JSON object"));
    };
    if obj.contains_key("plugins") {
        return Err(not_conf("has `plugins`: it is already a config list"));
    }
    if !obj.get("type").is_some_and(Value::is_string) {
        return Err(not_conf("no `type` string"));
    }
    let mut list = serde_json::Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = obj.get(key) {
            list.insert(key.to_owned(), v.clone());
        }
    }
    list.insert("plugins".to_owned(), Value::Array(vec![conf.clone()]));
    let mut text =
        serde_json::to_string_pretty(&Value::Object(list)).map_err(|e| InstallError::Json {
            reason: e.to_string(),
        })?;
    text.push('\n');
    Ok(text)
}

/// Chains `plugin_conf` into the primary CNI config of `dir`; returns the file now holding it.
/// Idempotent: nothing is written when it is already there and up to date.
pub fn install(dir: &Path, plugin_conf: &Value) -> Result<PathBuf, InstallError> {
    let our_type = plugin_type(plugin_conf)?;
    let primary = find_primary(dir, our_type)?;
    let in_file = |e: InstallError| InstallError::InFile {
        path: primary.path.clone(),
        source: Box::new(e),
    };
    if primary.is_list {
        let merged = merge(&primary.text, plugin_conf).map_err(in_file)?;
        if merged != primary.text {
            write_atomic(&primary.path, &merged)?;
        }
        return Ok(primary.path);
    }
    let list = conf_to_conflist(&primary.text).map_err(in_file)?;
    let merged = merge(&list, plugin_conf).map_err(in_file)?;
    let target = primary.path.with_extension("conflist");
    write_atomic(&target, &merged)?;
    // The rename both keeps the original for uninstall and takes it out of the runtime's view
    // (`x.conf` sorts before `x.conflist`, so it would otherwise stay the primary).
    let backup = backup_path(&primary.path);
    fs::rename(&primary.path, &backup).map_err(|source| InstallError::Io {
        path: primary.path.clone(),
        source,
    })?;
    Ok(target)
}

/// Removes our plugin from every CNI config in `dir` and restores converted `.conf` files.
/// Returns the files changed (restored originals, rewritten conflists). Idempotent.
pub fn uninstall(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut changed = Vec::new();
    for path in list_dir(dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(original_name) = name.strip_suffix(BACKUP_SUFFIX) else {
            continue;
        };
        let original = dir.join(original_name);
        let converted = original.with_extension("conflist");
        // Only delete the conflist if it is still the one we made (it holds our plugin).
        if converted != original
            && read_config(&converted)?.is_some_and(|(_, doc)| holds_type(&doc, PLUGIN_TYPE))
        {
            remove_file(&converted)?;
            changed.push(converted);
        }
        fs::rename(&path, &original).map_err(|source| InstallError::Io {
            path: path.clone(),
            source,
        })?;
        changed.push(original);
    }
    for path in config_files(dir)? {
        let Some((text, doc)) = read_config(&path)? else {
            continue;
        };
        if doc.get("plugins").is_some() && holds_type(&doc, PLUGIN_TYPE) {
            let cleaned = unmerge(&text, PLUGIN_TYPE).map_err(|e| InstallError::InFile {
                path: path.clone(),
                source: Box::new(e),
            })?;
            write_atomic(&path, &cleaned)?;
            changed.push(path);
        }
    }
    Ok(changed)
}

/// Whether the runtime's current primary config chains our plugin.
pub fn is_installed(dir: &Path) -> bool {
    find_primary(dir, PLUGIN_TYPE).is_ok_and(|p| p.is_list && holds_type(&p.doc, PLUGIN_TYPE))
}

/// The config the runtime would use.
struct Primary {
    path: PathBuf,
    text: String,
    doc: Value,
    /// A `plugins` list (else a single-plugin conf).
    is_list: bool,
}

fn find_primary(dir: &Path, our_type: &str) -> Result<Primary, InstallError> {
    let mut skipped = Vec::new();
    for path in config_files(dir)? {
        let shown = path.display().to_string();
        let Some((text, doc)) = read_config(&path)? else {
            skipped.push(format!("{shown} (not a JSON object)"));
            continue;
        };
        let is_list = match (doc.get("plugins"), doc.get("type")) {
            (Some(Value::Array(plugins)), _) if !plugins.is_empty() => true,
            (None, Some(Value::String(_))) => false,
            _ => {
                skipped.push(format!("{shown} (neither a conf nor a conflist)"));
                continue;
            }
        };
        let only_ours = if is_list {
            doc["plugins"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|p| is_type(p, our_type)))
        } else {
            is_type(&doc, our_type)
        };
        if only_ours {
            skipped.push(format!("{shown} (only our plugin)"));
            continue;
        }
        return Ok(Primary {
            path,
            text,
            doc,
            is_list,
        });
    }
    Err(InstallError::NoPrimaryConfig {
        dir: dir.to_owned(),
        skipped,
    })
}

/// Every file in `dir`, sorted by name.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let io_err = |source| InstallError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if entry.file_type().map_err(io_err)?.is_file() {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

/// The CNI config files of `dir` in the order the runtime considers them.
fn config_files(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    Ok(list_dir(dir)?
        .into_iter()
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e))
        })
        .collect())
}

/// Reads a config file; `None` if it does not exist or is not a JSON object.
fn read_config(path: &Path) -> Result<Option<(String, Value)>, InstallError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // Not UTF-8: not a config we could load or edit.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
        Err(source) => {
            return Err(InstallError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    Ok(serde_json::from_str::<Value>(&text)
        .ok()
        .filter(Value::is_object)
        .map(|doc| (text, doc)))
}

/// Writes `text` to `path` via a temporary file and a rename, keeping the old file's mode.
fn write_atomic(path: &Path, text: &str) -> Result<(), InstallError> {
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| InstallError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hidden and without a config extension: the runtime never loads it half-written.
    let tmp = dir.join(format!(".{name}.ambit-tmp"));
    let mut file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    if let Ok(meta) = fs::metadata(path) {
        file.set_permissions(meta.permissions())
            .map_err(io_err(&tmp))?;
    }
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    // Make the rename itself durable; failing that is not worth failing the install over.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), InstallError> {
    fs::remove_file(path).map_err(|source| InstallError::Io {
        path: path.to_owned(),
        source,
    })
}

fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(BACKUP_SUFFIX);
    PathBuf::from(name)
}

fn plugin_type(plugin_conf: &Value) -> Result<&str, InstallError> {
    plugin_conf
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| InstallError::PluginConf {
            reason: "needs a non-empty `type` string".to_owned(),
        })
}

fn is_type(plugin: &Value, plugin_type: &str) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(plugin_type)
}

fn holds_type(doc: &Value, plugin_type: &str) -> bool {
    doc.get("plugins")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|p| is_type(p, plugin_type)))
}

/// Parses a conflist and finds the span of its `plugins` array.
fn parse_conflist(text: &str) -> Result<(Value, std::ops::Range<usize>), InstallError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| InstallError::Json {
        reason: e.to_string(),
    })?;
    if !doc.is_object() {
        return Err(not_list("not a JSON object"));
    }
    if !doc.get("plugins").is_some_and(Value::is_array) {
        return Err(not_list("no `plugins` array"));
    }
    // The last `plugins` key wins in serde_json, so take the last one here too.
    let span = spans::object_members(text)
        .map_err(scan)?
        .into_iter()
        .rev()
        .find(|(key, _)| {
            serde_json::from_str::<String>(&text[key.clone()])
                .ok()
                .as_deref()
                == Some("plugins")
        })
        .map(|(_, value)| value)
        .ok_or_else(scan_mismatch)?;
    Ok((doc, span))
}

fn plugins_mut(doc: &mut Value) -> Result<&mut Vec<Value>, InstallError> {
    doc.get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| not_list("no `plugins` array"))
}

fn current_elements(text: &str) -> Result<Vec<std::ops::Range<usize>>, InstallError> {
    let (_, span) = parse_conflist(text)?;
    spans::array_elements(text, span).map_err(scan)
}

/// Indexes of `plugins` entries of type `plugin_type`.
fn find_ours(text: &str, plugin_type: &str) -> Result<Vec<usize>, InstallError> {
    let (doc, _) = parse_conflist(text)?;
    Ok(doc["plugins"]
        .as_array()
        .map(|ps| {
            (0..ps.len())
                .filter(|&i| is_type(&ps[i], plugin_type))
                .collect()
        })
        .unwrap_or_default())
}

/// Removes entry `index` of `plugins` with the separator that belongs to it: the `,` and
/// whitespace before it, or after it when it is the first entry.
fn remove_element(text: &str, index: usize) -> Result<String, InstallError> {
    let elements = current_elements(text)?;
    let Some(target) = elements.get(index) else {
        return Err(scan_mismatch());
    };
    let range = if index > 0 {
        elements[index - 1].end..target.end
    } else if let Some(next) = elements.get(1) {
        target.start..next.start
    } else {
        target.clone()
    };
    let mut out = text.to_owned();
    out.replace_range(range, "");
    Ok(out)
}

/// The spliced text must mean exactly what the edited document means; anything else is a bug
/// in the scanner, reported rather than written to the node's CNI config.
fn check_splice(text: &str, expected: &Value) -> Result<(), InstallError> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v == *expected => Ok(()),
        _ => Err(scan_mismatch()),
    }
}

fn scan(e: spans::ScanError) -> InstallError {
    InstallError::Json {
        reason: e.to_string(),
    }
}

fn scan_mismatch() -> InstallError {
    InstallError::Json {
        reason: "internal error: spliced text does not match the parsed document".to_owned(),
    }
}

fn not_list(reason: &str) -> InstallError {
    InstallError::NotAConflist {
        reason: reason.to_owned(),
    }
}

fn not_conf(reason: &str) -> InstallError {
    InstallError::NotAConf {
        reason: reason.to_owned(),
    }
}
