//! A probe: everything lynshim needs to trace one wrapped function, worked out once when it is wrapped,
//! and the hot path of every traced call.
//!
//! A traced call may cost at most a microsecond more than the bare call (issue #3), so the work of a
//! call happens here rather than in Python: the wrapper Python sees is `lambda *a, **k: call(probe, a, k)`
//! (see `python/lynshim/_patch.py`), and [`call`] describes the arguments, records the span's begin,
//! calls the function, describes the result or the exception, and records the end.
//!
//! What a span records about a call: its arguments by parameter name (defaults included, since a
//! default config file is still a file read), each as a short scalar — strings cut to
//! [`MAX_ARG_CHARS`], lists of paths joined, mappings reduced to the keys that say what is read
//! ([`DETAIL_KEYS`], for [`DETAIL_PARAMS`] only), data frames to their shape, anything else to its
//! type name; arguments whose names look like credentials are replaced by [`arg::REDACTED`], whatever
//! their value. Common values (relative paths, names, numbers, plain dicts) are described here; the
//! rest, including absolute paths (made relative to the working directory), by Python's
//! `lynshim._args.describe_value`, so that there is one definition of each rule.

use std::borrow::Cow;
use std::cell::RefCell;

use lynschema::{arg, is_credential_name, DETAIL_KEYS, DETAIL_PARAMS, MAX_ARG_CHARS, SKIP_PARAMS};
use pyo3::exceptions::PyAttributeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PySet, PyString, PyTuple, PyType};
use pyo3::Borrowed;
use serde_json::Value;
use smallvec::SmallVec;

use crate::json::{push_int, push_str, push_value};
use crate::{session, to_json};

/// One described argument. Strings are borrowed from the call's own argument objects where they can
/// be: a traced call allocates once for the list of args and once for their JSON text.
enum Arg<'a> {
    Str(&'a str),
    String(String),
    Value(Value),
    Default(&'a Value),
    Redacted,
    /// A mapping recorded by its size: `dict[n]`.
    DictLen(usize),
    /// An integer, written without going through a `serde_json::Value`.
    Int(i64),
}

impl Arg<'_> {
    fn into_owned(self) -> Arg<'static> {
        match self {
            Arg::Str(s) => Arg::String(s.to_owned()),
            Arg::Default(v) => Arg::Value(v.clone()),
            Arg::String(s) => Arg::String(s),
            Arg::Value(v) => Arg::Value(v),
            Arg::Redacted => Arg::Redacted,
            Arg::DictLen(n) => Arg::DictLen(n),
            Arg::Int(n) => Arg::Int(n),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Arg::Str(s) => s.into(),
            Arg::String(s) => s.into(),
            Arg::Value(v) => v,
            Arg::Default(v) => v.clone(),
            Arg::Redacted => arg::REDACTED.into(),
            Arg::DictLen(n) => format!("dict[{n}]").into(),
            Arg::Int(n) => n.into(),
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Arg::Value(Value::Null)) || matches!(self, Arg::Default(Value::Null))
    }

    fn write(&self, out: &mut String) {
        match self {
            Arg::Str(s) => push_str(out, s),
            Arg::String(s) | Arg::Value(Value::String(s)) | Arg::Default(Value::String(s)) => push_str(out, s),
            Arg::Value(v) => push_value(out, v),
            Arg::Default(v) => push_value(out, v),
            Arg::Redacted => push_str(out, arg::REDACTED),
            Arg::DictLen(n) => {
                out.push_str("\"dict[");
                push_int(out, *n);
                out.push_str("]\"");
            }
            Arg::Int(n) => push_int(out, *n),
        }
    }
}

/// Args of a span, in the order Python would put them in a dict; a name set twice keeps its place.
/// (On the stack up to a handful: a traced call should not allocate for them.)
type Described<'a> = SmallVec<[(Cow<'a, str>, Arg<'a>); 6]>;

