"""Tokenizer and parser for the part of HQL that OMERO clients send.

The grammar follows Hibernate 3 HQL as OMERO's IQuery accepts it:

    query   := [SELECT [DISTINCT] item {, item}] FROM entity [[AS] alias]
               {, entity [[AS] alias] | join} [WHERE cond] [GROUP BY expr {, expr}
               [HAVING cond]] [ORDER BY expr [ASC|DESC] {, ...}]
    join    := [INNER | LEFT [OUTER]] JOIN [FETCH] path [[AS] alias] [WITH cond]
    cond    := cond OR cond | cond AND cond | NOT cond | ( cond ) | predicate
    predicate := expr op expr | expr [NOT] IN ( list | :param | subquery )
               | expr IS [NOT] NULL | expr [NOT] LIKE expr | expr [NOT] BETWEEN expr AND expr
               | [NOT] EXISTS ( subquery )
    expr    := term {(+ | - | '||') term};  term := factor {(* | /) factor}
    factor  := path | literal | :param | function ( args ) | ( expr ) | - factor

Keywords are case-insensitive; entity names, aliases and property names are not.
Every syntax error raises `omero.QueryException` with the offending token and
its column.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Union

import omero
import omero_ServerErrors_ice  # noqa: F401  (defines omero.QueryException)

KEYWORDS = {
    "select", "distinct", "from", "as", "join", "inner", "left", "right", "outer", "full",
    "fetch", "where", "and", "or", "not", "in", "is", "null", "like", "escape", "between",
    "order", "by", "asc", "desc", "group", "having", "exists", "true", "false", "with",
    "all", "any", "some", "elements", "new", "member", "of", "union", "case", "when",
    "then", "else", "end",
}

# Functions the evaluator implements; anything else is rejected at parse time so
# that the error names the function.
AGGREGATES = {"count", "sum", "avg", "min", "max"}
SCALAR_FUNCTIONS = {"lower", "upper", "length", "trim", "concat", "coalesce", "abs", "size", "str"}

_TOKEN_RE = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>\d+\.\d*(?:[eE][-+]?\d+)?[fFdD]?|\.\d+(?:[eE][-+]?\d+)?[fFdD]?|\d+(?:[eE][-+]?\d+)?[lLfFdD]?)
  | (?P<param>:[A-Za-z_]\w*)
  | (?P<positional>\?\d*)
  | (?P<name>[A-Za-z_$][\w$]*)
  | (?P<op><>|!=|\^=|<=|>=|\|\||[=<>(),.*+\-/])
    """,
    re.VERBOSE,
)


def syntax_error(message: str) -> omero.QueryException:
    """Return the exception that IQuery raises for an HQL query it cannot use."""
    return omero.QueryException(message=message)


@dataclasses.dataclass(frozen=True)
class Token:
    kind: str  # "name", "keyword", "string", "number", "param", "op", "end"
    text: str
    column: int  # 1-based, as Hibernate reports it

    def is_keyword(self, *words: str) -> bool:
        return self.kind == "keyword" and self.text in words

    def is_op(self, *ops: str) -> bool:
        return self.kind == "op" and self.text in ops


def tokenize(text: str) -> list[Token]:
    """Split an HQL string into tokens; keywords come back lower-cased."""
    tokens = []
    position = 0
    while position < len(text):
        match = _TOKEN_RE.match(text, position)
        if match is None:
            raise syntax_error(
                f"unexpected character {text[position]!r} at column {position + 1} in HQL: {text}"
            )
        kind = match.lastgroup
        value = match.group()
        if kind == "positional":
            raise syntax_error(
                f"positional parameter {value!r} at column {position + 1} is not supported; "
                f"use a named parameter such as :id"
            )
        if kind == "name" and value.lower() in KEYWORDS:
            tokens.append(Token("keyword", value.lower(), position + 1))
        elif kind != "space":
            tokens.append(Token(kind, value, position + 1))
        position = match.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


# ---------------------------------------------------------------------------
# Syntax tree


@dataclasses.dataclass(frozen=True)
class Path:
    """A dotted path such as `fse.fileset.id`; the first part may be an alias."""

    parts: tuple[str, ...]
    column: int

    @property
    def text(self) -> str:
        return ".".join(self.parts)


@dataclasses.dataclass(frozen=True)
class Literal:
    value: object  # str, int, float, bool or None


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    column: int


@dataclasses.dataclass(frozen=True)
class Star:
    """The `*` of `count(*)`."""


@dataclasses.dataclass(frozen=True)
class Function:
    name: str  # lower-case
    args: tuple["Expr", ...]
    distinct: bool = False


