//! A probe: everything lynshim needs to trace one wrapped function, worked out once when it is wrapped,
//! and the hot path of every traced call.
//!
//! A traced call should cost a few hundred nanoseconds more than the bare call (issues #3 and #17), so
//! the work of a call happens here rather than in Python: the wrapper Python sees is a native
//! [`TracedFunction`] (see `python/lynshim/_patch.py`), called by vectorcall like the original, which
//! describes the arguments, records the span's begin, calls the function with the caller's own argument
//! array, describes the result or the exception, and records the end. Whatever can be decided when the
//! function is wrapped is: each positional parameter's [`Rule`], and its default's description and JSON.
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

use lynschema::{arg, is_credential_name, DETAIL_KEYS, DETAIL_PARAMS, MAX_ARG_CHARS, SKIP_PARAMS};
use pyo3::exceptions::PyAttributeError;
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PySet, PyString, PyTuple, PyType};
use pyo3::{Borrowed, PyTraverseError};
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
    /// A parameter's default, described and written once, when the function was wrapped.
    Default(&'a DefaultValue),
    Redacted,
    /// A mapping recorded by its size: `dict[n]`.
    DictLen(usize),
    /// An integer, written without going through a `serde_json::Value`.
    Int(i64),
    /// A flag (whether the field asked for was found).
    Bool(bool),
}

impl Arg<'_> {
    fn into_owned(self) -> Arg<'static> {
        match self {
            Arg::Str(s) => Arg::String(s.to_owned()),
            Arg::Default(v) => Arg::Value(v.value.clone()),
            Arg::String(s) => Arg::String(s),
            Arg::Value(v) => Arg::Value(v),
            Arg::Redacted => Arg::Redacted,
            Arg::DictLen(n) => Arg::DictLen(n),
            Arg::Int(n) => Arg::Int(n),
            Arg::Bool(b) => Arg::Bool(b),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Arg::Str(s) => s.into(),
            Arg::String(s) => s.into(),
            Arg::Value(v) => v,
            Arg::Default(v) => v.value.clone(),
            Arg::Redacted => arg::REDACTED.into(),
            Arg::DictLen(n) => format!("dict[{n}]").into(),
            Arg::Int(n) => n.into(),
            Arg::Bool(b) => b.into(),
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Arg::Value(Value::Null)) || matches!(self, Arg::Default(v) if v.value.is_null())
    }

    fn write(&self, out: &mut String) {
        match self {
            Arg::Str(s) => push_str(out, s),
            Arg::String(s) | Arg::Value(Value::String(s)) => push_str(out, s),
            Arg::Value(v) => push_value(out, v),
            Arg::Default(v) => out.push_str(&v.json),
            Arg::Redacted => push_str(out, arg::REDACTED),
            Arg::DictLen(n) => {
                out.push_str("\"dict[");
                push_int(out, *n);
                out.push_str("]\"");
            }
            Arg::Int(n) => push_int(out, *n),
            Arg::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        }
    }
}

/// An argument's name, and how it is written as a key.
enum Key<'a> {
    /// A parameter's name, with its JSON key (`"name":`) worked out when the function was wrapped:
    /// checking, quoting and copying the same few names at every call took some 8 % of the
    /// instructions tracing adds to a call (callgrind, `--toggle-collect` on `traced_vectorcall`).
    Known { name: &'a str, json: &'a str },
    /// Any other name (a keyword argument's, a details key, an end's), escaped as it is written.
    Name(Cow<'a, str>),
}

impl Key<'_> {
    fn name(&self) -> &str {
        match self {
            Key::Known { name, .. } => name,
            Key::Name(name) => name,
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Key::Known { json, .. } => out.push_str(json),
            Key::Name(name) => {
                push_str(out, name);
                out.push(':');
            }
        }
    }
}

/// The end's keys, which every traced call writes one or two of: known, like a parameter's (a test
/// checks each `json` against [`key_json`]).
const FOUND: Key<'static> = Key::Known { name: arg::FOUND, json: "\"found\":" };
const ERROR: Key<'static> = Key::Known { name: arg::ERROR, json: "\"error\":" };
const ROWS: Key<'static> = Key::Known { name: arg::ROWS, json: "\"rows\":" };
const RESULT: Key<'static> = Key::Known { name: arg::RESULT, json: "\"result\":" };

