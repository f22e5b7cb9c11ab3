//! PEP 508 environment markers: parsed when a requirement is read, evaluated
//! against the environment the probe read from the base image's interpreter.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// A parsed marker expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    And(Box<Marker>, Box<Marker>),
    Or(Box<Marker>, Box<Marker>),
    Compare { left: Value, op: Op, right: Value },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Var(String),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Eq,
    Ne,
    Ge,
    Gt,
    Compatible,
    Arbitrary,
    In,
    NotIn,
}

const VARIABLES: &[&str] = &[
    "os_name",
    "sys_platform",
    "platform_machine",
    "platform_python_implementation",
    "platform_release",
    "platform_system",
    "platform_version",
    "python_version",
    "python_full_version",
    "implementation_name",
    "implementation_version",
    "extra",
    // Legacy spellings pip still accepts.
    "os.name",
    "sys.platform",
    "platform.version",
    "platform.machine",
    "platform.python_implementation",
    "python_implementation",
];

const VERSION_VARIABLES: &[&str] = &[
    "python_version",
    "python_full_version",
    "implementation_version",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    Op(Op),
    Open,
    Close,
    And,
    Or,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            out.push(Tok::Open);
            i += 1;
        } else if c == ')' {
            out.push(Tok::Close);
            i += 1;
        } else if c == '\'' || c == '"' {
            let end = chars[i + 1..]
                .iter()
                .position(|&d| d == c)
                .ok_or_else(|| format!("unterminated string in marker `{s}`"))?;
            out.push(Tok::Str(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
        } else if "<>=!~".contains(c) {
            let rest: String = chars[i..].iter().take(3).collect();
            let (op, len) = if rest.starts_with("===") {
                (Op::Arbitrary, 3)
            } else if rest.starts_with("==") {
                (Op::Eq, 2)
            } else if rest.starts_with("!=") {
                (Op::Ne, 2)
            } else if rest.starts_with("<=") {
                (Op::Le, 2)
            } else if rest.starts_with(">=") {
                (Op::Ge, 2)
            } else if rest.starts_with("~=") {
                (Op::Compatible, 2)
            } else if rest.starts_with('<') {
                (Op::Lt, 1)
            } else if rest.starts_with('>') {
                (Op::Gt, 1)
            } else {
                return Err(format!("invalid operator in marker `{s}`"));
            };
            out.push(Tok::Op(op));
            i += len;
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            match word.as_str() {
                "and" => out.push(Tok::And),
                "or" => out.push(Tok::Or),
                "in" => out.push(Tok::Op(Op::In)),
                "not" => {
                    // `not in`
                    let mut j = i;
                    while j < chars.len() && chars[j].is_whitespace() {
                        j += 1;
                    }
                    if chars[j..].iter().take(2).collect::<String>() == "in"
                        && chars.get(j + 2).is_none_or(|c| !c.is_ascii_alphanumeric())
                    {
                        out.push(Tok::Op(Op::NotIn));
                        i = j + 2;
                    } else {
                        return Err(format!("expected `in` after `not` in marker `{s}`"));
                    }
                }
                _ => out.push(Tok::Ident(word)),
            }
        } else {
            return Err(format!("unexpected character `{c}` in marker `{s}`"));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn or(&mut self) -> Result<Marker, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            left = Marker::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Marker, String> {
        let mut left = self.atom()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            left = Marker::And(Box::new(left), Box::new(self.atom()?));
        }
        Ok(left)
    }
    fn atom(&mut self) -> Result<Marker, String> {
        if self.peek() == Some(&Tok::Open) {
            self.pos += 1;
            let m = self.or()?;
            if self.next() != Some(Tok::Close) {
                return Err(format!("missing `)` in marker `{}`", self.text));
            }
            return Ok(m);
        }
        let left = self.value()?;
        let op = match self.next() {
            Some(Tok::Op(op)) => op,
            _ => {
                return Err(format!(
                    "expected a comparison operator in marker `{}`",
                    self.text
                ))
            }
        };
        let right = self.value()?;
        Ok(Marker::Compare { left, op, right })
    }
    fn value(&mut self) -> Result<Value, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Value::Str(s)),
            Some(Tok::Ident(v)) if VARIABLES.contains(&v.as_str()) => Ok(Value::Var(v)),
            Some(Tok::Ident(v)) => Err(format!("unknown marker variable `{v}` in `{}`", self.text)),
            _ => Err(format!(
                "expected a marker variable or a quoted string in `{}`",
                self.text
            )),
        }
    }
}

impl Marker {
    pub fn parse(text: &str) -> Result<Marker, String> {
        let toks = tokenize(text)?;
        if toks.is_empty() {
            return Err("empty marker".to_string());
        }
        let mut p = Parser { toks, pos: 0, text };
        let m = p.or()?;
        if p.pos != p.toks.len() {
            return Err(format!("unexpected text at the end of marker `{text}`"));
        }
        Ok(m)
    }

