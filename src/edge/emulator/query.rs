//! The subset of the IoT Hub query language the emulator understands:
//!
//! ```text
//! SELECT * | path[, path…] FROM devices | devices.modules [WHERE condition]
//! condition := condition OR condition | condition AND condition
//!            | NOT condition | ( condition ) | operand op operand
//! op        := = | != | <> | < | <= | > | >=
//! operand   := path | 'string' | number | true | false | null
//! path      := name(.name | .[[configuration id]])*   e.g. tags.site,
//!              properties.reported.lastDesiredStatus.code,
//!              capabilities.iotEdge, configurations.[[web-1]].status
//! ```
//!
//! A target condition is a bare `condition`. As in the hub, a comparison
//! with a property that does not exist is false (for `!=` too), keywords
//! are case-insensitive and string comparison is case-sensitive. Anything
//! else (aggregates, `GROUP BY`, functions) is refused with a message
//! saying the emulator does not support it. Pure: no I/O, no clock.

use serde_json::{Map, Value};

/// A parsed `SELECT`.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub select: Select,
    pub from: Source,
    pub condition: Option<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    All,
    Paths(Vec<Vec<String>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Devices,
    Modules,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Or(Box<Condition>, Box<Condition>),
    And(Box<Condition>, Box<Condition>),
    Not(Box<Condition>),
    Compare(Operand, Op, Operand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(Vec<String>),
    Literal(Value),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    /// `[[id]]`
    Bracketed(String),
    Str(String),
    Num(f64),
    Op(Op),
    Dot,
    Comma,
    Star,
    LParen,
    RParen,
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '.' => {
                out.push(Token::Dot);
                i += 1;
            }
            ',' => {
                out.push(Token::Comma);
                i += 1;
            }
            '*' => {
                out.push(Token::Star);
                i += 1;
            }
            '(' => {
                out.push(Token::LParen);
                i += 1;
            }
            ')' => {
                out.push(Token::RParen);
                i += 1;
            }
            '=' => {
                out.push(Token::Op(Op::Eq));
                i += 1;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push(Token::Op(Op::Ne));
                i += 2;
            }
            '<' => match chars.get(i + 1) {
                Some('>') => {
                    out.push(Token::Op(Op::Ne));
                    i += 2;
                }
                Some('=') => {
                    out.push(Token::Op(Op::Le));
                    i += 2;
                }
                _ => {
                    out.push(Token::Op(Op::Lt));
                    i += 1;
                }
            },
            '>' => {
                if chars.get(i + 1) == Some(&'=') {
                    out.push(Token::Op(Op::Ge));
                    i += 2;
                } else {
                    out.push(Token::Op(Op::Gt));
                    i += 1;
                }
            }
            '[' if chars.get(i + 1) == Some(&'[') => {
                let start = i + 2;
                let mut j = start;
                while j + 1 < chars.len() && !(chars[j] == ']' && chars[j + 1] == ']') {
                    j += 1;
                }
                if j + 1 >= chars.len() {
                    return Err("unterminated [[".into());
                }
                out.push(Token::Bracketed(chars[start..j].iter().collect()));
                i = j + 2;
            }
            '\'' | '"' => {
                let quote = c;
                let mut value = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err("unterminated string literal".into()),
                        Some(&ch) if ch == quote => {
                            // A doubled quote is a literal quote.
                            if chars.get(j + 1) == Some(&quote) {
                                value.push(quote);
                                j += 2;
                            } else {
                                break;
                            }
                        }
                        Some('\\') if chars.get(j + 1).is_some() => {
                            value.push(chars[j + 1]);
                            j += 2;
                        }
                        Some(&ch) => {
                            value.push(ch);
                            j += 1;
                        }
                    }
                }
                out.push(Token::Str(value));
                i = j + 1;
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                out.push(Token::Num(
                    text.parse().map_err(|_| format!("bad number {text:?}"))?,
                ));
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
                {
                    i += 1;
                }
                out.push(Token::Word(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn keyword(&mut self, kw: &str) -> bool {
        if let Some(Token::Word(w)) = self.peek()
            && w.eq_ignore_ascii_case(kw)
        {
            self.at += 1;
            return true;
        }
        false
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), String> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(format!("expected {kw}"))
        }
    }

    fn path(&mut self) -> Result<Vec<String>, String> {
        let mut segs = match self.next() {
            Some(Token::Word(w)) => vec![w],
            other => return Err(format!("expected a property name, found {other:?}")),
        };
        while self.peek() == Some(&Token::Dot) {
            self.at += 1;
            match self.next() {
                Some(Token::Word(w)) => segs.push(w),
                Some(Token::Bracketed(b)) => segs.push(b),
                other => return Err(format!("expected a name after '.', found {other:?}")),
            }
        }
        Ok(segs)
    }

    fn operand(&mut self) -> Result<Operand, String> {
        match self.peek() {
            Some(Token::Str(s)) => {
                let v = Value::String(s.clone());
                self.at += 1;
                Ok(Operand::Literal(v))
            }
            Some(Token::Num(n)) => {
                let v = serde_json::Number::from_f64(*n)
                    .map(Value::Number)
                    .ok_or("number out of range")?;
                self.at += 1;
                Ok(Operand::Literal(v))
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => {
                self.at += 1;
                Ok(Operand::Literal(Value::Bool(true)))
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => {
                self.at += 1;
                Ok(Operand::Literal(Value::Bool(false)))
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("null") => {
                self.at += 1;
                Ok(Operand::Literal(Value::Null))
            }
            Some(Token::Word(_)) => {
                let p = self.path()?;
                if self.peek() == Some(&Token::LParen) {
                    return Err(format!(
                        "function {} is not supported by the emulator",
                        p.join(".")
                    ));
                }
                Ok(Operand::Path(p))
            }
            other => Err(format!("expected a value or property, found {other:?}")),
        }
    }

    fn or(&mut self) -> Result<Condition, String> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            let right = self.and()?;
            left = Condition::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Condition, String> {
        let mut left = self.unary()?;
        while self.keyword("AND") {
            let right = self.unary()?;
            left = Condition::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Condition, String> {
        if self.keyword("NOT") {
            return Ok(Condition::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::LParen) {
            self.at += 1;
            let c = self.or()?;
            if self.next() != Some(Token::RParen) {
                return Err("expected ')'".into());
            }
            return Ok(c);
        }
        let left = self.operand()?;
        let op = match self.next() {
            Some(Token::Op(op)) => op,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("IN") => {
                return Err("IN is not supported by the emulator".into());
            }
            other => return Err(format!("expected a comparison operator, found {other:?}")),
        };
        let right = self.operand()?;
        Ok(Condition::Compare(left, op, right))
    }

    fn end(&self) -> Result<(), String> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(format!("unexpected {t:?} after the end of the condition")),
        }
    }
}

/// Parse a target condition (a bare `WHERE` clause). Empty means "no device".
pub fn parse_condition(s: &str) -> Result<Condition, String> {
    let mut p = Parser {
        tokens: tokenize(s)?,
        at: 0,
    };
    if p.peek().is_none() {
        return Err("the condition is empty".into());
    }
    let c = p.or()?;
    p.end()?;
    Ok(c)
}

/// Parse a `SELECT … FROM devices[.modules] [WHERE …]`.
pub fn parse_query(s: &str) -> Result<Query, String> {
    let mut p = Parser {
        tokens: tokenize(s)?,
        at: 0,
    };
    p.expect_keyword("SELECT")?;
    let select = if p.peek() == Some(&Token::Star) {
        p.at += 1;
        Select::All
    } else {
        let mut paths = vec![p.path()?];
        if p.peek() == Some(&Token::LParen) {
            return Err("aggregates and functions are not supported by the emulator".into());
        }
        while p.peek() == Some(&Token::Comma) {
            p.at += 1;
            paths.push(p.path()?);
        }
        Select::Paths(paths)
    };
    p.expect_keyword("FROM")?;
    let from = match p.path()?.as_slice() {
        [d] if d.eq_ignore_ascii_case("devices") => Source::Devices,
        [d, m] if d.eq_ignore_ascii_case("devices") && m.eq_ignore_ascii_case("modules") => {
            Source::Modules
        }
        other => {
            return Err(format!(
                "FROM {}: the emulator queries devices and devices.modules only",
                other.join(".")
            ));
        }
    };
    let condition = if p.keyword("WHERE") {
        Some(p.or()?)
    } else {
        None
    };
    if let Some(Token::Word(w)) = p.peek()
        && (w.eq_ignore_ascii_case("GROUP") || w.eq_ignore_ascii_case("ORDER"))
    {
        return Err(format!("{w} is not supported by the emulator"));
    }
    p.end()?;
    Ok(Query {
        select,
        from,
        condition,
    })
}

/// Resolve a path in a twin document (`None` = undefined).
pub fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, seg| v.get(seg.as_str()))
}

fn resolve(doc: &Value, o: &Operand) -> Option<Value> {
    match o {
        Operand::Literal(v) => Some(v.clone()),
        Operand::Path(p) => lookup(doc, p).cloned(),
    }
}

fn compare(a: &Value, op: Op, b: &Value) -> bool {
    use std::cmp::Ordering;
    let ord = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .zip(y.as_f64())
            .and_then(|(x, y)| x.partial_cmp(&y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    };
    match (op, ord) {
        (Op::Eq, Some(o)) => o == Ordering::Equal,
        (Op::Eq, None) => a == b,
        (Op::Ne, Some(o)) => o != Ordering::Equal,
        (Op::Ne, None) => a != b,
        (Op::Lt, Some(o)) => o == Ordering::Less,
        (Op::Le, Some(o)) => o != Ordering::Greater,
        (Op::Gt, Some(o)) => o == Ordering::Greater,
        (Op::Ge, Some(o)) => o != Ordering::Less,
        (_, None) => false,
    }
}

/// Does the twin document satisfy the condition?
pub fn matches(c: &Condition, doc: &Value) -> bool {
    match c {
        Condition::Or(a, b) => matches(a, doc) || matches(b, doc),
        Condition::And(a, b) => matches(a, doc) && matches(b, doc),
        Condition::Not(a) => !matches(a, doc),
        Condition::Compare(l, op, r) => match (resolve(doc, l), resolve(doc, r)) {
            (Some(a), Some(b)) => compare(&a, *op, &b),
            // Undefined compares false, whatever the operator.
            _ => false,
        },
    }
}

/// Apply a `SELECT` list to a matching document.
pub fn project(select: &Select, doc: &Value) -> Value {
    match select {
        Select::All => doc.clone(),
        Select::Paths(paths) => {
            let mut out = Map::new();
            for p in paths {
                if let (Some(v), Some(name)) = (lookup(doc, p), p.last()) {
                    out.insert(name.clone(), v.clone());
                }
            }
            Value::Object(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn device() -> Value {
        json!({
            "deviceId": "munich-1",
            "tags": {"site": "munich", "floor": 2},
            "capabilities": {"iotEdge": true},
            "properties": {"reported": {"lastDesiredStatus": {"code": 200}}},
            "configurations": {"web-1": {"status": "Applied"}}
        })
    }

    fn holds(cond: &str) -> bool {
        matches(&parse_condition(cond).expect(cond), &device())
    }

    #[test]
    fn equality_and_inequality_on_tags_and_properties() {
        assert!(holds("tags.site='munich'"));
        assert!(holds("tags.site = \"munich\""));
        assert!(!holds("tags.site='berlin'"));
        assert!(holds("tags.site!='berlin'"));
        assert!(holds("tags.site<>'berlin'"));
        assert!(holds("tags.floor = 2"));
        assert!(holds("tags.floor >= 2 AND tags.floor < 3"));
        assert!(holds("properties.reported.lastDesiredStatus.code = 200"));
        assert!(holds("capabilities.iotEdge = true"));
        assert!(holds("configurations.[[web-1]].status = 'Applied'"));
        assert!(holds("deviceId = 'munich-1'"));
    }

    #[test]
    fn and_binds_tighter_than_or_and_parentheses_group() {
        assert!(holds(
            "tags.site='berlin' OR tags.site='munich' AND tags.floor=2"
        ));
        assert!(!holds(
            "(tags.site='berlin' OR tags.site='munich') AND tags.floor=3"
        ));
        assert!(holds("NOT tags.site='berlin'"));
        assert!(holds("tags.site='munich' and capabilities.iotEdge=true"));
    }

    #[test]
    fn a_missing_property_compares_false_for_every_operator() {
        assert!(!holds("tags.missing='x'"));
        assert!(!holds("tags.missing!='x'"));
        assert!(!holds("tags.site.deeper='x'"));
    }

    #[test]
    fn string_comparison_is_case_sensitive() {
        assert!(!holds("tags.site='Munich'"));
    }

    #[test]
    fn queries_parse_with_projection_and_source() {
        let q = parse_query("SELECT deviceId FROM devices WHERE tags.site='munich'").expect("ok");
        assert_eq!(q.from, Source::Devices);
        assert_eq!(
            project(&q.select, &device()),
            json!({"deviceId": "munich-1"})
        );
        let q =
            parse_query("select * from devices.modules where moduleId='$edgeAgent'").expect("ok");
        assert_eq!(q.from, Source::Modules);
        assert_eq!(q.select, Select::All);
        assert!(
            parse_query("SELECT * FROM devices")
                .expect("ok")
                .condition
                .is_none()
        );
    }

    #[test]
    fn unsupported_and_malformed_queries_are_refused_with_a_reason() {
        for bad in [
            "SELECT COUNT() FROM devices",
            "SELECT * FROM jobs",
            "SELECT * FROM devices GROUP BY tags.site",
            "SELECT * FROM devices WHERE tags.site IN ['a']",
            "SELECT * FROM devices WHERE tags.site=",
            "SELECT * FROM devices WHERE tags.site='munich",
            "SELECT * devices",
        ] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
        for bad in [
            "",
            "tags.site",
            "tags.site='a' AND",
            "(tags.site='a'",
            "tags.site='a' tags",
        ] {
            assert!(parse_condition(bad).is_err(), "{bad:?}");
        }
    }
}