/// Every key an end records (besides a server request's `extra`).
const END_KEYS: [Key<'static>; 4] = [FOUND, ERROR, ROWS, RESULT];

fn is_end_key(name: &str) -> bool {
    END_KEYS.iter().any(|key| key.name() == name)
}

/// A name's JSON key, `"name":`.
fn key_json(name: &str) -> String {
    let mut json = String::with_capacity(name.len() + 3);
    push_str(&mut json, name);
    json.push(':');
    json
}

/// Args of a span, in the order Python would put them in a dict; a name set twice keeps its place.
/// (On the stack up to a handful: a traced call should not allocate for them.)
type Described<'a> = SmallVec<[(Key<'a>, Arg<'a>); 6]>;

/// Args of a span's end: the outcome and whether the field was found, rarely more. Kept apart from
/// [`Described`] so that the end of every call does not move a list sized for a call's arguments.
type EndArgs = SmallVec<[(Key<'static>, Arg<'static>); 2]>;

/// A call's keyword arguments, as its caller passed them.
#[derive(Clone, Copy)]
enum Keywords<'a, 'py> {
    None,
    /// A dict: a call through `tp_call` (`_native.call`, `probe_begin`, an explicit `__call__`).
    Dict(&'a Bound<'py, PyDict>),
    /// A vectorcall's keyword names, and their values (the arguments after the positional ones).
    Vector(Borrowed<'a, 'py, PyTuple>, &'a [*mut ffi::PyObject]),
}

impl<'a, 'py> Keywords<'a, 'py> {
    /// A dict of keyword arguments; an empty one is none.
    fn of(kwargs: Option<&'a Bound<'py, PyDict>>) -> Self {
        kwargs.filter(|k| !k.is_empty()).map_or(Self::None, Self::Dict)
    }

    fn for_each(self, mut f: impl FnMut(Bound<'py, PyAny>, Bound<'py, PyAny>) -> PyResult<()>) -> PyResult<()> {
        match self {
            Self::None => Ok(()),
            Self::Dict(kwargs) => kwargs.iter().try_for_each(|(name, value)| f(name, value)),
            Self::Vector(names, values) => names.iter_borrowed().zip(values).try_for_each(|(name, &value)| {
                // SAFETY: the caller's argument array holds a live reference per keyword name for the
                // whole call; this takes a new one.
                let value = unsafe { Bound::from_borrowed_ptr(names.py(), value) };
                f(name.to_owned(), value)
            }),
        }
    }

    /// Was `name` passed by keyword?
    fn contains(self, name: &str) -> bool {
        match self {
            Self::None => false,
            Self::Dict(kwargs) => kwargs.contains(name).unwrap_or(false),
            Self::Vector(names, _) => names
                .iter_borrowed()
                .any(|key| key.cast::<PyString>().is_ok_and(|key| key.to_cow().is_ok_and(|key| key == name))),
        }
    }
}

/// Described args, written as a JSON object into the session's text as the record is made (nothing
/// when there are none).
struct Json<'p, 'a>(&'p [(Key<'a>, Arg<'a>)]);

impl session::Args for Json<'_, '_> {
    fn write_to(self, out: &mut String) {
        if !self.0.is_empty() {
            write_json(self.0, out);
        }
    }
}

/// A traced call's end args, and whether they are known to name none of its begin's keys
/// ([`Begun::end_disjoint`]).
struct EndJson<'p>(&'p [(Key<'static>, Arg<'static>)], bool);

impl session::Args for EndJson<'_> {
    fn write_to(self, out: &mut String) {
        Json(self.0).write_to(out);
    }

    fn disjoint_from_begin(&self) -> bool {
        self.1 || self.0.is_empty()
    }
}

/// What a traced call's begin hands on to its end.
#[derive(Clone, Copy, Default)]
struct Begun {
    /// The span's token (0: tracing is off).
    token: u64,
    /// The call asks for a field: its end records whether it was found.
    asked_for_field: bool,
    /// None of the keys an end records ([`END_KEYS`]) is among the begin's: the two can make one
    /// record (see `session::exit`).
    end_disjoint: bool,
}

/// How an argument is recorded, decided by its parameter's name: for a positional parameter once,
/// when the function is wrapped, rather than at every call.
#[derive(Clone, Copy)]
enum Rule {
    /// Not recorded: the object or class a method is bound to ([`SKIP_PARAMS`]).
    Skip,
    /// Recorded as [`arg::REDACTED`], whatever its value: the name looks like a credential.
    Secret,
    /// A mapping reduced to the keys that say what is read ([`DETAIL_PARAMS`]), or else a value.
    Details,
    /// A value.
    Plain,
}

impl Rule {
    fn of(name: &str) -> Self {
        if SKIP_PARAMS.contains(&name) {
            Self::Skip
        } else if is_credential_name(name) {
            Self::Secret
        } else if DETAIL_PARAMS.contains(&name) {
            Self::Details
        } else {
            Self::Plain
        }
    }
}

/// A parameter's default as a span records it, and as JSON.
struct DefaultValue {
    value: Value,
    json: String,
    /// The parameter's JSON key.
    key_json: String,
    /// The parameter's place among the positional ones, if it has one: a call that passes that many
    /// positional arguments passes it.
    position: Option<usize>,
}

/// One wrapped function.
#[pyclass(frozen, module = "lynshim._native")]
pub struct Probe {
    /// Leaked: spans borrow its names without counting references on the hot path, and may still be
    /// unwritten when the collector frees the probe with its module, in the interpreter's teardown.
    name: &'static str,
    cat: &'static str,
    function: Py<PyAny>,
    /// Positional parameters: name, the rule that records it, and its JSON key.
    positional: Vec<(String, Rule, String)>,
    /// Defaults by parameter name, described when the function was wrapped (a function that mutates
    /// its own default list would be misreported).
    defaults: Vec<(String, DefaultValue)>,
    /// The function has a `field` parameter: record whether the field was found.
    takes_field: bool,
    /// A parameter is named as a key an end records ([`END_KEYS`]): a call's begin and end args may
    /// share a key.
    names_end_key: bool,
    /// `lynshim._args.describe_value`, for the values not described here.
    describe_value: Py<PyAny>,
}

#[pymethods]
impl Probe {
    /// The references the garbage collector must see (see [`TracedFunction::__traverse__`]).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.function)?;
        visit.call(&self.describe_value)
    }

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
                    let rule = Rule::of(&name);
                    let json = key_json(&name);
                    (name, rule, json)
                })
                .collect(),
            defaults: Vec::new(),
            takes_field,
            names_end_key: false,
            describe_value,
        };
        for (key, value) in defaults.iter() {
            let key: String = key.extract()?;
            if SKIP_PARAMS.contains(&key.as_str()) {
                continue;
            }
            let described = if is_credential_name(&key) { Arg::Redacted } else { probe.value(&value)? };
            let mut json = String::new();
            described.write(&mut json);
            let position = probe.positional.iter().position(|(name, ..)| *name == key);
            let key_json = key_json(&key);
            probe.defaults.push((key, DefaultValue { value: described.into_value(), json, key_json, position }));
        }
        probe.names_end_key = probe
            .positional
            .iter()
            .map(|(name, ..)| name)
            .chain(probe.defaults.iter().map(|(name, _)| name))
            .any(|name| is_end_key(name));
        Ok(probe)
    }

    /// The args a call with `args` and `kwargs` records, as a JSON object (for tests and benchmarks).
    #[pyo3(signature = (args, kwargs=None))]
    fn describe(&self, args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<String> {
        Ok(described_json(&self.describe_call(args, Keywords::of(kwargs))?))
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
        let asked = self.asks_for_field(&self.describe_call(args, Keywords::of(kwargs))?);
        let outcome = outcome_of(args.py(), result, error);
        Ok(described_json(&self.end_args(asked, Outcome::of(args.py(), &outcome))))
    }
}

