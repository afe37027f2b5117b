//! Where lynshim's Python package is, from this binary's place, which interpreter to hand a command
//! line to, and whether a run can be launched here exactly as the Python launcher
//! (`python/lynshim/_launch.py`) would launch it.
//!
//! The binary is installed as a script of the lynshim wheel, `<prefix>/bin/lynshim`. The installation it
//! belongs to is the `lynshim-*.dist-info` whose `RECORD` lists it (as `../../../bin/lynshim`), in one
//! of `<prefix>/lib*/python3.*/{site,dist}-packages`: so a prefix holding lynshim for two Python
//! versions (`~/.local`) gives the package of the install that wrote this binary, not a stale other one.
//! The package is then beside that `RECORD`, or, for an editable install (`maturin develop`), in a folder
//! named by a `lynshim*.pth` file there. Nothing else is searched: asking a Python would cost what this
//! binary exists to save, and when the package is not found the run goes to the Python launcher.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The installed `lynshim` package folder.
pub struct Package {
    root: PathBuf,
    /// Its installation's bytecode tag (`cpython-311`), in the name of the bootstrap's cached file.
    bytecode_tag: String,
}

/// The installation this binary belongs to: its site-packages folder and that folder's Python version.
struct Installation {
    site: PathBuf,
    /// `python3.11`, from `lib/python3.11/site-packages`.
    python_name: String,
}

impl Installation {
    /// The installation whose `RECORD` lists this binary.
    fn of_this_binary() -> Option<Self> {
        let exe = std::env::current_exe().ok()?;
        let bin = exe.parent()?;
        let recorded =
            format!("../../../{}/{},", bin.file_name()?.to_string_lossy(), exe.file_name()?.to_string_lossy());
        // The size too: an older lynshim, whose console script had the same name, may be installed
        // for another Python version in the same prefix.
        let size = fs::metadata(&exe).ok()?.len().to_string();
        let lists_this_binary = |line: &str| {
            line.strip_prefix(&recorded).is_some_and(|rest| rest.rsplit(',').next() == Some(size.as_str()))
        };
        site_packages(bin.parent()?).into_iter().find_map(|(site, python_name)| {
            records(&site).any(|record| record.lines().any(lists_this_binary)).then_some(Self { site, python_name })
        })
    }

    /// The tag of this installation's cached bytecode: `cpython-311` for `python3.11`.
    fn bytecode_tag(&self) -> String {
        format!("cpython-{}", self.python_name.trim_start_matches("python").replace('.', ""))
    }

    /// The package: in the site-packages folder (a wheel's), or where one of its `lynshim*.pth` files
    /// points (an editable install's).
    fn package(&self) -> Option<Package> {
        std::iter::once(self.site.clone())
            .chain(pth_folders(&self.site))
            .map(|folder| folder.join("lynshim"))
            .find(|root| root.join("_bootstrap").join("sitecustomize.py").is_file())
            .and_then(|root| fs::canonicalize(root).ok())
            .map(|root| Package { root, bytecode_tag: self.bytecode_tag() })
    }
}

impl Package {
    /// The package this binary was installed with, or `None`.
    pub fn locate() -> Option<Self> {
        Installation::of_this_binary()?.package()
    }

    /// The bootstrap `sitecustomize`'s folder, first on the traced command's `PYTHONPATH`.
    pub fn bootstrap_dir(&self) -> PathBuf {
        self.root.join("_bootstrap")
    }

    /// The exec-tracing preload library (`crates/lynexec`), installed or not.
    pub fn preload_library(&self) -> PathBuf {
        self.root.join("_preload").join("liblynexec.so")
    }