thread_local! {
    /// Where a traced call writes its args as JSON before the session copies them: one buffer per
    /// thread, reused. (A call traced while the buffer is in use — from Python code run to describe
    /// a value — gets a buffer of its own.)
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Run `f` with `pairs` written as a JSON object (`None` when there are none).
fn with_json<T>(pairs: &Described<'_>, f: impl FnOnce(Option<&str>) -> T) -> T {
    if pairs.is_empty() {
        return f(None);
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            write_json(pairs, &mut buffer);
            f(Some(&buffer))
        }
        Err(_) => f(Some(&described_json(pairs))),
    })
}

/// One wrapped function.
#[pyclass(frozen, module = "lynshim._native")]
pub struct Probe {
    /// Leaked: a probe lives as long as the process (patches are never undone), and spans borrow
    /// its names without counting references on the hot path.
    name: &'static str,
    cat: &'static str,
    function: Py<PyAny>,
    /// Positional parameter names, each with whether it looks like a credential.
    positional: Vec<(String, bool)>,
    /// Defaults, described when the function was wrapped (a function that mutates its own default
    /// list would be misreported).
    defaults: Vec<(String, Value)>,
    /// The function has a `field` parameter: record whether the field was found.
    takes_field: bool,
    /// `lynshim._args.describe_value`, for the values not described here.
    describe_value: Py<PyAny>,
}

#[pymethods]
impl Probe {
    #[new]
    #[pyo3(signature = (name, cat, function, positional, defaults, takes_field, describe_value))]
    fn new(
        name: &str,
        cat: &str,
        function: Py<PyAny>,
        positional: Vec<String>,
        defaults: &Bound<'_, PyDict>,
        takes_field: bool,
        describe_value: Py<PyAny>,
    ) -> PyResult<Self> {
        let mut probe = Self {
            name: Box::leak(name.into()),
            cat: Box::leak(cat.into()),
            function,
            positional: positional
                .into_iter()
                .map(|name| {
                    let secret = is_credential_name(&name);
                    (name, secret)
                })
                .collect(),
            defaults: Vec::new(),
            takes_field,
            describe_value,
        };
        for (key, value) in defaults.iter() {
            let key: String = key.extract()?;
            if SKIP_PARAMS.contains(&key.as_str()) {
                continue;
            }
            let described = if is_credential_name(&key) { Arg::Redacted } else { probe.value(&value)? };
            let described = described.into_value();
            probe.defaults.push((key, described));
        }
        Ok(probe)
    }

    /// The args a call with `args` and `kwargs` records, as a JSON object (for tests and benchmarks).
    #[pyo3(signature = (args, kwargs=None))]
    fn describe(&self, args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<String> {
        Ok(described_json(&self.describe_call(args, kwargs)?))
    }

    /// What a call's end records, given its result or its exception, as a JSON object.
    #[pyo3(signature = (args, kwargs=None, result=None, error=None))]
    fn describe_end(
        &self,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
        result: Option<&Bound<'_, PyAny>>,
        error: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let asked = self.asks_for_field(&self.describe_call(args, kwargs)?);
        let outcome = outcome_of(args.py(), result, error);
        Ok(described_json(&self.end_args(args.py(), asked, &outcome)))
    }
}

impl Probe {
    fn describe_call<'a>(
        &'a self,
        args: &'a Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Described<'a>> {
        let mut out = Described::new();
        self.describe_into(&mut out, args, kwargs)?;
        Ok(out)
    }