impl Probe {
    fn describe_call<'a, 'py>(
        &'a self,
        args: &'a Bound<'py, PyTuple>,
        keywords: Keywords<'_, 'py>,
    ) -> PyResult<Described<'a>> {
        let mut out = Described::new();
        self.describe_into(&mut out, args.iter_borrowed(), keywords)?;
        Ok(out)
    }

    /// [`Self::describe_call`] into `out`, in place: on the hot path the list of args, a few hundred
    /// bytes on the stack, is not moved from function to function.
    fn describe_into<'a, 'py>(
        &'a self,
        out: &mut Described<'a>,
        positional: impl Iterator<Item = Borrowed<'a, 'py, PyAny>>,
        keywords: Keywords<'_, 'py>,
    ) -> PyResult<()> {
        let mut passed = 0;
        for (index, value) in positional.enumerate() {
            passed = index + 1;
            let (name, rule) = match self.positional.get(index) {
                Some((name, rule, json)) => (Key::Known { name, json }, *rule),
                // Beyond the named parameters (`*args`): named by position.
                None => (Key::Name(Cow::Owned(format!("arg{index}"))), Rule::Plain),
            };
            self.record_arg(out, name, rule, &value, || Self::value_borrowed(&self.describe_value, value))?;
        }
        keywords.for_each(|name, value| {
            let name = name.cast::<PyString>()?.to_cow()?.into_owned();
            let rule = Rule::of(&name);
            self.record_arg(out, Key::Name(Cow::Owned(name)), rule, &value, || self.value(&value))
        })?;
        // A default is what a parameter holds when it was not passed: not by position (a details mapping
        // passed by position is recorded by its keys, under other names), not by keyword.
        for (name, described) in &self.defaults {
            let by_position = described.position.is_some_and(|position| position < passed);
            if !by_position && !has(out, name) && !keywords.contains(name) {
                out.push((Key::Known { name, json: &described.key_json }, Arg::Default(described)));
            }
        }
        Ok(())
    }

    /// Record one argument as its parameter's rule has it; `describe` gives the value's description
    /// when the rule asks for one. (The value is not even looked at otherwise: `self` may be any
    /// object, a secret any value.)
    fn record_arg<'a>(
        &self,
        out: &mut Described<'a>,
        name: Key<'a>,
        rule: Rule,
        value: &Bound<'_, PyAny>,
        describe: impl FnOnce() -> PyResult<Arg<'a>>,
    ) -> PyResult<()> {
        match rule {
            Rule::Skip => {}
            Rule::Secret => set(out, name, Arg::Redacted),
            Rule::Details if self.details(out, value)? => {}
            Rule::Details | Rule::Plain => set(out, name, describe()?),
        }
        Ok(())
    }

    /// A details mapping reduced to the keys that say what is read ([`DETAIL_KEYS`], each recorded
    /// once); false when `value` is not a dict or holds none of them, and is recorded as a value.
    fn details<'a>(&self, out: &mut Described<'a>, value: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(details) = value.cast_exact::<PyDict>() else { return Ok(false) };
        let mut found = false;
        for key in DETAIL_KEYS {
            if has(out, key) {
                continue;
            }
            if let Some(inner) = details.get_item(key)? {
                let described = if is_credential_name(key) { Arg::Redacted } else { self.value(&inner)? };
                out.push((Key::Name(Cow::Borrowed(key)), described));
                found = true;
            }
        }
        Ok(found)
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
            return Ok(Arg::Bool(flag.is_true()));
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
        self.takes_field && described.iter().any(|(k, v)| k.name() == arg::FIELD && !v.is_null())
    }

    /// Args recorded at the end: the exception's type, or a cheap size of the result; whether the field
    /// asked for was found.
    fn end_args(&self, asked_for_field: bool, outcome: Outcome<'_, '_>) -> EndArgs {
        let mut end = EndArgs::new();
        match outcome {
            Outcome::Returned(result) => {
                if let Some((key, size)) = result_size(result) {
                    end.push((key, Arg::Value(size)));
                }
                if asked_for_field {
                    end.push((FOUND, Arg::Bool(true)));
                }
            }
            Outcome::Raised(kind) => {
                let name = kind.and_then(|kind| kind.name().ok()).map(|n| n.to_string()).unwrap_or_default();
                let not_found = asked_for_field && name == "FileFormatError";
                end.push((ERROR, Arg::String(name)));
                if not_found {
                    end.push((FOUND, Arg::Bool(false)));
                }
            }
        }
        end
    }

    /// Record the begin of a call.
    fn begin<'a, 'py>(
        &'a self,
        py: Python<'py>,
        positional: impl Iterator<Item = Borrowed<'a, 'py, PyAny>>,
        keywords: Keywords<'_, 'py>,
    ) -> Begun {
        let mut described = Described::new();
        let asked = match self.describe_into(&mut described, positional, keywords) {
            Ok(()) => self.asks_for_field(&described),
            // Describing must never break the call.
            Err(err) => {
                let name = err.get_type(py).name().map(|n| n.to_string()).unwrap_or_default();
                described.clear();
                described.push((Key::Name(Cow::Borrowed(lynschema::arg::SHIM_ERROR)), Arg::String(name)));
                false
            }
        };
        // The begin's keys are the parameters' (known when wrapped), the details keys and the keyword
        // arguments' names: only the last are looked at here, and only when there are any.
        let end_disjoint = !self.names_end_key
            && (matches!(keywords, Keywords::None) || !described.iter().any(|(key, _)| is_end_key(key.name())));
        let token = crate::guarded(0, || {
            session::enter(Cow::Borrowed(self.name), Cow::Borrowed(self.cat), Json(&described), || {
                crate::python_thread_name(py)
            })
        });
        Begun { token, asked_for_field: asked, end_disjoint }
    }

    fn finish(&self, begun: Begun, outcome: Outcome<'_, '_>) {
        if begun.token == 0 {
            return;
        }
        let end = self.end_args(begun.asked_for_field, outcome);
        crate::guarded((), || session::exit(begun.token, EndJson(&end, begun.end_disjoint)));
    }
}

