//! YAML with positions.
//!
//! Every declaration file is parsed into a [`Node`] tree in which every value keeps the
//! line and column where it was written. Schema validation works on the JSON view of the
//! tree ([`Node::to_json`]) and maps each error's JSON pointer back to a position with
//! [`Node::locate`], so `/steps/3/file/mode` is reported at the line and column of `mode`.
//!
//! Parsing goes through `serde-saphyr` with a [`serde_saphyr::Budget`]: alias bombs,
//! deep nesting and oversized inputs stop with an error instead of exhausting memory or stack.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Largest declaration file plumb reads (bytes).
pub const MAX_FILE_BYTES: usize = 8 * 1024 * 1024;
/// Deepest nesting a declaration may use.
pub const MAX_DEPTH: usize = 64;
/// Most values (after alias expansion) a declaration may hold.
pub const MAX_NODES: usize = 200_000;
/// Most anchors, and most aliases, a declaration may use.
pub const MAX_ALIASES: usize = 1_000;

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    fn from_location(loc: &serde_saphyr::Location) -> Pos {
        let line = u32::try_from(loc.line()).unwrap_or(u32::MAX);
        let col = u32::try_from(loc.column()).unwrap_or(u32::MAX);
        if line == 0 {
            Pos::START
        } else {
            Pos {
                line,
                col: col.max(1),
            }
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A YAML value with the position of its first character.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// The shape of a [`Node`]. Mapping keys keep their own positions.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    Map(IndexMap<String, (Pos, Node)>),
}

/// A YAML syntax or budget error, with the position the parser stopped at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
    /// What to do about it, when plumb knows more than the parser said.
    pub hint: Option<String>,
}

impl Node {
    /// Parses one YAML document. An empty document is `Null`.
    pub fn parse(text: &str) -> Result<Node, SyntaxError> {
        if text.len() > MAX_FILE_BYTES {
            return Err(SyntaxError {
                pos: Pos::START,
                message: format!(
                    "file is {} bytes, larger than the {} bytes plumb reads",
                    text.len(),
                    MAX_FILE_BYTES
                ),
                hint: Some("split it into smaller files".to_string()),
            });
        }
        if text.trim().is_empty() {
            return Ok(Node {
                pos: Pos::START,
                value: Value::Null,
            });
        }
        let budget = serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_aliases: MAX_ALIASES,
            max_anchors: MAX_ALIASES,
            max_nodes: MAX_NODES,
            max_events: 1_000_000,
            max_total_scalar_bytes: MAX_FILE_BYTES,
            max_documents: 1,
        };
        // YAML 1.2 booleans only: `yes`, `no`, `on`, `y` stay strings (no "Norway problem").
        let options = serde_saphyr::options! { budget: budget, strict_booleans: true };
        let spanned: Spanned<Node> =
            serde_saphyr::from_str_with_options(text, options).map_err(|e| syntax_error(&e))?;
        let mut node = spanned.value;
        node.pos = Pos::from_location(&spanned.referenced);
        Ok(node)
    }

    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) | Value::Float(_) => "number",
            Value::String(_) => "string",
            Value::Seq(_) => "list",
            Value::Map(_) => "mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&IndexMap<String, (Pos, Node)>> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The value under `key`, when this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map().and_then(|m| m.get(key)).map(|(_, n)| n)
    }

    /// The position of `key` itself (not its value) in a mapping.
    pub fn key_pos(&self, key: &str) -> Option<Pos> {
        self.as_map().and_then(|m| m.get(key)).map(|(p, _)| *p)
    }

    /// The JSON view of this tree, as the schemas see it.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::String(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(map) => J::Object(
                map.iter()
                    .map(|(k, (_, v))| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// The position best describing a JSON pointer (RFC 6901) into this tree: the node it
    /// names, or the deepest existing ancestor when the pointer names a missing member.
    pub fn locate(&self, pointer: &str) -> Pos {
        let mut node = self;
        if pointer.is_empty() {
            return node.pos;
        }
        for raw in pointer.split('/').skip(1) {
            let token = raw.replace("~1", "/").replace("~0", "~");
            let next = match &node.value {
                Value::Map(map) => map.get(&token).map(|(_, v)| v),
                Value::Seq(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return node.pos,
            }
        }
        node.pos
    }

    /// The position of the key naming the member at `pointer`, for errors about the key
    /// itself (unknown property); falls back to [`Node::locate`].
    pub fn locate_key(&self, parent_pointer: &str, key: &str) -> Pos {
        let mut node = self;
        for raw in parent_pointer.split('/').skip(1) {
            let token = raw.replace("~1", "/").replace("~0", "~");
            let next = match &node.value {
                Value::Map(map) => map.get(&token).map(|(_, v)| v),
                Value::Seq(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return node.pos,
            }
        }
        node.key_pos(key).unwrap_or(node.pos)
    }
}

fn syntax_error(e: &serde_saphyr::Error) -> SyntaxError {
    let pos = e
        .location()
        .map(|l| Pos::from_location(&l))
        .unwrap_or(Pos::START);
    let rendered = e.render_with_options(serde_saphyr::render_options! {
        snippets: serde_saphyr::SnippetMode::Off,
    });
    // The plain rendering ends with "at line X, column Y"; plumb prints positions itself.
    let mut message = match rendered.rfind(" at line ") {
        Some(i) => rendered[..i].to_string(),
        None => rendered,
    };
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest);
        message = format!("duplicate key `{key}`: a key may appear once in a mapping");
    }
    let (message, hint) = explain(message.trim());
    SyntaxError { pos, message, hint }
}