    /// [`Self::describe_call`] into `out`, in place: on the hot path the list of args, a few hundred
    /// bytes on the stack, is not moved from function to function.
    fn describe_into<'a>(
        &'a self,
        out: &mut Described<'a>,
        args: &'a Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        for (index, value) in args.iter_borrowed().enumerate() {
            let (name, secret) = match self.positional.get(index) {
                Some((name, secret)) => (Cow::Borrowed(name.as_str()), *secret),
                None => (Cow::Owned(format!("arg{index}")), false),
            };
            if !self.by_rule(out, &name, secret, &value)? {
                let described = Self::value_borrowed(&self.describe_value, value)?;
                set(out, name, described);
            }
        }
        if let Some(kwargs) = kwargs {
            for (name, value) in kwargs.iter() {
                let name = name.cast::<PyString>()?.to_cow()?.into_owned();
                let secret = is_credential_name(&name);
                if !self.by_rule(out, &name, secret, &value)? {
                    let described = self.value(&value)?;
                    set(out, Cow::Owned(name), described);
                }
            }
        }
        for (name, described) in &self.defaults {
            if !has(out, name) && !kwargs.is_some_and(|k| k.contains(name).unwrap_or(false)) {
                out.push((Cow::Borrowed(name), Arg::Default(described)));
            }
        }
        Ok(())
    }

    /// Apply the rules that decide an argument without describing its value — skipped, redacted,
    /// reduced to its details — and say whether one did. (The value is not even looked at then: `self`
    /// may be any object, a secret any value.)
    fn by_rule<'a>(
        &self,
        out: &mut Described<'a>,
        name: &str,
        secret: bool,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if SKIP_PARAMS.contains(&name) {
            return Ok(true);
        }
        if secret {
            set(out, Cow::Owned(name.to_owned()), Arg::Redacted);
            return Ok(true);
        }
        if DETAIL_PARAMS.contains(&name) {
            if let Ok(details) = value.cast_exact::<PyDict>() {
                let mut found = false;
                for key in DETAIL_KEYS {
                    if has(out, key) {
                        continue;
                    }
                    if let Some(inner) = details.get_item(key)? {
                        let described = if is_credential_name(key) { Arg::Redacted } else { self.value(&inner)? };
                        out.push((Cow::Borrowed(key), described));
                        found = true;
                    }
                }
                if found {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// One argument as a short JSON scalar, its text borrowed from the argument where possible.
    fn value_borrowed<'a>(describe_value: &Py<PyAny>, value: Borrowed<'a, '_, PyAny>) -> PyResult<Arg<'a>> {
        if let Ok(text) = value.cast_exact::<PyString>() {
            if let Ok(text) = text.extract::<&'a str>() {
                if !text.starts_with('/') {
                    return Ok(if text.len() <= MAX_ARG_CHARS { Arg::Str(text) } else { Arg::String(short(text)) });
                }
            }
        }
        Self::scalar(describe_value, &value)
    }

    /// [`Self::value_borrowed`], owning its text (for values that do not outlive the description:
    /// kwargs, details).
    fn value(&self, value: &Bound<'_, PyAny>) -> PyResult<Arg<'static>> {
        Self::value_borrowed(&self.describe_value, value.as_borrowed()).map(Arg::into_owned)
    }

    fn scalar<'a>(describe_value: &Py<PyAny>, value: &Bound<'_, PyAny>) -> PyResult<Arg<'a>> {
        if value.is_none() {
            return Ok(Arg::Value(Value::Null));
        } else if let Ok(flag) = value.cast_exact::<PyBool>() {
            return Ok(Arg::Value(Value::Bool(flag.is_true())));
        } else if value.is_exact_instance_of::<PyInt>() {
            if let Ok(number) = value.extract::<i64>() {
                return Ok(Arg::Int(number));
            }
        } else if let Ok(number) = value.cast_exact::<PyFloat>() {
            return Ok(Arg::Value(serde_json::json!(number.value())));
        } else if let Ok(dict) = value.cast_exact::<PyDict>() {
            return Ok(Arg::DictLen(dict.len()));
        }
        // Everything else, and absolute paths, as Python's describe_value has it.
        Ok(Arg::Value(to_json(&describe_value.bind(value.py()).call1((value,))?)))
    }

    fn asks_for_field(&self, described: &Described<'_>) -> bool {
        self.takes_field && described.iter().any(|(k, v)| k == arg::FIELD && !v.is_null())
    }

    /// Args recorded at the end: the exception's type, or a cheap size of the result; whether the field
    /// asked for was found.
    fn end_args(
        &self,
        py: Python<'_>,
        asked_for_field: bool,
        outcome: &PyResult<Bound<'_, PyAny>>,
    ) -> Described<'static> {
        let mut end = Described::new();
        match outcome {
            Ok(result) => {
                if let Some((key, size)) = result_size(result) {
                    end.push((Cow::Borrowed(key), Arg::Value(size)));
                }
                if asked_for_field {
                    end.push((Cow::Borrowed(arg::FOUND), Arg::Value(Value::Bool(true))));
                }
            }
            Err(err) => {
                let name = err.get_type(py).name().map(|n| n.to_string()).unwrap_or_default();
                let not_found = asked_for_field && name == "FileFormatError";
                end.push((Cow::Borrowed(arg::ERROR), Arg::String(name)));
                if not_found {
                    end.push((Cow::Borrowed(arg::FOUND), Arg::Value(Value::Bool(false))));
                }
            }
        }
        end
    }

    /// Record the begin of a call; returns its token and whether it asks for a field.
    fn begin(&self, py: Python<'_>, args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, PyDict>>) -> (u64, bool) {
        let mut described = Described::new();
        let asked = match self.describe_into(&mut described, args, kwargs) {
            Ok(()) => self.asks_for_field(&described),
            // Describing must never break the call.
            Err(err) => {
                let name = err.get_type(py).name().map(|n| n.to_string()).unwrap_or_default();
                described.clear();
                described.push((Cow::Borrowed(lynschema::arg::SHIM_ERROR), Arg::String(name)));
                false
            }
        };
        let token = with_json(&described, |args| {
            crate::guarded(0, || {
                session::enter(Cow::Borrowed(self.name), Cow::Borrowed(self.cat), args, || {
                    crate::python_thread_name(py)
                })
            })
        });
        (token, asked)
    }

    fn finish(&self, py: Python<'_>, token: u64, asked_for_field: bool, outcome: &PyResult<Bound<'_, PyAny>>) {
        if token == 0 {
            return;
        }
        let end = self.end_args(py, asked_for_field, outcome);
        with_json(&end, |end| crate::guarded((), || session::exit(token, end)));
    }
}