/// What a traced call came to, as its end records it.
enum Outcome<'a, 'py> {
    Returned(&'a Bound<'py, PyAny>),
    /// It raised an exception of this type (none: it failed without setting one).
    Raised(Option<Bound<'py, PyType>>),
}

impl<'a, 'py> Outcome<'a, 'py> {
    fn of(py: Python<'py>, result: &'a PyResult<Bound<'py, PyAny>>) -> Self {
        match result {
            Ok(value) => Self::Returned(value),
            Err(err) => Self::Raised(Some(err.get_type(py))),
        }
    }
}

/// A cheap size of a result: rows of a data frame, length of a list or dict.
fn result_size(result: &Bound<'_, PyAny>) -> Option<(Key<'static>, Value)> {
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
                        return Some((ROWS, to_json(&rows)));
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
        return Some((RESULT, format!("{kind}[{len}]").into()));
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
    let begun = crate::guarded(Begun::default(), || probe.begin(py, args.iter_borrowed(), Keywords::of(kwargs)));
    let outcome = function.call(args, kwargs);
    crate::guarded((), || probe.finish(begun, Outcome::of(py, &outcome)));
    outcome
}

/// The wrapper of a traced function, as the program sees it (`python/lynshim/_patch.py` makes one per
/// target): calling it is [`call`] with its probe, without a Python frame of its own in between, which
/// is most of what a Python-level wrapper added to a traced call.
///
/// It is called as the original is, by vectorcall (see [`traced_vectorcall`]): the caller's argument
/// array goes on to the original as it came, so a traced call builds no tuple or dict of arguments
/// and pyo3 parses none. (`__call__`, the `tp_call` slot, stays for `callable()` and for an explicit
/// `w.__call__(…)`: CPython's `PyObject_Call` prefers vectorcall too, unpacking a `**kwargs` dict into
/// keyword names.) The type is immutable, as CPython asks of a class that offers vectorcall: assigning
/// `__call__` on it would leave the two disagreeing.
///
/// It stays transparent as a wrapt-style proxy does: `_patch` gives it the original's `__name__`,
/// `__qualname__`, `__doc__`, `__module__`, `__annotations__`, `__dict__` and `__wrapped__` (so
/// `inspect.signature` reports the original signature); any other attribute (`__code__`,
/// `__defaults__`, ...) is the original's, `__class__` too (so `inspect.isfunction` holds); it binds as
/// a plain function does (a `types.MethodType`, made by `PyMethod_New`, on an instance, itself on a
/// class, and so through `classmethod` and `staticmethod`); it pickles and copies by its qualified name,
/// as a function does.
#[pyclass(frozen, dict, weakref, immutable_type, module = "lynshim._native")]
pub struct TracedFunction {
    probe: Py<Probe>,
    /// Where CPython finds this object's vectorcall function: the type's `tp_vectorcall_offset` points
    /// here (set by [`enable_vectorcall`]).
    vectorcall: ffi::vectorcallfunc,
}

/// Make `TracedFunction`s callable by vectorcall: point the type's `tp_vectorcall_offset` at the
/// `vectorcall` field of its objects and set `Py_TPFLAGS_HAVE_VECTORCALL`. pyo3 has no attribute for
/// this (it builds the type from a spec without `__vectorcalloffset__`), so the module does it once,
/// at import, before any instance is called. The field's offset is read off a real instance rather
/// than assumed from pyo3's object layout. CPython reads the flag and offset at every call.
pub(crate) fn enable_vectorcall(py: Python<'_>) -> PyResult<()> {
    let probe = Py::new(
        py,
        Probe {
            name: "",
            cat: "",
            function: py.None(),
            positional: Vec::new(),
            defaults: Vec::new(),
            takes_field: false,
            names_end_key: false,
            describe_value: py.None(),
        },
    )?;
    let sample = Bound::new(py, TracedFunction::new(probe))?;
    let field = std::ptr::from_ref(&sample.get().vectorcall) as usize;
    let offset = ffi::Py_ssize_t::try_from(field - sample.as_ptr() as usize)?;
    let ty = py.get_type::<TracedFunction>();
    // SAFETY: a type object pyo3 created for this module and nothing has called yet; the offset is
    // where every instance keeps a valid vectorcall function (set by `TracedFunction::new`).
    unsafe {
        let ty = ty.as_type_ptr();
        (*ty).tp_vectorcall_offset = offset;
        (*ty).tp_flags |= ffi::Py_TPFLAGS_HAVE_VECTORCALL;
        ffi::PyType_Modified(ty);
    }
    Ok(())
}

/// A `TracedFunction` called by vectorcall: [`call_through`] without a tuple. The positional
/// arguments, then the values of the keyword arguments named by `kwnames`, are the caller's array,
/// which goes on to the original unchanged, `PY_VECTORCALL_ARGUMENTS_OFFSET` included (the original
/// may borrow the slot before it, as the caller allowed).
///
/// # Safety
/// CPython calls it, attached to the interpreter, with `callable` a `TracedFunction` and `args`,
/// `nargsf` and `kwnames` as the vectorcall protocol has them.
unsafe extern "C" fn traced_vectorcall(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY (all of this function): as the vectorcall protocol guarantees, see the doc above.
    let py = unsafe { Python::assume_attached() };
    let traced = unsafe { Borrowed::from_ptr(py, callable).cast_unchecked::<TracedFunction>() };
    let probe = traced.get().probe.get();
    let function = probe.function.as_ptr();
    if !session::is_recording() {
        return unsafe { ffi::PyObject_Vectorcall(function, args, nargsf, kwnames) };
    }
    let nargs = usize::try_from(unsafe { ffi::PyVectorcall_NARGS(nargsf) }).unwrap_or(0);
    // `args` may be NULL when there are no arguments (`PyObject_CallNoArgs`): no slice is made of it then.
    let positional: &[*mut ffi::PyObject] =
        if nargs == 0 || args.is_null() { &[] } else { unsafe { std::slice::from_raw_parts(args, nargs) } };
    let keywords = if kwnames.is_null() || args.is_null() {
        Keywords::None
    } else {
        let names = unsafe { Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>() };
        Keywords::Vector(names, unsafe { std::slice::from_raw_parts(args.add(nargs), names.len()) })
    };
    let positional = positional.iter().map(|&arg| unsafe { Borrowed::from_ptr(py, arg) });
    let begun = crate::guarded(Begun::default(), || probe.begin(py, positional, keywords));
    let result = unsafe { ffi::PyObject_Vectorcall(function, args, nargsf, kwnames) };
    if begun.token == 0 {
        return result;
    }
    if !result.is_null() {
        let returned = unsafe { Borrowed::from_ptr(py, result) };
        crate::guarded((), || probe.finish(begun, Outcome::Returned(&returned)));
        return result;
    }
    // The exception is taken aside raw while the end is recorded (no Python API may run with one set)
    // and put back as it was: not through pyo3's `PyErr`, which would normalize it and turn a
    // `PanicException` back into a Rust panic, which must not unwind out of this `extern "C"` function.
    let (mut kind, mut value, mut traceback) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
    #[allow(deprecated)] // PyErr_Fetch: still there in 3.12+, and the exact round trip with PyErr_Restore.
    unsafe {
        ffi::PyErr_Fetch(&mut kind, &mut value, &mut traceback);
    }
    let raised =
        (!kind.is_null()).then(|| unsafe { Borrowed::from_ptr(py, kind).cast_unchecked::<PyType>().to_owned() });
    crate::guarded((), || probe.finish(begun, Outcome::Raised(raised)));
    #[allow(deprecated)]
    unsafe {
        ffi::PyErr_Restore(kind, value, traceback);
    }
    std::ptr::null_mut()
}

extern "C" {
    /// CPython's `PyMethod_New(func, self)`, what `types.MethodType(func, self)` calls (public C API,
    /// not declared by pyo3-ffi).
    fn PyMethod_New(func: *mut pyo3::ffi::PyObject, instance: *mut pyo3::ffi::PyObject) -> *mut pyo3::ffi::PyObject;
}

#[pymethods]
impl TracedFunction {
    /// Shows the garbage collector the probe, and through it the original function, as a plain
    /// function's `tp_traverse` shows its globals. Unseen, those references counted as held from outside
    /// the heap: the cycle wrapper → original → its module's globals → wrapper could not be collected,
    /// and every module reachable from a traced function's globals (lynguine's, pandas…) outlived
    /// the collections of the interpreter's teardown. Each of those collections then walked the whole
    /// heap again: the exit phase of a traced `mdfield` took 16 ms longer than a bare one's, 4 ms with this
    /// (`make bench`'s phase table at 2026-11-30 16:46 and 18:42 UTC). No `__clear__`: these references
    /// never change, and a module's globals, which every such cycle goes through, are cleared instead.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.probe)
    }

