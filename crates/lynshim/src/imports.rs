//! The import hook: a span per module import, and post-import patching, without running Python code
//! for the imports that need none.
//!
//! CPython loads every module not yet in `sys.modules` through `importlib._bootstrap._find_and_load`,
//! which, holding the module's import lock, calls `_find_and_load_unlocked(name, import_)` by a global
//! lookup in `importlib._bootstrap` (the frozen `_frozen_importlib`, whatever imports: the `import`
//! statement, `__import__`, `importlib.import_module`). lynshim puts an [`ImportHook`] in that global's
//! place (`python/lynshim/_imports.py`). For each module the hook
//!
//! - opens a span named after the module in category `import`, unless the parent's import brought
//!   the module in already; when the parent package is not imported yet, the span opens only once the
//!   original has imported it (through a stand-in for its `import_`, [`ParentThenSpan`]), so that the
//!   parent's span is its own and not nested inside the child's, and every Python frame of the import
//!   (a failing parent's traceback included) is the one bare Python has;
//! - calls the original, which finds, creates and executes the module, as `python -X importtime` times
//!   it; nested imports nest;
//! - closes the span, with the exception's type name as `error` when the import failed;
//! - and, for the few modules `lynshim._patch` acts on (decided here from a set of names), calls
//!   `_patch.module_loaded`. That is still inside the import lock and before the import returns, so
//!   before any other module can copy a patched name with `from m import f`.
//!
//! Nothing else is touched: finders, loaders, `module.__loader__` and `__spec__.loader` stay what the
//! import system made them, and `importlib.util.find_spec` (which only asks) opens no span.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lynschema::{arg, category};
use pyo3::exceptions::PyException;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyString;
use pyo3::PyTraverseError;

use crate::json::push_str;
use crate::session;

/// Stands in for `importlib._bootstrap._find_and_load_unlocked`.
#[pyclass(frozen, module = "lynshim._native")]
pub struct ImportHook {
    /// The original `_find_and_load_unlocked`.
    find_and_load_unlocked: Py<PyAny>,
    /// The `sys` module: `sys.modules` is read from it on each import, as importlib does.
    sys: Py<PyAny>,
    /// Names of the modules `module_loaded` acts on.
    watched: HashSet<String>,
    /// `lynshim._patch.module_loaded`.
    module_loaded: Py<PyAny>,
    /// Open import spans (`LYNSHIM_IMPORTS=0` turns them off; patching goes on).
    record_imports: AtomicBool,
}

#[pymethods]
impl ImportHook {
    /// The references the garbage collector must see, as for a traced function (`probe.rs`,
    /// `TracedFunction::__traverse__`): `module_loaded` holds `lynshim._patch`'s globals.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.find_and_load_unlocked)?;
        visit.call(&self.sys)?;
        visit.call(&self.module_loaded)
    }

    #[new]
    #[pyo3(signature = (find_and_load_unlocked, sys, watched, module_loaded, record_imports))]
    fn new(
        find_and_load_unlocked: Py<PyAny>,
        sys: Py<PyAny>,
        watched: HashSet<String>,
        module_loaded: Py<PyAny>,
        record_imports: bool,
    ) -> Self {
        Self { find_and_load_unlocked, sys, watched, module_loaded, record_imports: AtomicBool::new(record_imports) }
    }

    /// Turn import spans on or off.
    fn set_record_imports(&self, on: bool) {
        self.record_imports.store(on, Ordering::Relaxed);
    }

    /// Import `name` as `_find_and_load_unlocked(name, import_)` does, as a span.
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyString>,
        import_: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let original = self.find_and_load_unlocked.bind(py);
        // A name that is not valid UTF-8 (a lone surrogate) cannot name a span; the original gives it
        // whatever outcome bare Python does (ModuleNotFoundError, as a rule).
        let Ok(text) = name.to_cow() else {
            return original.call1((name, import_));
        };
        let record = self.record_imports.load(Ordering::Relaxed) && session::is_recording();
        if let Some((parent, _)) = text.rsplit_once('.') {
            let modules = self.sys.bind(py).getattr(intern!(py, "modules"))?;
            if !modules.contains(parent)? {
                // The original imports the parent itself, through `import_`: handing it a stand-in that
                // opens this module's span once the parent is in keeps the parent's span its own, and
                // every Python frame (tracebacks of a failing parent included) where bare Python has it.
                let then = Bound::new(
                    py,
                    ParentThenSpan {
                        import_: import_.clone().unbind(),
                        name: name.clone().unbind(),
                        sys: self.sys.clone_ref(py),
                        record,
                        token: AtomicU64::new(0),
                    },
                )?;
                let outcome = original.call1((name, &then));
                let token = then.get().token.load(Ordering::Relaxed);
                return self.finish(py, &text, token, outcome);
            }
        }
        let token = if record { open_span(py, &text) } else { 0 };
        let outcome = original.call1((name, import_));
        self.finish(py, &text, token, outcome)
    }
}