/// A cheap size of a result: rows of a data frame, length of a list or dict.
fn result_size(result: &Bound<'_, PyAny>) -> Option<(&'static str, Value)> {
    if result.is_none()
        || result.is_exact_instance_of::<PyString>()
        || result.is_exact_instance_of::<PyBool>()
        || result.is_exact_instance_of::<PyInt>()
        || result.is_exact_instance_of::<PyFloat>()
    {
        return None;
    }
    let container = result.is_instance_of::<PyList>()
        || result.is_instance_of::<PyTuple>()
        || result.is_instance_of::<PyDict>()
        || result.is_instance_of::<PySet>();
    // Built-in containers have no `shape`: skip asking (a failed getattr raises and clears an error).
    let exact_builtin = result.is_exact_instance_of::<PyList>()
        || result.is_exact_instance_of::<PyTuple>()
        || result.is_exact_instance_of::<PyDict>()
        || result.is_exact_instance_of::<PySet>();
    if !exact_builtin {
        match result.getattr("shape") {
            Ok(shape) => {
                if let Ok(shape) = shape.cast::<PyTuple>() {
                    if let Ok(rows) = shape.get_item(0) {
                        return Some((arg::ROWS, to_json(&rows)));
                    }
                }
            }
            Err(err) if err.is_instance_of::<PyAttributeError>(result.py()) => {}
            Err(_) => return None,
        }
    }
    if container {
        let kind = result.get_type().name().ok()?;
        let len = result.len().ok()?;
        return Some((arg::RESULT, format!("{kind}[{len}]").into()));
    }
    None
}