    /// Evaluates against `env` (marker variable -> value). `extra` is the
    /// empty string unless given.
    pub fn evaluate(&self, env: &BTreeMap<String, String>) -> bool {
        match self {
            Marker::And(a, b) => a.evaluate(env) && b.evaluate(env),
            Marker::Or(a, b) => a.evaluate(env) || b.evaluate(env),
            Marker::Compare { left, op, right } => {
                let is_version = [left, right]
                    .iter()
                    .any(|v| matches!(v, Value::Var(n) if VERSION_VARIABLES.contains(&n.as_str())));
                let resolve = |v: &Value| match v {
                    Value::Str(s) => s.clone(),
                    Value::Var(n) => {
                        let n = match n.as_str() {
                            "os.name" => "os_name",
                            "sys.platform" => "sys_platform",
                            "platform.version" => "platform_version",
                            "platform.machine" => "platform_machine",
                            "platform.python_implementation" | "python_implementation" => {
                                "platform_python_implementation"
                            }
                            other => other,
                        };
                        env.get(n).cloned().unwrap_or_default()
                    }
                };
                let (l, r) = (resolve(left), resolve(right));
                compare(&l, *op, &r, is_version)
            }
        }
    }
}

fn compare(l: &str, op: Op, r: &str, version: bool) -> bool {
    match op {
        Op::In => return r.contains(l),
        Op::NotIn => return !r.contains(l),
        Op::Arbitrary => return l == r,
        _ => {}
    }
    if version {
        if let Some(m) = version_matches(l, op, r) {
            return m;
        }
    }
    match op {
        Op::Eq => l == r,
        Op::Ne => l != r,
        Op::Lt => l < r,
        Op::Le => l <= r,
        Op::Gt => l > r,
        Op::Ge => l >= r,
        // `~=` on non-versions: pip raises; treat as no match.
        _ => false,
    }
}

/// The numeric release segments of a version (`3.11.4rc1` -> [3, 11, 4]).
fn release(v: &str) -> Option<Vec<u64>> {
    let v = v.trim().trim_start_matches(['v', 'V']);
    let v = v.split_once('!').map_or(v, |(_, rest)| rest);
    let mut out = Vec::new();
    for part in v.split('.') {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            break;
        }
        out.push(digits.parse().ok()?);
        if digits.len() != part.len() {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn cmp_release(a: &[u64], b: &[u64]) -> Ordering {
    let n = a.len().max(b.len());
    for i in 0..n {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        match x.cmp(&y) {
            Ordering::Equal => continue,
            o => return o,
        }
    }
    Ordering::Equal
}

/// Compares `l op r` as versions (release segments only); `None` when they
/// are not versions.
pub(crate) fn version_matches(l: &str, op: Op, r: &str) -> Option<bool> {
    if let Some(prefix) = r.strip_suffix(".*") {
        let (a, b) = (release(l)?, release(prefix)?);
        let starts = a.len() >= b.len() && a[..b.len()] == b[..];
        return match op {
            Op::Eq => Some(starts),
            Op::Ne => Some(!starts),
            _ => None,
        };
    }
    let (a, b) = (release(l)?, release(r)?);
    let o = cmp_release(&a, &b);
    Some(match op {
        Op::Eq => o == Ordering::Equal,
        Op::Ne => o != Ordering::Equal,
        Op::Lt => o == Ordering::Less,
        Op::Le => o != Ordering::Greater,
        Op::Gt => o == Ordering::Greater,
        Op::Ge => o != Ordering::Less,
        Op::Compatible => {
            let keep = b.len().saturating_sub(1).max(1);
            o != Ordering::Less && a.len() >= keep && a[..keep] == b[..keep]
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [
            ("python_version", "3.11"),
            ("python_full_version", "3.11.2"),
            ("sys_platform", "linux"),
            ("platform_system", "Linux"),
            ("platform_machine", "x86_64"),
            ("implementation_name", "cpython"),
            ("os_name", "posix"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn eval(m: &str) -> bool {
        Marker::parse(m).unwrap().evaluate(&env())
    }

    #[test]
    fn evaluates_common_markers() {
        assert!(eval(r#"python_version >= "3.8""#));
        assert!(!eval(r#"python_version < "3.8""#));
        assert!(
            eval(r#"python_version > "3.9""#),
            "3.11 > 3.9 as versions, not strings"
        );
        assert!(!eval(r#"sys_platform == "win32""#));
        assert!(eval(
            r#"platform_system != "Windows" and implementation_name == 'cpython'"#
        ));
        assert!(eval(
            r#"(os_name == "nt" or os_name == "posix") and python_full_version ~= "3.11.0""#
        ));
        assert!(eval(r#"platform_machine in "x86_64 aarch64""#));
        assert!(eval(r#"platform_machine not in "arm64 ppc64le""#));
        assert!(!eval(r#"extra == "dev""#));
        assert!(eval(r#"python_version == "3.*""#));
        assert!(eval(r#""3.7" <= python_version"#));
    }

    #[test]
    fn rejects_bad_markers() {
        for bad in [
            "python_version >",
            "pyversion == '3'",
            "python_version == '3.8' and",
            "(os_name == 'nt'",
            "os_name = 'nt'",
            "",
        ] {
            assert!(Marker::parse(bad).is_err(), "{bad}");
        }
    }
}
