//! Templates are bounded in memory as well as in fuel (issue 11.4).
//!
//! A repo author (or a pull request) controls every template, so a template must not be able
//! to make plumb allocate without bound. minijinja's fuel bounds the number of instructions;
//! what one instruction can allocate is bounded here:
//! - printing a sequence of more than [`MAX_TEMPLATE_ITEMS`] items is refused at once;
//! - the output of every template and templated string is written into a buffer capped at
//!   [`MAX_TEMPLATE_OUTPUT`]; past it rendering stops with a located error;
//! - the filters that build a value from a sequence or multiply a string (`join`, `replace`,
//!   `indent`, `list`, `sort`, `unique`, `reverse`, `batch`, `slice`) check the
//!   size of what they would build first ([`MAX_TEMPLATE_ITEMS`] items, `MAX_TEMPLATE_OUTPUT`
//!   bytes);
//! - minijinja itself refuses `range` over 100,000 items and a string or sequence repetition
//!   (`"a" * n`, `[1] * n`) over 100,000,000 bytes or items; a repeated sequence stays lazy,
//!   so only a filter above or the output can make it big, and both are bounded.
//!
//! Not bounded by these rules: concatenating (`~`, `+`) values that are each within minijinja's
//! own limits can still grow memory within the fuel budget; the fuel budget keeps the number
//! of such steps small.

use std::io;

use minijinja::value::{Kwargs, StringInput, Value};
use minijinja::{Environment, Error, ErrorKind, State, Template};

/// Largest output of one template or templated string (bytes).
pub const MAX_TEMPLATE_OUTPUT: usize = 8 * 1024 * 1024;
/// Most items a filter may build a sequence or string from (minijinja's `range` limit too).
pub const MAX_TEMPLATE_ITEMS: usize = 100_000;

/// A writer that refuses to grow past `cap` bytes.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
}

impl io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.cap {
            return Err(io::Error::other("template output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Renders `t` with its output capped at [`MAX_TEMPLATE_OUTPUT`]. Past the cap the error's
/// kind is [`ErrorKind::WriteFailure`] (the only way writing to memory fails here).
pub fn render_capped<V: Into<Value>>(t: &Template<'_, '_>, ctx: V) -> Result<String, Error> {
    let mut out = Capped {
        buf: Vec::new(),
        cap: MAX_TEMPLATE_OUTPUT,
    };
    t.render_captured_to(ctx, &mut out)?;
    Ok(String::from_utf8_lossy(&out.buf).into_owned())
}

/// The message for an error of kind [`ErrorKind::WriteFailure`] from [`render_capped`].
pub fn output_limit_message() -> String {
    format!("template output is larger than {MAX_TEMPLATE_OUTPUT} bytes, the limit per template")
}

fn too_big(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "{what} would be larger than a template may build \
             ({MAX_TEMPLATE_ITEMS} items, {MAX_TEMPLATE_OUTPUT} bytes)"
        ),
    )
}

/// Refuses a sequence (or string) longer than [`MAX_TEMPLATE_ITEMS`] items.
fn check_items(filter: &str, value: &Value) -> Result<(), Error> {
    match value.len() {
        Some(n) if n > MAX_TEMPLATE_ITEMS && value.as_str().is_none() => {
            Err(too_big(&format!("`{filter}` of {n} items")))
        }
        _ => Ok(()),
    }
}

fn check_bytes(filter: &str, bytes: usize) -> Result<(), Error> {
    if bytes > MAX_TEMPLATE_OUTPUT {
        Err(too_big(&format!("the result of `{filter}`")))
    } else {
        Ok(())
    }
}

fn replace(
    state: &mut State,
    value: StringInput<'_>,
    from: StringInput<'_>,
    to: StringInput<'_>,
) -> Result<Value, Error> {
    let s = value.as_str();
    let hits = if from.as_str().is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from.as_str()).count()
    };
    let grown = hits.saturating_mul(to.as_str().len());
    check_bytes("replace", s.len().saturating_add(grown))?;
    minijinja::filters::replace(state, value, from, to)
}

fn join(
    state: &mut State,
    value: &Value,
    joiner: Option<StringInput<'_>>,
    attribute: Option<&str>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    check_items("join", value)?;
    // The items may each be large: add up their sizes before building the string.
    if let (Some(s), None) = (value.as_str(), attribute) {
        let sep = joiner.as_ref().map_or(0, |j| j.as_str().len());
        check_bytes("join", s.len().saturating_mul(sep.saturating_add(4)))?;
    } else if let Ok(items) = value.try_iter() {
        let sep = joiner.as_ref().map_or(0, |j| j.as_str().len());
        let mut total = 0usize;
        for item in items {
            let len = item.as_str().map_or(32, str::len);
            total = total.saturating_add(len).saturating_add(sep);
            check_bytes("join", total)?;
        }
    }
    minijinja::filters::join(state, value, joiner, attribute, kwargs)
}

fn indent(
    value: StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let w = match width {
        Some(w) => w,
        None => kwargs.peek::<Option<usize>>("width")?.unwrap_or(4),
    };
    let lines = value.as_str().lines().count().saturating_add(1);
    check_bytes(
        "indent",
        value.as_str().len().saturating_add(lines.saturating_mul(w)),
    )?;
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

/// Installs the bounded filters over minijinja's own, and a formatter that refuses to print
/// a sequence of more than [`MAX_TEMPLATE_ITEMS`] items (a lazy `[1] * 10**8` would
/// otherwise be walked item by item until the output cap).
pub fn install(env: &mut Environment<'_>) {
    env.set_formatter(|out, state, value| {
        check_items("printing a sequence", value)?;
        minijinja::escape_formatter(out, state, value)
    });
    env.add_filter("replace", replace);
    env.add_filter("join", join);
    env.add_filter("indent", indent);
    env.add_filter("list", |state: &State, value: Value| {
        check_items("list", &value)?;
        minijinja::filters::list(state, value)
    });
    env.add_filter("sort", |state: &State, value: Value, kwargs: Kwargs| {
        check_items("sort", &value)?;
        minijinja::filters::sort(state, value, kwargs)
    });
    env.add_filter("unique", |state: &State, value: Value, kwargs: Kwargs| {
        check_items("unique", &value)?;
        minijinja::filters::unique(state, value, kwargs)
    });
    env.add_filter("reverse", |value: &Value| {
        check_items("reverse", value)?;
        minijinja::filters::reverse(value)
    });
    env.add_filter(
        "batch",
        |state: &State, value: Value, count: usize, fill: Option<Value>| {
            check_items("batch", &value)?;
            minijinja::filters::batch(state, value, count, fill)
        },
    );
    env.add_filter(
        "slice",
        |state: &State, value: Value, count: usize, fill: Option<Value>| {
            check_items("slice", &value)?;
            check_bytes("slice", count)?;
            minijinja::filters::slice(state, value, count, fill)
        },
    );
}
