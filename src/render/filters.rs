//! The filters plumb adds to minijinja's builtins, so templates read as people expect from
//! Jinja in Ansible: `to_yaml`, `b64encode`, `b64decode`, `sha256`, `regex_replace`, `quote`,
//! `mandatory` (`tojson` and `default` are minijinja's own).
//!
//! minijinja-contrib has none of these (its filters are `pluralize`, `truncate`,
//! `datetimeformat` and the like), so each is a few lines over a well-kept crate: `base64`,
//! `sha2`, `regex` (linear time, size-limited compilation), `serde-saphyr`, and plumb's own
//! shell quoting ([`crate::modules::sh::quote`], the one every module uses). Every filter
//! that builds a string checks its size against [`MAX_TEMPLATE_OUTPUT`] before it is kept.

use base64::Engine as _;
use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind};
use sha2::{Digest, Sha256};

use super::bounds::MAX_TEMPLATE_OUTPUT;

/// Largest regular expression `regex_replace` compiles (bytes of compiled program).
const MAX_REGEX_SIZE: usize = 1024 * 1024;

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

fn capped(filter: &str, s: String) -> Result<String, Error> {
    if s.len() > MAX_TEMPLATE_OUTPUT {
        return Err(invalid(format!(
            "`{filter}` would build more than {MAX_TEMPLATE_OUTPUT} bytes"
        )));
    }
    Ok(s)
}

/// Registers plumb's filters on `env`.
pub fn install(env: &mut Environment<'_>) {
    env.add_filter("to_yaml", to_yaml);
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64decode", b64decode);
    env.add_filter("sha256", sha256);
    env.add_filter("regex_replace", regex_replace);
    env.add_filter("quote", quote);
    env.add_filter("mandatory", mandatory);
}

fn to_yaml(value: Value) -> Result<String, Error> {
    let out = serde_saphyr::to_string(&value).map_err(|e| invalid(format!("`to_yaml`: {e}")))?;
    capped("to_yaml", out)
}

fn b64encode(value: String) -> Result<String, Error> {
    capped(
        "b64encode",
        base64::engine::general_purpose::STANDARD.encode(value.as_bytes()),
    )
}

fn b64decode(value: String) -> Result<String, Error> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim().as_bytes())
        .map_err(|e| invalid(format!("`b64decode`: not base64: {e}")))?;
    String::from_utf8(bytes)
        .map_err(|_| invalid("`b64decode`: the decoded bytes are not UTF-8 text"))
}

fn sha256(value: String) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// `regex_replace(pattern, replacement, ignorecase=false)`: every match replaced; `$1`,
/// `${name}` refer to groups (Rust `regex` syntax, linear time).
fn regex_replace(
    value: String,
    pattern: String,
    replacement: String,
    ignorecase: Option<bool>,
) -> Result<String, Error> {
    let re = regex::RegexBuilder::new(&pattern)
        .case_insensitive(ignorecase.unwrap_or(false))
        .size_limit(MAX_REGEX_SIZE)
        .build()
        .map_err(|e| invalid(format!("`regex_replace`: bad pattern `{pattern}`: {e}")))?;
    let mut out = String::new();
    let mut last = 0;
    for caps in re.captures_iter(&value) {
        let Some(m) = caps.get(0) else { continue };
        out.push_str(&value[last..m.start()]);
        caps.expand(&replacement, &mut out);
        last = m.end();
        if out.len() > MAX_TEMPLATE_OUTPUT {
            return capped("regex_replace", out);
        }
    }
    out.push_str(&value[last..]);
    capped("regex_replace", out)
}

/// Quotes a value for a POSIX shell: plumb's one quoting function.
fn quote(value: Value) -> Result<String, Error> {
    let s = match value.as_str() {
        Some(s) => s.to_string(),
        None if value.is_undefined() || value.is_none() => {
            return Err(invalid("`quote` of an undefined or none value"))
        }
        None => value.to_string(),
    };
    capped("quote", crate::modules::sh::quote(&s))
}

/// Fails unless the value is defined and not none: `{{ port | mandatory("set port in the
/// host's vars") }}`.
fn mandatory(value: Value, message: Option<String>) -> Result<Value, Error> {
    if value.is_undefined() || value.is_none() {
        return Err(Error::new(
            ErrorKind::UndefinedError,
            message.unwrap_or_else(|| "a mandatory value is undefined".to_string()),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::UndefinedBehavior;
    use proptest::prelude::*;

    fn env() -> Environment<'static> {
        let mut e = Environment::new();
        e.set_undefined_behavior(UndefinedBehavior::Strict);
        install(&mut e);
        e
    }

    fn render(t: &str, ctx: serde_json::Value) -> Result<String, Error> {
        env().render_str(t, minijinja::value::Serde(ctx))
    }

    #[test]
    fn each_filter_does_what_ansible_users_expect() {
        let ctx = serde_json::json!({"s": "it's", "m": {"a": 1, "b": [true, "x"]}});
        assert_eq!(
            render("{{ s | quote }}", ctx.clone()).unwrap(),
            r#"'it'\''s'"#
        );
        assert_eq!(
            render("{{ 'hi' | b64encode }}", ctx.clone()).unwrap(),
            "aGk="
        );
        assert_eq!(
            render("{{ 'aGk=' | b64decode }}", ctx.clone()).unwrap(),
            "hi"
        );
        assert_eq!(
            render("{{ 'abc' | sha256 }}", ctx.clone()).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            render(
                r"{{ 'web-12' | regex_replace('^web-(\d+)$', 'app-$1') }}",
                ctx.clone()
            )
            .unwrap(),
            "app-12"
        );
        assert_eq!(
            render("{{ 'ABC' | regex_replace('b', 'x', true) }}", ctx.clone()).unwrap(),
            "AxC"
        );
        assert_eq!(
            render("{{ m | to_yaml }}", ctx.clone()).unwrap(),
            "a: 1\nb:\n- true\n- x\n"
        );
        assert_eq!(render("{{ m.a | mandatory }}", ctx).unwrap(), "1");
    }

    #[test]
    fn mandatory_and_bad_input_fail_with_their_reason() {
        let ctx = serde_json::json!({"n": null});
        let e = render("{{ n | mandatory('set n') }}", ctx.clone()).unwrap_err();
        assert!(e.to_string().contains("set n"), "{e}");
        let e = render("{{ '%%%' | b64decode }}", ctx.clone()).unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
        let e = render("{{ 'x' | regex_replace('(', '') }}", ctx).unwrap_err();
        assert!(e.to_string().contains("bad pattern"), "{e}");
    }

    #[test]
    fn regex_replace_cannot_multiply_a_string_past_the_cap() {
        // Every position of a 100 kB string replaced by 100 bytes: 10 MB, over the cap.
        let ctx = serde_json::json!({"big": "a".repeat(100_000), "r": "b".repeat(100)});
        let e = render("{{ big | regex_replace('', r) | length }}", ctx).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }

    proptest! {
        /// `b64decode` undoes `b64encode` for any text.
        #[test]
        fn b64_round_trips(s in ".{0,200}") {
            let ctx = serde_json::json!({"s": s});
            prop_assert_eq!(render("{{ s | b64encode | b64decode }}", ctx).unwrap(), s);
        }
    }
}