    #[new]
    fn new(probe: Py<Probe>) -> Self {
        Self { probe, vectorcall: traced_vectorcall }
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
    let begun = crate::guarded(Begun::default(), || probe.get().begin(py, args.iter_borrowed(), Keywords::of(kwargs)));
    (begun.token, begun.asked_for_field)
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
    let mut end = probe.end_args(asks_for_field, Outcome::of(py, &outcome));
    if let Some(extra) = extra {
        for (key, value) in extra.iter() {
            if let Ok(key) = key.extract::<String>() {
                set(&mut end, Key::Name(Cow::Owned(key)), Arg::Value(to_json(&value)));
            }
        }
    }
    crate::guarded((), || session::exit(token, Json(&end)));
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
    out.iter().any(|(k, _)| k.name() == name)
}

fn set<'a, A: smallvec::Array<Item = (Key<'a>, Arg<'a>)>>(out: &mut SmallVec<A>, name: Key<'a>, value: Arg<'a>) {
    match out.iter_mut().find(|(k, _)| k.name() == name.name()) {
        Some(slot) => slot.1 = value,
        None => out.push((name, value)),
    }
}

/// Described args as a JSON object.
fn described_json(pairs: &[(Key<'_>, Arg<'_>)]) -> String {
    let mut out = String::with_capacity(16 + pairs.len() * 32);
    write_json(pairs, &mut out);
    out
}