@dataclasses.dataclass(frozen=True)
class Arithmetic:
    op: str  # + - * / ||
    left: "Expr"
    right: "Expr"


@dataclasses.dataclass(frozen=True)
class Negate:
    operand: "Expr"


@dataclasses.dataclass(frozen=True)
class Compare:
    op: str  # = <> < > <= >=
    left: "Expr"
    right: "Expr"


@dataclasses.dataclass(frozen=True)
class And:
    left: "Expr"
    right: "Expr"


@dataclasses.dataclass(frozen=True)
class Or:
    left: "Expr"
    right: "Expr"


@dataclasses.dataclass(frozen=True)
class Not:
    operand: "Expr"


@dataclasses.dataclass(frozen=True)
class InList:
    operand: "Expr"
    items: tuple["Expr", ...]
    negated: bool


@dataclasses.dataclass(frozen=True)
class InQuery:
    operand: "Expr"
    query: "Query"
    negated: bool


@dataclasses.dataclass(frozen=True)
class IsNull:
    operand: "Expr"
    negated: bool


@dataclasses.dataclass(frozen=True)
class Like:
    operand: "Expr"
    pattern: "Expr"
    negated: bool
    escape: "Expr | None"


@dataclasses.dataclass(frozen=True)
class Between:
    operand: "Expr"
    low: "Expr"
    high: "Expr"
    negated: bool


@dataclasses.dataclass(frozen=True)
class Exists:
    query: "Query"
    negated: bool


Expr = Union[
    Path, Literal, Param, Star, Function, Arithmetic, Negate, Compare, And, Or, Not,
    InList, InQuery, IsNull, Like, Between, Exists,
]


@dataclasses.dataclass(frozen=True)
class SelectItem:
    expr: Expr
    alias: str | None


@dataclasses.dataclass(frozen=True)
class FromItem:
    entity: str
    alias: str | None
    column: int


@dataclasses.dataclass(frozen=True)
class Join:
    outer: bool
    fetch: bool
    path: Path
    alias: str | None
    condition: Expr | None


@dataclasses.dataclass(frozen=True)
class OrderItem:
    expr: Expr
    descending: bool


@dataclasses.dataclass(frozen=True)
class Query:
    select: tuple[SelectItem, ...] | None
    distinct: bool
    sources: tuple[FromItem, ...]
    joins: tuple[Join, ...]
    where: Expr | None
    group_by: tuple[Expr, ...]
    having: Expr | None
    order_by: tuple[OrderItem, ...]
    text: str


