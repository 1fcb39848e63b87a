//! The model search filter: `name LIKE 'fraud%' AND tags.team = 'risk'`, compiled to a SQL
//! condition with bound parameters (never string-spliced values).

use crate::error::{RegistryError, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Name,
    Description,
    Tag(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Like,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub field: Field,
    pub op: Op,
    pub value: String,
}

/// Parses `clause (AND clause)*` where a clause is `field op 'value'`, field is `name`,
/// `description` or `tags.<key>`, op is `=`, `!=` or `LIKE` (case-insensitive, `%` and `_`).
pub fn parse(input: &str) -> Result<Vec<Clause>> {
    let tokens = tokenize(input)?;
    let mut clauses = Vec::new();
    let mut it = tokens.into_iter().peekable();
    loop {
        let field = match it.next() {
            Some(Token::Word(w)) => parse_field(&w)?,
            Some(t) => return Err(bad(format!("expected a field name, found {t:?}"))),
            None if clauses.is_empty() => return Ok(clauses),
            None => return Err(bad("the filter ends after AND")),
        };
        let op = match it.next() {
            Some(Token::Op(o)) => o,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("like") || w.eq_ignore_ascii_case("ilike") => Op::Like,
            other => return Err(bad(format!("expected =, != or LIKE after the field, found {other:?}"))),
        };
        let value = match it.next() {
            Some(Token::Str(s)) => s,
            other => return Err(bad(format!("expected a quoted value, found {other:?}"))),
        };
        clauses.push(Clause { field, op, value });
        match it.next() {
            None => return Ok(clauses),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("and") => continue,
            Some(t) => return Err(bad(format!("expected AND between conditions, found {t:?}"))),
        }
    }
}

fn bad(msg: impl Into<String>) -> RegistryError {
    RegistryError::BadRequest(format!("invalid filter: {}", msg.into()))
}

fn parse_field(word: &str) -> Result<Field> {
    // MLflow's filters may spell attributes `attribute.name`.
    match word.strip_prefix("attribute.").unwrap_or(word) {
        "name" => Ok(Field::Name),
        "description" => Ok(Field::Description),
        w => match w.strip_prefix("tags.").or_else(|| w.strip_prefix("tag.")) {
            Some(key) if !key.is_empty() => Ok(Field::Tag(key.to_string())),
            _ => Err(bad(format!("unknown field '{w}' (use name, description or tags.<key>)"))),
        },
    }
}

#[derive(Debug)]
enum Token {
    Word(String),
    Str(String),
    Op(Op),
}

fn tokenize(input: &str) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '=' => {
                chars.next();
                tokens.push(Token::Op(Op::Eq));
            }
            '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    return Err(bad("'!' must be followed by '='"));
                }
                tokens.push(Token::Op(Op::Ne));
            }
            '\'' | '"' => {
                let quote = c;
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some(ch) if ch == quote => {
                            // A doubled quote stands for one quote character.
                            if chars.peek() == Some(&quote) {
                                chars.next();
                                s.push(quote);
                            } else {
                                break;
                            }
                        }
                        Some(ch) => s.push(ch),
                        None => return Err(bad("unterminated string")),
                    }
                }
                tokens.push(Token::Str(s));
            }
            _ => {
                let mut w = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_alphanumeric() || matches!(ch, '.' | '_' | '-') {
                        w.push(ch);
                        chars.next();
                    } else if ch == '`' {
                        // A quoted name, as MLflow writes tag keys: tags.`my key`.
                        chars.next();
                        loop {
                            match chars.next() {
                                Some('`') => break,
                                Some(q) => w.push(q),
                                None => return Err(bad("unterminated `name`")),
                            }
                        }
                    } else {
                        break;
                    }
                }
                if w.is_empty() {
                    return Err(bad(format!("unexpected character '{c}'")));
                }
                tokens.push(Token::Word(w));
            }
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conjunctions() {
        let c = parse("name LIKE 'fr%' AND tags.team = 'risk' and description != 'it''s'").expect("parses");
        assert_eq!(c.len(), 3);
        assert_eq!(c[0], Clause { field: Field::Name, op: Op::Like, value: "fr%".into() });
        assert_eq!(c[1].field, Field::Tag("team".into()));
        assert_eq!(c[2], Clause { field: Field::Description, op: Op::Ne, value: "it's".into() });
        assert!(parse("  ").expect("empty").is_empty());
    }

    #[test]
    fn reads_mlflow_spellings() {
        // What MLflow's client appends to every model search.
        let c = parse("attribute.name ILIKE 'Fr%' AND tag.`mlflow.prompt.is_prompt` != 'true'").expect("parses");
        assert_eq!(c[0], Clause { field: Field::Name, op: Op::Like, value: "Fr%".into() });
        assert_eq!(
            c[1],
            Clause { field: Field::Tag("mlflow.prompt.is_prompt".into()), op: Op::Ne, value: "true".into() }
        );
        assert_eq!(parse("tags.`a key` = 'v'").expect("parses")[0].field, Field::Tag("a key".into()));
        assert!(parse("tags.`open = 'v'").is_err());
    }

    #[test]
    fn rejects_malformed_filters() {
        for bad in
            ["name", "name =", "name = fraud", "owner = 'x'", "name = 'x' OR name = 'y'", "name = 'x' AND", "name = 'x"]
        {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