fn write_json(pairs: &[(Key<'_>, Arg<'_>)], out: &mut String) {
    out.push('{');
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        key.write(out);
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

    /// The end's keys, written as constants, are what [`key_json`] makes of their names.
    #[test]
    fn constant_keys_are_their_names_json() {
        for key in [FOUND, ERROR, ROWS, RESULT] {
            let Key::Known { name, json } = key else { panic!("a constant key is known") };
            assert_eq!(json, key_json(name));
        }
    }

    /// Keys worked out at wrapping and keys escaped as they are written make the same JSON object, one
    /// that needs escaping included.
    #[test]
    fn known_and_other_keys_write_one_valid_object() {
        let tricky = "a \"q\"\\";
        let tricky_json = key_json(tricky);
        let pairs: Vec<(Key<'_>, Arg<'_>)> = vec![
            (Key::Known { name: "field", json: "\"field\":" }, Arg::Str("title")),
            (Key::Known { name: tricky, json: &tricky_json }, Arg::Int(-3)),
            (Key::Name(Cow::Borrowed("b\"")), Arg::Bool(false)),
            (FOUND, Arg::Bool(true)),
            (Key::Name(Cow::Owned("n".into())), Arg::DictLen(2)),
        ];
        let parsed: Value = serde_json::from_str(&described_json(&pairs)).expect("valid JSON");
        assert_eq!(
            parsed,
            serde_json::json!({"field": "title", tricky: -3, "b\"": false, "found": true, "n": "dict[2]"})
        );
        assert_eq!(described_json(&[]), "{}");
    }
}