# ---------------------------------------------------------------------------
# Parser


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.position = 0

    # Token helpers

    @property
    def current(self) -> Token:
        return self.tokens[self.position]

    def peek(self, offset: int = 1) -> Token:
        index = min(self.position + offset, len(self.tokens) - 1)
        return self.tokens[index]

    def advance(self) -> Token:
        token = self.current
        if token.kind != "end":
            self.position += 1
        return token

    def accept_keyword(self, *words: str) -> bool:
        if self.current.is_keyword(*words):
            self.advance()
            return True
        return False

    def accept_op(self, *ops: str) -> bool:
        if self.current.is_op(*ops):
            self.advance()
            return True
        return False

    def error(self, expected: str) -> omero.QueryException:
        token = self.current
        found = "end of query" if token.kind == "end" else repr(token.text)
        return syntax_error(
            f"unexpected token {found} at column {token.column}, expected {expected}, in HQL: {self.text}"
        )

    def expect_keyword(self, word: str) -> None:
        if not self.accept_keyword(word):
            raise self.error(word.upper())

    def expect_op(self, op: str) -> None:
        if not self.accept_op(op):
            raise self.error(repr(op))

    def expect_name(self, what: str) -> Token:
        if self.current.kind != "name":
            raise self.error(what)
        return self.advance()

    # Query structure

    def parse(self) -> Query:
        query = self.query()
        if self.current.kind != "end":
            raise self.error("end of query")
        return query

    def query(self) -> Query:
        select = None
        distinct = False
        start_column = self.current.column

        if self.accept_keyword("select"):
            distinct = self.accept_keyword("distinct")
            select = self.select_list()

        if not self.accept_keyword("from"):
            raise self.error("FROM" if select is not None else "SELECT or FROM")
        sources, joins = self.from_clause()

        where = self.condition() if self.accept_keyword("where") else None

        group_by: tuple[Expr, ...] = ()
        having = None
        if self.accept_keyword("group"):
            self.expect_keyword("by")
            group_by = self.expression_list()
            if self.accept_keyword("having"):
                having = self.condition()

        order_by: tuple[OrderItem, ...] = ()
        if self.accept_keyword("order"):
            self.expect_keyword("by")
            order_by = self.order_list()

        end_column = self.current.column
        return Query(
            select, distinct, sources, joins, where, group_by, having, order_by,
            self.text[start_column - 1:end_column - 1].strip(),
        )

    def select_list(self) -> tuple[SelectItem, ...]:
        items = []
        while True:
            if self.current.is_keyword("new"):
                raise self.error("a select expression (constructor expressions are not supported)")
            expr = self.expression()
            alias = None
            if self.accept_keyword("as"):
                alias = self.expect_name("a column alias").text
            items.append(SelectItem(expr, alias))
            if not self.accept_op(","):
                return tuple(items)

    def from_clause(self) -> tuple[tuple[FromItem, ...], tuple[Join, ...]]:
        sources = [self.from_item()]
        joins = []
        while True:
            if self.accept_op(","):
                sources.append(self.from_item())
            elif self.current.is_keyword("join", "inner", "left", "right", "full"):
                joins.append(self.join())
            else:
                return tuple(sources), tuple(joins)

    def from_item(self) -> FromItem:
        if self.current.kind != "name":
            raise self.error("an entity name")
        column = self.current.column
        entity = self.dotted_name()
        alias = self.optional_alias()
        return FromItem(entity, alias, column)

    def dotted_name(self) -> str:
        parts = [self.expect_name("a name").text]
        while self.current.is_op(".") and self.peek().kind in ("name", "keyword"):
            self.advance()
            parts.append(self.advance().text)
        return ".".join(parts)

    def optional_alias(self) -> str | None:
        if self.accept_keyword("as"):
            return self.expect_name("an alias").text
        if self.current.kind == "name":
            return self.advance().text
        return None

    def join(self) -> Join:
        outer = False
        if self.current.is_keyword("right", "full"):
            raise self.error("JOIN, INNER JOIN or LEFT OUTER JOIN (right and full joins are not supported)")
        if self.accept_keyword("left"):
            self.accept_keyword("outer")
            outer = True
        else:
            self.accept_keyword("inner")
        self.expect_keyword("join")
        fetch = self.accept_keyword("fetch")
        if self.current.kind != "name":
            raise self.error("an association path")
        path = self.path()
        alias = self.optional_alias()
        condition = self.condition() if self.accept_keyword("with") else None
        return Join(outer, fetch, path, alias, condition)

    def order_list(self) -> tuple[OrderItem, ...]:
        items = []
        while True:
            expr = self.expression()
            descending = False
            if self.accept_keyword("desc"):
                descending = True
            else:
                self.accept_keyword("asc")
            items.append(OrderItem(expr, descending))
            if not self.accept_op(","):
                return tuple(items)

    def expression_list(self) -> tuple[Expr, ...]:
        items = [self.expression()]
        while self.accept_op(","):
            items.append(self.expression())
        return tuple(items)

    # Conditions

    def condition(self) -> Expr:
        left = self.conjunction()
        while self.accept_keyword("or"):
            left = Or(left, self.conjunction())
        return left

    def conjunction(self) -> Expr:
        left = self.negation()
        while self.accept_keyword("and"):
            left = And(left, self.negation())
        return left

    def negation(self) -> Expr:
        if self.current.is_keyword("not") and not self.peek().is_keyword("exists"):
            self.advance()
            return Not(self.negation())
        return self.predicate()

    def predicate(self) -> Expr:
        if self.current.is_keyword("exists") or (
            self.current.is_keyword("not") and self.peek().is_keyword("exists")
        ):
            negated = self.accept_keyword("not")
            self.expect_keyword("exists")
            self.expect_op("(")
            query = self.query()
            self.expect_op(")")
            return Exists(query, negated)

        if self.current.is_op("(") and self._parenthesised_condition():
            self.advance()
            inner = self.condition()
            self.expect_op(")")
            return inner

        left = self.expression()
        token = self.current

        if token.is_op("=", "<>", "!=", "^=", "<", ">", "<=", ">="):
            self.advance()
            op = "<>" if token.text in ("!=", "^=") else token.text
            return Compare(op, left, self.expression())

        if token.is_keyword("is"):
            self.advance()
            negated = self.accept_keyword("not")
            self.expect_keyword("null")
            return IsNull(left, negated)

        negated = self.accept_keyword("not")
        if self.accept_keyword("in"):
            return self.in_predicate(left, negated)
        if self.accept_keyword("like"):
            pattern = self.expression()
            escape = self.expression() if self.accept_keyword("escape") else None
            return Like(left, pattern, negated, escape)
        if self.accept_keyword("between"):
            low = self.expression()
            self.expect_keyword("and")
            return Between(left, low, self.expression(), negated)
        if negated:
            raise self.error("IN, LIKE or BETWEEN after NOT")
        if token.is_keyword("member"):
            raise self.error("a comparison (MEMBER OF is not supported)")
        raise self.error("a comparison operator, IN, IS, LIKE or BETWEEN")

    def _parenthesised_condition(self) -> bool:
        """Return whether the `(` at the current token opens a condition, not an expression.

        Scans to the matching `)` and looks for a comparison, logical keyword or
        predicate inside it at depth one.
        """
        depth = 0
        for token in self.tokens[self.position:]:
            if token.is_op("("):
                depth += 1
            elif token.is_op(")"):
                depth -= 1
                if depth == 0:
                    return False
            elif depth == 1 and (
                token.is_op("=", "<>", "!=", "^=", "<", ">", "<=", ">=")
                or token.is_keyword("and", "or", "not", "is", "in", "like", "between", "exists")
            ):
                return True
            elif token.kind == "end":
                return False
        return False

    def in_predicate(self, operand: Expr, negated: bool) -> Expr:
        if self.current.kind == "param":
            # Hibernate accepts `in :ids` without parentheses.
            return InList(operand, (self.factor(),), negated)
        self.expect_op("(")
        if self.current.is_keyword("select", "from"):
            query = self.query()
            self.expect_op(")")
            return InQuery(operand, query, negated)
        if self.current.is_op(")"):
            raise self.error("a value list (an empty IN list is not valid HQL)")
        items = self.expression_list()
        self.expect_op(")")
        return InList(operand, items, negated)

    # Expressions

    def expression(self) -> Expr:
        left = self.term()
        while self.current.is_op("+", "-", "||"):
            op = self.advance().text
            left = Arithmetic(op, left, self.term())
        return left

    def term(self) -> Expr:
        left = self.factor()
        while self.current.is_op("*", "/"):
            op = self.advance().text
            left = Arithmetic(op, left, self.factor())
        return left

    def factor(self) -> Expr:
        token = self.current

        if token.is_op("-"):
            self.advance()
            return Negate(self.factor())
        if token.is_op("("):
            self.advance()
            if self.current.is_keyword("select"):
                raise self.error("an expression (scalar subqueries are not supported)")
            inner = self.expression()
            self.expect_op(")")
            return inner
        if token.kind == "string":
            self.advance()
            return Literal(token.text[1:-1].replace("''", "'"))
        if token.kind == "number":
            self.advance()
            return Literal(_number(token.text))
        if token.kind == "param":
            self.advance()
            return Param(token.text[1:], token.column)
        if token.is_keyword("true", "false"):
            self.advance()
            return Literal(token.text == "true")
        if token.is_keyword("null"):
            self.advance()
            return Literal(None)
        if token.kind == "name" and self.peek().is_op("("):
            return self.function()
        if token.kind == "name":
            return self.path()
        raise self.error("an expression")

    def function(self) -> Expr:
        token = self.advance()
        name = token.text.lower()
        if name not in AGGREGATES and name not in SCALAR_FUNCTIONS:
            raise syntax_error(
                f"unknown function {token.text!r} at column {token.column} in HQL: {self.text}"
            )
        self.expect_op("(")

        if name == "count" and self.accept_op("*"):
            self.expect_op(")")
            return Function(name, (Star(),))

        distinct = name in AGGREGATES and self.accept_keyword("distinct")
        if self.current.is_op(")"):
            raise self.error(f"an argument of {name}()")
        args = self.expression_list()
        self.expect_op(")")
        return Function(name, args, distinct)

    def path(self) -> Path:
        token = self.expect_name("a path")
        parts = [token.text]
        while self.current.is_op("."):
            self.advance()
            # Property names such as `class`, `size` or `value` may collide with keywords.
            if self.current.kind not in ("name", "keyword"):
                raise self.error("a property name after '.'")
            parts.append(self.advance().text)
        return Path(tuple(parts), token.column)


def _number(text: str) -> int | float:
    stripped = text.rstrip("lLfFdD")
    if text[-1:] in "fFdD" or any(c in stripped for c in ".eE"):
        return float(stripped)
    return int(stripped)


def parse(text: str) -> Query:
    """Parse one HQL query; raise omero.QueryException naming the first problem."""
    if not isinstance(text, str) or not text.strip():
        raise syntax_error("the HQL query is empty")
    return _Parser(text).parse()