/// Call `probe`'s function with `args` and `kwargs`, as a span when tracing is on: returns what the
/// function returns, raises what it raises. (The call a [`TracedFunction`] makes, callable by itself
/// for benchmarks that take the wrapper apart.)
#[pyfunction]
pub fn call<'py>(
    py: Python<'py>,
    probe: &Bound<'py, Probe>,
    args: &Bound<'py, PyTuple>,
    kwargs: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    call_through(py, probe.get(), args, (!kwargs.is_empty()).then_some(kwargs))
}

fn call_through<'py>(
    py: Python<'py>,
    probe: &Probe,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let function = probe.function.bind(py);
    if !session::is_recording() {
        return function.call(args, kwargs);
    }
    // A panic in lynshim's own code must never reach the traced program (pyo3 would raise it there).
    let (token, asked) = crate::guarded((0, false), || probe.begin(py, args, kwargs));
    let outcome = function.call(args, kwargs);
    crate::guarded((), || probe.finish(py, token, asked, &outcome));
    outcome
}

/// The wrapper of a traced function, as the program sees it (`python/lynshim/_patch.py` makes one per
/// target): calling it is [`call`] with its probe, without a Python frame of its own in between, which
/// is most of what a Python-level wrapper added to a traced call.
///
/// It stays transparent as a wrapt-style proxy does: `_patch` gives it the original's `__name__`,
/// `__qualname__`, `__doc__`, `__module__`, `__annotations__`, `__dict__` and `__wrapped__` (so
/// `inspect.signature` reports the original signature); any other attribute (`__code__`,
/// `__defaults__`, ...) is the original's, `__class__` too (so `inspect.isfunction` holds); it binds as
/// a plain function does (a `types.MethodType`, made by `PyMethod_New`, on an instance, itself on a
/// class, and so through `classmethod` and `staticmethod`); it pickles and copies by its qualified name,
/// as a function does.
#[pyclass(frozen, dict, weakref, module = "lynshim._native")]
pub struct TracedFunction {
    probe: Py<Probe>,
}

extern "C" {
    /// CPython's `PyMethod_New(func, self)`, what `types.MethodType(func, self)` calls: public C API
    /// since Python 2, though outside the limited API pyo3-ffi declares for abi3 builds.
    fn PyMethod_New(func: *mut pyo3::ffi::PyObject, instance: *mut pyo3::ffi::PyObject) -> *mut pyo3::ffi::PyObject;
}

#[pymethods]
impl TracedFunction {
    #[new]
    fn new(probe: Py<Probe>) -> Self {
        Self { probe }
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        call_through(py, self.probe.get(), args, kwargs.filter(|k| !k.is_empty()))
    }

    fn __get__<'py>(
        slf: &Bound<'py, Self>,
        instance: Option<&Bound<'py, PyAny>>,
        owner: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = owner;
        match instance {
            // Built natively: `obj.method` runs on every method call, and calling `types.MethodType`
            // through Python cost a tuple and a type call each time.
            Some(instance) if !instance.is_none() => {
                // SAFETY: both pointers are live references held by the GIL-bound `slf` and `instance`
                // for the whole call; PyMethod_New takes new references to them and returns a new
                // reference, or NULL with an exception set, which `from_owned_ptr_or_err` turns into Err.
                unsafe { Bound::from_owned_ptr_or_err(slf.py(), PyMethod_New(slf.as_ptr(), instance.as_ptr())) }
            }
            _ => Ok(slf.clone().into_any()),
        }
    }

    /// The original's class, as wrapt's proxies report it: `isinstance(wrapper, types.FunctionType)` and
    /// so `inspect.isfunction(wrapper)` stay what they were for the original (`type(wrapper)` is still
    /// this class).
    #[getter(__class__)]
    fn original_class<'py>(&self, py: Python<'py>) -> Bound<'py, PyType> {
        self.probe.get().function.bind(py).get_type()
    }

    /// What is not the wrapper's own is the original's.
    fn __getattr__<'py>(&self, py: Python<'py>, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
        self.probe.get().function.bind(py).getattr(name)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let name = slf.getattr(intern!(slf.py(), "__qualname__"))?;
        Ok(format!("<function {name} at {:#x}>", slf.as_ptr() as usize))
    }

    /// Pickled and copied by name, as a function is: the name finds this wrapper where it was patched.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.getattr(intern!(slf.py(), "__qualname__"))
    }
}