    /// Whether nothing is left for Python to do before the command starts: the bootstrap's bytecode
    /// for this installation's interpreter is cached and fresh, or cannot be written (the Python
    /// launcher then writes nothing either). The Python launcher writes it when missing or stale
    /// (py_compile), because under `PYTHONDONTWRITEBYTECODE` every traced process would otherwise
    /// compile it again; such a run goes to the Python launcher, and later ones come back here.
    pub fn launches_natively(&self) -> bool {
        let bootstrap = self.bootstrap_dir();
        let Ok(source) = fs::metadata(bootstrap.join("sitecustomize.py")).and_then(|m| m.modified()) else {
            return false;
        };
        // Where Python caches it: beside the source, or mirrored under PYTHONPYCACHEPREFIX.
        let cache = match std::env::var_os("PYTHONPYCACHEPREFIX").filter(|p| !p.is_empty()) {
            Some(prefix) => PathBuf::from(prefix).join(bootstrap.strip_prefix("/").unwrap_or(&bootstrap)),
            None => bootstrap.join("__pycache__"),
        };
        let cached = cache.join(format!("sitecustomize.{}.pyc", self.bytecode_tag));
        let fresh = fs::metadata(&cached).and_then(|m| m.modified()).is_ok_and(|cached: SystemTime| cached >= source);
        fresh || !writable(cache.ancestors().find(|dir| dir.is_dir()).unwrap_or(&cache))
    }
}

/// Whether this process may create files in `dir`.
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: path is a valid NUL-terminated string.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// `(<prefix>/lib*/python3.*/{site,dist}-packages, "python3.*")` for the folders that exist.
fn site_packages(prefix: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for lib in ["lib", "lib64"] {
        let Ok(entries) = fs::read_dir(prefix.join(lib)) else { continue };
        let mut pythons: Vec<(PathBuf, String)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("python3").then(|| (e.path(), name))
            })
            .collect();
        pythons.sort();
        for (python, name) in pythons {
            for site in ["site-packages", "dist-packages"] {
                let site = python.join(site);
                if site.is_dir() {
                    found.push((site, name.clone()));
                }
            }
        }
    }
    found
}

/// The `RECORD` files of the lynshim distributions installed in a site-packages folder.
fn records(site: &Path) -> impl Iterator<Item = String> {
    fs::read_dir(site)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("lynshim-") && name.ends_with(".dist-info")
        })
        .filter_map(|e| fs::read_to_string(e.path().join("RECORD")).ok())
}