impl ImportHook {
    /// Close the import's span and patch the module if it is one `_patch` acts on.
    fn finish<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        token: u64,
        outcome: PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if token != 0 {
            let end = outcome.as_ref().err().map(|err| error_json(py, err));
            crate::guarded((), || session::exit(token, end.as_deref()));
        }
        if let Ok(module) = &outcome {
            if self.watched.contains(text) {
                // Patching must never break the import it follows, but Ctrl-C and `sys.exit` raised
                // meanwhile are the program's own and go on to it.
                if let Err(err) = self.module_loaded.bind(py).call1((module,)) {
                    if !err.is_instance_of::<PyException>(py) {
                        return Err(err);
                    }
                    warn_patch_failed(text, &err);
                }
            }
        }
        outcome
    }
}

/// What the original `_find_and_load_unlocked` is given as `import_` for a submodule whose parent is
/// not imported yet: it imports the parent (the original calls it for nothing else) and then opens the
/// submodule's span, which the hook closes.
#[pyclass(frozen, module = "lynshim._native")]
struct ParentThenSpan {
    /// The `import_` the hook was given (`_gcd_import`).
    import_: Py<PyAny>,
    /// The submodule's name.
    name: Py<PyString>,
    /// The `sys` module.
    sys: Py<PyAny>,
    /// Open the span (import spans on and a session recording, when the import began).
    record: bool,
    /// The span's token once open; 0 until then.
    token: AtomicU64,
}

#[pymethods]
impl ParentThenSpan {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.import_)?;
        visit.call(&self.name)?;
        visit.call(&self.sys)
    }

    fn __call__<'py>(&self, py: Python<'py>, parent: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let module = self.import_.bind(py).call1((parent,))?;
        let name = self.name.bind(py);
        // As with the hook's own check: the parent's import may have imported the submodule, and the
        // original then returns it with no import of its own to time.
        if self.record {
            let modules = self.sys.bind(py).getattr(intern!(py, "modules"))?;
            if !modules.contains(name)? {
                if let Ok(text) = name.to_cow() {
                    self.token.store(open_span(py, &text), Ordering::Relaxed);
                }
            }
        }
        Ok(module)
    }
}

/// Open an import span named `module` on this thread; 0 when none opens.
fn open_span(py: Python<'_>, module: &str) -> u64 {
    crate::guarded(0, || {
        session::enter(Cow::Owned(module.to_owned()), Cow::Borrowed(category::IMPORT), None::<&str>, || {
            crate::python_thread_name(py)
        })
    })
}

/// Set by the first patch failure: one line per process is enough to point at the problem.
static PATCH_WARNED: AtomicBool = AtomicBool::new(false);

/// Say once that a module could not be patched. Tracing stays on (imports and the other modules'
/// targets are still traced), so this is not [`session::warn_once`], which says tracing is off and is
/// kept for when it is.
fn warn_patch_failed(module: &str, err: &PyErr) {
    if !PATCH_WARNED.swap(true, Ordering::SeqCst) {
        eprintln!(
            "lynshim: patching {module} failed ({err}); its functions are not traced, the program runs on unchanged"
        );
    }
}

/// `{"error": "<exception type name>"}`, what a failed import records at its end.
fn error_json(py: Python<'_>, err: &PyErr) -> String {
    let name = err.get_type(py).name().map(|n| n.to_string()).unwrap_or_default();
    let mut out = String::with_capacity(16 + name.len());
    out.push('{');
    push_str(&mut out, arg::ERROR);
    out.push(':');
    push_str(&mut out, &name);
    out.push('}');
    out
}