/// The begin half of [`call`], for wrappers that must act between begin and call (server requests):
/// returns `(token, asks_for_field)` for [`probe_end`].
#[pyfunction]
#[pyo3(signature = (probe, args, kwargs=None))]
pub fn probe_begin(
    py: Python<'_>,
    probe: &Bound<'_, Probe>,
    args: &Bound<'_, PyTuple>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> (u64, bool) {
    if !session::is_recording() {
        return (0, false);
    }
    crate::guarded((0, false), || probe.get().begin(py, args, kwargs.filter(|k| !k.is_empty())))
}

/// The end half of [`call`]: `result`, or the exception `error`, plus `extra` args (server request ids).
#[pyfunction]
#[pyo3(signature = (probe, token, asks_for_field, result=None, error=None, extra=None))]
pub fn probe_end(
    py: Python<'_>,
    probe: &Bound<'_, Probe>,
    token: u64,
    asks_for_field: bool,
    result: Option<&Bound<'_, PyAny>>,
    error: Option<&Bound<'_, PyAny>>,
    extra: Option<&Bound<'_, PyDict>>,
) {
    if token == 0 {
        return;
    }
    let probe = probe.get();
    let outcome = outcome_of(py, result, error);
    let mut end = probe.end_args(py, asks_for_field, &outcome);
    if let Some(extra) = extra {
        for (key, value) in extra.iter() {
            if let Ok(key) = key.extract::<String>() {
                set(&mut end, Cow::Owned(key), Arg::Value(to_json(&value)));
            }
        }
    }
    let end = (!end.is_empty()).then(|| described_json(&end));
    crate::guarded((), || session::exit(token, end.as_deref()));
}

/// A call's outcome from what Python passes: the exception if there is one, else the result.
fn outcome_of<'py>(
    py: Python<'py>,
    result: Option<&Bound<'py, PyAny>>,
    error: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    match (result, error) {
        (_, Some(error)) => Err(PyErr::from_value(error.clone())),
        (Some(result), None) => Ok(result.clone()),
        (None, None) => Ok(py.None().into_bound(py)),
    }
}

fn has(out: &Described<'_>, name: &str) -> bool {
    out.iter().any(|(k, _)| k == name)
}

fn set<'a>(out: &mut Described<'a>, name: Cow<'a, str>, value: Arg<'a>) {
    match out.iter_mut().find(|(k, _)| *k == name) {
        Some(slot) => slot.1 = value,
        None => out.push((name, value)),
    }
}

/// Described args as a JSON object.
fn described_json(pairs: &Described<'_>) -> String {
    let mut out = String::with_capacity(16 + pairs.len() * 32);
    write_json(pairs, &mut out);
    out
}

fn write_json(pairs: &Described<'_>, out: &mut String) {
    out.push('{');
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, key);
        out.push(':');
        value.write(out);
    }
    out.push('}');
}

/// `text`, cut to [`MAX_ARG_CHARS`] characters ending in `…` when longer.
fn short(text: &str) -> String {
    if text.len() <= MAX_ARG_CHARS || text.chars().count() <= MAX_ARG_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_ARG_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_cut_by_characters() {
        let long = "é".repeat(MAX_ARG_CHARS + 5);
        let cut = short(&long);
        assert_eq!(cut.chars().count(), MAX_ARG_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(short("abc"), "abc");
        let exact = "é".repeat(MAX_ARG_CHARS);
        assert_eq!(short(&exact), exact);
    }
}
