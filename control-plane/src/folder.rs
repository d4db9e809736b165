//! The single-machine config source: a folder of the same YAML documents one would
//! `kubectl apply` (multi-document files allowed).
//!
//! Invariants:
//! - Only the folder's top-level `*.yaml`, `*.yml` and `*.json` files are read (names compared
//!   case-insensitively), in name order, so the result does not depend on directory order.
//!   Hidden entries (`.name`) are skipped: a Kubernetes ConfigMap mount keeps its real files in
//!   `..data/` and links them from the top level, which is what is read. Symbolic links are
//!   followed.
//! - Only an unreadable folder fails the load. A file that cannot be read, is not UTF-8 or holds
//!   bad documents is reported in [`FolderContents::problems`] and everything else still loads.
//!
//! Watching is polling [`fingerprint`]: cheap (metadata only) and the same on every platform.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::objects::{parse_documents, Object, ObjectError, ObjectRef};
use crate::translate::{translate, Problem, Severity, TranslateConfig, Translation};

#[cfg(test)]
mod tests;

/// Everything read from a folder.
#[derive(Debug, Default)]
pub struct FolderContents {
    /// In file-name order, then document order.
    pub objects: Vec<Object>,
    pub problems: Vec<FileProblem>,
}

/// Something wrong with one file or one of its documents.
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", file.display())]
pub struct FileProblem {
    pub file: PathBuf,
    pub error: FileError,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    #[error("not valid UTF-8 (first bad byte at offset {offset}); file ignored")]
    NotUtf8 { offset: usize },
    #[error(transparent)]
    Document(ObjectError),
}

/// The folder itself cannot be listed.
#[derive(Debug, thiserror::Error)]
#[error("reading folder {}: {source}", path.display())]
pub struct FolderError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileProblem {
    /// As a translation [`Problem`], for one list of everything wrong with the config.
    pub fn to_problem(&self) -> Problem {
        let file = self.file.display().to_string();
        match &self.error {
            FileError::Document(e) => Problem::from_object_error(e, &file),
            other => Problem {
                severity: Severity::Error,
                object: ObjectRef::default(),
                field: String::new(),
                message: format!("{other} [{file}]"),
            },
        }
    }
}

/// The config files of `dir`, sorted by name (see the module invariants).
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let err = |source| FolderError {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let ext = Path::new(name.as_ref())
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if !matches!(ext.as_deref(), Some("yaml" | "yml" | "json")) {
            continue;
        }
        // `fs::metadata` follows links; a dangling one is reported when read.
        let path = entry.path();
        if fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
            continue;
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// Reads every config file of `dir`.
pub fn load_folder(dir: &Path) -> Result<FolderContents, FolderError> {
    let mut out = FolderContents::default();
    for file in config_files(dir)? {
        let problem = |error| FileProblem {
            file: file.clone(),
            error,
        };
        let bytes = match fs::read(&file) {
            Ok(b) => b,
            Err(e) => {
                out.problems.push(problem(FileError::Io(e)));
                continue;
            }
        };
        let text = match std::str::from_utf8(&bytes) {
            Ok(t) => t,
            Err(e) => {
                out.problems.push(problem(FileError::NotUtf8 {
                    offset: e.valid_up_to(),
                }));
                continue;
            }
        };
        for result in parse_documents(text) {
            match result {
                Ok(o) => out.objects.push(o),
                Err(e) => out.problems.push(problem(FileError::Document(e))),
            }
        }
    }
    Ok(out)
}

/// Loads and translates `dir`: file and document problems first, then translation problems.
pub fn translate_folder(dir: &Path, cfg: &TranslateConfig) -> Result<Translation, FolderError> {
    let contents = load_folder(dir)?;
    let mut translation = translate(&contents.objects, cfg);
    let mut problems: Vec<Problem> = contents
        .problems
        .iter()
        .map(FileProblem::to_problem)
        .collect();
    problems.append(&mut translation.problems);
    translation.problems = problems;
    Ok(translation)
}

/// What changes when a config file changes: each file's path, length and modification time.
/// Poll it and reload when it differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

pub fn fingerprint(dir: &Path) -> Result<Fingerprint, FolderError> {
    Ok(Fingerprint(
        config_files(dir)?
            .into_iter()
            .map(|f| {
                let meta = fs::metadata(&f).ok();
                let len = meta.as_ref().map_or(0, |m| m.len());
                let modified = meta.and_then(|m| m.modified().ok());
                (f, len, modified)
            })
            .collect(),
    ))
}