/// Folders named by the `lynshim*.pth` files of a site-packages folder (an editable install's), in the
/// order Python reads them (sorted by file name).
fn pth_folders(site: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(site) else { return Vec::new() };
    let mut pth: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.contains("lynshim") && name.ends_with(".pth")
        })
        .map(|e| e.path())
        .collect();
    pth.sort();
    pth.iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .flat_map(|text| {
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with("import"))
                .map(|line| site.join(line))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether `pyproject.toml` in the working directory may configure lynshim (a `tool.lynshim` table, in
/// any of TOML's spellings): such a run goes to the Python launcher, which reads the table with tomllib.
/// A file that cannot be read counts too: the Python launcher then says what is wrong with it.
pub fn pyproject_configures_lynshim(cwd: &Path) -> bool {
    match fs::read(cwd.join("pyproject.toml")) {
        Ok(bytes) => configures_lynshim(&String::from_utf8_lossy(&bytes)),
        Err(err) => err.kind() != std::io::ErrorKind::NotFound,
    }
}

/// A line-by-line look for `tool.lynshim`: as a table header (`[tool.lynshim]`, `[[tool.lynshim.targets]]`,
/// spaced or quoted), as a dotted key under `[tool]` (`lynshim.skip = …`, `lynshim = {…}`) or at the top
/// (`tool.lynshim.skip = …`, `tool = {lynshim = {…}}`: TOML keeps an inline table on one line). Not a
/// TOML parser: a string spanning lines that happens to read like one of these sends the run to Python,
/// which then finds no table; a table this misses is not TOML.
fn configures_lynshim(toml: &str) -> bool {
    let is_lynshim = |name: &str| name == "tool.lynshim" || name.starts_with("tool.lynshim.");
    let mut table = String::new();
    for line in toml.lines() {
        let line: String = line.trim().chars().filter(|c| !matches!(c, ' ' | '\t' | '"' | '\'')).collect();
        if line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let name = header.trim_start_matches('[').split(']').next().unwrap_or_default();
            if is_lynshim(name) {
                return true;
            }
            name.clone_into(&mut table);
            continue;
        }
        let key = line.split('=').next().unwrap_or_default();
        let full_key = if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") };
        if is_lynshim(&full_key) || (full_key == "tool" && line.contains("lynshim")) {
            return true;
        }
    }
    false
}

/// The interpreters to hand a command line to, in order: its installation's (`python3.11` beside this
/// binary, for a package found in `lib/python3.11/`), `python3` or `python` beside it (a virtual
/// environment's), then that version's and any `python3` on `PATH`.
pub fn pythons() -> Vec<PathBuf> {
    let versioned = Installation::of_this_binary().map(|i| i.python_name);
    let names: Vec<String> = versioned.iter().cloned().chain(["python3".to_owned(), "python".to_owned()]).collect();
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf));
    let mut found: Vec<PathBuf> = beside
        .into_iter()
        .flat_map(|bin| names.iter().map(move |name| bin.join(name)).collect::<Vec<_>>())
        .filter(|p| p.is_file())
        .collect();
    found.extend(versioned.into_iter().chain(["python3".to_owned()]).map(PathBuf::from));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_tool_lynshim_table_sends_the_run_to_python() {
        for toml in [
            "[tool.lynshim]\nskip = ['x']\n",
            "[project]\nname = 'x'\n\n[[tool.lynshim.targets]]\nmodule = 'm'\n",
            "[ tool . \"lynshim\" ]\n",
            "[tool]\nlynshim.skip = ['x']\n",
            "[tool]\nlynshim = { skip = ['x'] }\n",
            "tool.lynshim.skip = ['x']\n",
            "tool = { lynshim = { skip = ['x'] } }\n",
        ] {
            assert!(configures_lynshim(toml), "{toml}");
        }
        for toml in [
            "",
            "[project]\nname = 'lynshim'\ndependencies = [\n  'lynshim',\n]\n",
            "[tool.maturin]\nmodule-name = 'lynshim._native'\n",
            "[tool.lynshimmer]\n",
            "# [tool.lynshim]\n",
        ] {
            assert!(!configures_lynshim(toml), "{toml}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!pyproject_configures_lynshim(dir.path()));
        fs::write(dir.path().join("pyproject.toml"), "[tool.lynshim]\n").expect("write");
        assert!(pyproject_configures_lynshim(dir.path()));
    }

    #[test]
    fn editable_installs_are_found_through_their_pth_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = dir.path().join("lib/python3.11/site-packages");
        fs::create_dir_all(&site).expect("mkdir");
        fs::write(site.join("lynshim.pth"), "# comment\nimport something\n/src/python\n\n").expect("write");
        fs::write(site.join("other.pth"), "/elsewhere\n").expect("write");
        assert_eq!(site_packages(dir.path()), vec![(site.clone(), "python3.11".to_owned())]);
        assert_eq!(pth_folders(&site), vec![PathBuf::from("/src/python")]);
    }

    #[test]
    fn records_are_read_from_lynshim_distributions_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (dist, text) in
            [("lynshim-0.1.0.dist-info", "../../../bin/lynshim,sha256=x,1\n"), ("other-1.dist-info", "x")]
        {
            fs::create_dir_all(dir.path().join(dist)).expect("mkdir");
            fs::write(dir.path().join(dist).join("RECORD"), text).expect("write");
        }
        assert_eq!(records(dir.path()).collect::<Vec<_>>(), vec!["../../../bin/lynshim,sha256=x,1\n".to_owned()]);
    }
}