/// Rewrites the parser's budget and limit messages (which name internal counters) into
/// what happened and what to do; adds a hint to the syntax errors people meet most.
fn explain(message: &str) -> (String, Option<String>) {
    let refuse = "plumb refuses alias bombs: write the values out instead of nesting aliases";
    if let Some(breach) = message.strip_prefix("budget breached: ") {
        let what = breach.split([' ', '{']).next().unwrap_or(breach);
        return match what {
            "Nodes" | "Events" | "ScalarBytes" => (
                format!(
                    "document too large once aliases are expanded (more than {MAX_NODES} values)"
                ),
                Some(refuse.to_string()),
            ),
            "Aliases" | "Anchors" => (
                format!("too many anchors or aliases (more than {MAX_ALIASES})"),
                Some(refuse.to_string()),
            ),
            "Depth" | "InclusionDepth" => depth_message(),
            "Documents" => (
                "more than one YAML document (`---`) in the file".to_string(),
                Some("plumb reads one document per file".to_string()),
            ),
            _ => (format!("YAML limit exceeded ({what})"), None),
        };
    }
    if message.contains("recursion limit exceeded") {
        return depth_message();
    }
    let hint = if message.starts_with("mapping values are not allowed") {
        Some("a plain value may not contain `: `; quote it, e.g. description: \"a: b\"")
    } else if message.contains("quoted scalar") {
        Some("a quoted string runs until its closing quote: check the lines above for a missing `\"` or `'`")
    } else if message.contains("did not find expected") {
        Some("check the indentation and the brackets of this line and the lines above")
    } else {
        None
    };
    (message.to_string(), hint.map(str::to_string))
}

fn depth_message() -> (String, Option<String>) {
    (
        format!("nested more than {MAX_DEPTH} levels deep"),
        Some("flatten the structure; plumb refuses deeper documents".to_string()),
    )
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

fn leaf(value: Value) -> Node {
    Node {
        pos: Pos::START,
        value,
    }
}

fn spanned(s: Spanned<Node>) -> Node {
    let mut n = s.value;
    n.pos = Pos::from_location(&s.referenced);
    n
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(leaf(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(leaf(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(leaf(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(leaf(Value::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(leaf(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(v as f64),
        }))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(leaf(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(v as f64),
        }))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(leaf(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(v as f64),
        }))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(leaf(Value::Float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(leaf(Value::String(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(leaf(Value::String(v)))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        Ok(leaf(Value::String(String::from_utf8_lossy(v).into_owned())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(spanned(item));
        }
        Ok(leaf(Value::Seq(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut out = IndexMap::new();
        while let Some(key) = map.next_key::<Spanned<KeyString>>()? {
            let key_pos = Pos::from_location(&key.referenced);
            let name = key.value.0;
            let value = spanned(map.next_value::<Spanned<Node>>()?);
            if out.contains_key(&name) {
                return Err(de::Error::custom(format!(
                    "duplicate key `{name}` at line {}, column {}",
                    key_pos.line, key_pos.col
                )));
            }
            out.insert(name, (key_pos, value));
        }
        Ok(leaf(Value::Map(out)))
    }
}

/// A mapping key: plumb's files use scalar keys only; numbers and booleans become their text.
struct KeyString(String);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<KeyString, E> {
                Ok(KeyString(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyString, E> {
                Ok(KeyString("null".to_string()))
            }
        }
        // Keys are text: `y: 1` has the key "y", not `true`.
        d.deserialize_string(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_nested_values() {
        let doc = "a: 1\nsteps:\n  - id: x\n    file:\n      mode: \"0644\"\n";
        let n = Node::parse(doc).expect("parses");
        assert_eq!(n.locate("/steps/0/file/mode"), Pos { line: 5, col: 13 });
        assert_eq!(n.locate("/steps/0/id"), Pos { line: 3, col: 9 });
        assert_eq!(
            n.locate_key("/steps/0/file", "mode"),
            Pos { line: 5, col: 7 }
        );
        // A missing member points at its deepest existing parent.
        assert_eq!(n.locate("/steps/0/file/owner"), Pos { line: 5, col: 7 });
    }

    #[test]
    fn json_view() {
        let n = Node::parse("x: [1, true, null, 'a', yes, no]\ny: 1.5\n").expect("parses");
        assert_eq!(
            n.to_json(),
            serde_json::json!({"x": [1, true, null, "a", "yes", "no"], "y": 1.5})
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let e = Node::parse("a: 1\nb: [1, 2\n").expect_err("invalid");
        assert!(e.pos.line >= 2, "{e:?}");
        assert!(!e.message.is_empty());
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = Node::parse("a: 1\na: 2\n").expect_err("duplicate");
        assert!(e.message.contains("duplicate key `a`"), "{e:?}");
    }

    #[test]
    fn alias_bomb_is_refused_quickly() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..30 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let start = std::time::Instant::now();
        let e = Node::parse(&doc).expect_err("bomb refused");
        // A guard against hangs and blow-ups, not a performance target (it takes milliseconds).
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
        assert!(!e.message.is_empty());
    }

    #[test]
    fn deep_nesting_is_refused() {
        for doc in [
            "[".repeat(10_000) + &"]".repeat(10_000),
            "- ".repeat(10_000) + "x",
        ] {
            let e = Node::parse(&doc).expect_err("too deep");
            assert!(!e.message.is_empty());
        }
        let mut block = String::new();
        for i in 0..10_000 {
            block.push_str(&" ".repeat(i));
            block.push_str("k:\n");
        }
        assert!(Node::parse(&block).is_err());
    }
}
