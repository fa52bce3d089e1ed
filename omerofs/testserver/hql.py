"""HQL evaluation over the test server's object graph.

`execute(text, params, scope)` parses a query (see `hql_parser`), checks every
entity name, alias and property against the OMERO model (see `schema`), and runs
it over the graph that `scope` exposes for one viewer. It follows Hibernate 3 and
PostgreSQL as OMERO uses them:

- Rows are the cross product of the FROM entities, extended by each JOIN in turn.
  An inner join drops rows without a target, a left outer join keeps them with
  NULL. Objects the viewer may not read do not exist for the query: they never
  start a row and never satisfy a join.
- A path that steps through an association to anything but its `id`
  (`ws.well.plate.id` steps through `well`) is an implicit inner join: rows where
  that association is NULL are dropped, wherever the path appears.
  `i.fileset.id` and `i.fileset is null` read the foreign key and drop nothing.
- NULL follows SQL three-valued logic; ORDER BY puts NULLs last when ascending
  and first when descending, as PostgreSQL does.
- Paging (`Parameters.theFilter` offset and limit) applies after ordering.
- Result objects are copies trimmed to what the query loaded. An association
  comes back loaded when the query selected or fetched its target anywhere, and
  as an unloaded proxy otherwise. A collection comes back loaded only when a
  `join fetch` filled it, and then contains the elements that the query matched.
  omero-py relies on this because `Fileset.listFiles()` returns nothing for a
  loaded but empty `usedFiles`.

Anything the evaluator cannot parse or resolve raises `omero.QueryException`
naming the part it could not use.

Limitation: no scalar subqueries in SELECT, no `elements()`, `member of`, `case`,
or `new` constructor expressions, and no right or full joins.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import omero
import omero.model
import omero_ServerErrors_ice  # noqa: F401  (defines omero.QueryException)
from omero.rtypes import rbool, rdouble, rint, rlong, robject, rstring

from omerofs.testserver import schema
from omerofs.testserver import hql_parser as ast
from omerofs.testserver.hql_parser import syntax_error

log = logging.getLogger(__name__)

__all__ = ["Result", "Scope", "copy_objects", "execute", "unwrap_parameter"]


class Scope(Protocol):
    """The object graph as one viewer sees it; implemented by the store."""

    def extent(self, model: schema.ModelClass) -> Iterable[omero.model.IObject]:
        """Return every object of the class and its subclasses, readable or not."""

    def by_ids(self, model: schema.ModelClass, ids: Iterable[int]) -> Iterable[omero.model.IObject]:
        """Return the objects of the class with these IDs, readable or not."""

    def referrers(
        self, model: schema.ModelClass, path: tuple[str, ...], target_ids: Iterable[int]
    ) -> Iterable[omero.model.IObject]:
        """Return the objects of the class whose association `path` points at one of the IDs."""

    def is_visible(self, obj: omero.model.IObject) -> bool:
        """Return whether the viewer may read the object."""

    def permissions(self, obj: omero.model.IObject) -> omero.model.Permissions:
        """Return the permissions to put into a result copy's details for this viewer."""


# ---------------------------------------------------------------------------
# Static resolution of aliases and paths

# Step kinds beyond the field kinds of `schema`.
ID = "id"
DETAILS = "details"
UNIT_PART = "unit_part"
CLASS = "class"
SIZE = "size"


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    kind: str
    type_name: str  # rtype name, model class name or unit class name


@dataclasses.dataclass
class Alias:
    """One FROM entity or JOIN target; its object sits at `index` in each row."""

    name: str | None
    model: schema.ModelClass
    index: int
    parent: "Alias | None" = None
    steps: tuple[Step, ...] = ()
    outer: bool = False
    fetch: bool = False
    condition: Callable | None = None

    @property
    def through_collection(self) -> bool:
        return bool(self.steps) and self.steps[-1].kind == schema.COLLECTION


@dataclasses.dataclass(frozen=True)
class ResolvedPath:
    alias: Alias
    steps: tuple[Step, ...]
    text: str

    @property
    def kind(self) -> str:
        return self.steps[-1].kind if self.steps else schema.ENTITY

    @property
    def type_name(self) -> str:
        return self.steps[-1].type_name if self.steps else self.alias.model.name

    # Whether the last step, an association, joins too: a selected `i.fileset` is an
    # inner join in Hibernate 3, while `i.fileset is null` only reads the foreign key.
    join_last: bool = False

    def implicit_joins(self) -> bool:
        """Return whether the path steps through an association to more than its id."""
        if self.join_last and self.steps and self.steps[-1].kind == schema.ENTITY:
            return True
        for position, step in enumerate(self.steps[:-1]):
            if step.kind == schema.ENTITY and self.steps[position + 1].kind != ID:
                return True
        return False


@dataclasses.dataclass(frozen=True)
class ClassLiteral:
    name: str


def _resolve_steps(model: schema.ModelClass, names: Sequence[str], text: str) -> tuple[Step, ...]:
    """Resolve property names starting at `model`; raise QueryException on an unknown one."""
    steps: list[Step] = []
    current_model: schema.ModelClass | None = model
    current_kind = schema.ENTITY
    current_type = model.name

    for name in names:
        if current_kind == schema.ENTITY:
            assert current_model is not None
            step = _entity_step(current_model, name, text)
        elif current_kind == DETAILS:
            field = schema.DETAILS_FIELDS.get(name)
            if field is None:
                raise syntax_error(f"could not resolve property: details.{name} in path {text}")
            step = Step(name, field.kind, field.type_name)
        elif current_kind == schema.UNIT:
            if name not in ("value", "unit"):
                raise syntax_error(
                    f"could not resolve property: {name} of unit {current_type} in path {text}; "
                    f"units have 'value' and 'unit'"
                )
            step = Step(name, UNIT_PART, "RDouble" if name == "value" else "RString")
        elif current_kind == schema.COLLECTION:
            if name == "size":
                step = Step(name, SIZE, "RInt")
            else:
                raise syntax_error(
                    f"illegal attempt to dereference collection {steps[-1].name} with element property "
                    f"reference [{name}] in path {text}; join the collection with an alias first"
                )
        else:
            raise syntax_error(f"could not resolve property: {name} of {current_type} in path {text}")

        steps.append(step)
        current_kind = step.kind
        current_type = step.type_name
        current_model = schema.model_class(step.type_name) if step.kind == schema.ENTITY else None
    return tuple(steps)


def _entity_step(model: schema.ModelClass, name: str, text: str) -> Step:
    if name == "id":
        return Step(name, ID, "RLong")
    if name == "details":
        return Step(name, DETAILS, "Details")
    if name == "class":
        return Step(name, CLASS, "RString")
    field = model.polymorphic_field(name)
    if field is None:
        raise syntax_error(f"could not resolve property: {name} of: {model.java_name} in path {text}")
    if field.kind == schema.VALUES:
        raise syntax_error(f"property {name} of {model.java_name} is a value list; it cannot be used in {text}")
    return Step(name, field.kind, field.type_name)


# ---------------------------------------------------------------------------
# Compilation of a query into closures over rows


@dataclasses.dataclass
class Column:
    """One output column: its name and the static type used to wrap values as rtypes."""

    label: str
    kind: str  # "entity" or "scalar"
    type_name: str | None  # rtype name, model class name, or None for "from the Python value"


@dataclasses.dataclass
class _Compiled:
    query: ast.Query
    aliases: list[Alias]
    roots: list[Alias]
    joins: list[Alias]
    where: Callable | None
    implicit_paths: list[ResolvedPath]
    select: list[Callable]
    columns: list[Column]
    aggregate: bool
    group_by: list[Callable]
    having: Callable | None
    order_by: list[tuple[Callable, bool]]
    root_prefilters: list[tuple[tuple[str, ...], Callable]]


class _Compiler:
    """Turns one parsed query (and its subqueries) into closures over row tuples."""

    def __init__(self, query: ast.Query, outer: list[Alias] | None, parameters: dict[str, Any]):
        self.query = query
        self.parameters = parameters
        self.aliases: list[Alias] = list(outer or [])
        self.outer_count = len(self.aliases)
        self.paths: list[ResolvedPath] = []
        self.implicit_root: Alias | None = None
        self.aggregate_depth = 0

    # Aliases

    def compile(self) -> _Compiled:
        query = self.query
        roots = [self._add_root(item) for item in query.sources]

        joins = [self._add_join(join) for join in query.joins]
        for alias, join in zip(joins, query.joins):
            if join.condition is not None:
                alias.condition = self.condition(join.condition)

        self.paths = []
        where = self.condition(query.where) if query.where is not None else None

        has_aggregate = query.select is not None and any(_contains_aggregate(item.expr) for item in query.select)
        aggregate = bool(query.group_by) or has_aggregate or query.having is not None
        group_by = [self.expression(expr) for expr in query.group_by]

        select, columns = self._select_items(roots, joins, aggregate)
        having = self.condition(query.having, in_group=True) if query.having is not None else None
        order_by = [(self.expression(item.expr, in_group=aggregate), item.descending) for item in query.order_by]

        self._check_fetch_owners(joins)

        return _Compiled(
            query, self.aliases, roots, joins, where,
            [path for path in self.paths if path.implicit_joins()],
            select, columns, aggregate, group_by, having, order_by,
            self._root_prefilters(query.where, roots),
        )

    def _add_root(self, item: ast.FromItem) -> Alias:
        try:
            model = schema.resolve_entity_name(item.entity)
        except schema.UnknownClass:
            raise syntax_error(
                f"{item.entity} is not mapped (unknown entity at column {item.column}); "
                f"use the OMERO model class name such as Image or ome.model.core.Image"
            ) from None
        if item.alias is not None and self._find_alias(item.alias) is not None:
            raise syntax_error(f"alias {item.alias} is defined twice")
        alias = Alias(item.alias, model, len(self.aliases))
        self.aliases.append(alias)
        if item.alias is None and self.implicit_root is None:
            self.implicit_root = alias
        return alias

    def _add_join(self, join: ast.Join) -> Alias:
        start, names = self._split_path(join.path)
        if not names:
            raise syntax_error(f"join path {join.path.text} names no association")
        steps = _resolve_steps(start.model, names, join.path.text)
        last = steps[-1]
        if last.kind not in (schema.ENTITY, schema.COLLECTION):
            raise syntax_error(f"join path {join.path.text} does not end at an association or collection")
        for step in steps[:-1]:
            if step.kind == schema.COLLECTION:
                raise syntax_error(f"join path {join.path.text} goes through collection {step.name}")
        if join.alias is not None and self._find_alias(join.alias) is not None:
            raise syntax_error(f"alias {join.alias} is defined twice")
        alias = Alias(
            join.alias, schema.model_class(last.type_name), len(self.aliases),
            parent=start, steps=steps, outer=join.outer, fetch=join.fetch,
        )
        self.aliases.append(alias)
        return alias

    def _find_alias(self, name: str) -> Alias | None:
        for alias in reversed(self.aliases):
            if alias.name == name:
                return alias
        return None

    def _split_path(self, path: ast.Path) -> tuple[Alias, tuple[str, ...]]:
        alias = self._find_alias(path.parts[0])
        if alias is not None:
            return alias, path.parts[1:]
        if self.implicit_root is not None:
            return self.implicit_root, path.parts
        roots = [a for a in self.aliases[self.outer_count:] if a.parent is None]
        if len(roots) == 1:
            first = path.parts[0]
            if first in ("id", "details") or roots[0].model.field(first) is not None:
                return roots[0], path.parts
        raise syntax_error(
            f"alias or property {path.parts[0]!r} at column {path.column} is not defined in HQL: {self.query.text}"
        )

    def resolve(self, path: ast.Path) -> ResolvedPath | ClassLiteral:
        if len(path.parts) == 1 and self._find_alias(path.parts[0]) is None:
            try:
                model = schema.resolve_entity_name(path.parts[0])
            except schema.UnknownClass:
                model = None
            if model is not None and (self.implicit_root is None or self.implicit_root.model.field(path.parts[0]) is None):
                return ClassLiteral(model.name)
        alias, names = self._split_path(path)
        resolved = ResolvedPath(alias, _resolve_steps(alias.model, names, path.text), path.text)
        self.paths.append(resolved)
        return resolved

    # Select list

    def _select_items(self, roots: list[Alias], joins: list[Alias], aggregate: bool):
        query = self.query
        if query.select is None:
            # Hibernate returns the FROM entities and every non-fetch join target.
            selected = roots + [alias for alias in joins if not alias.fetch]
            functions = [_alias_getter(alias) for alias in selected]
            columns = [Column(alias.name or alias.model.name, "entity", alias.model.name) for alias in selected]
            return functions, columns

        functions = []
        columns = []
        for item in query.select:
            expr = item.expr
            functions.append(self.expression(expr, in_group=aggregate))
            columns.append(self._column(item))
        return functions, columns

    def _column(self, item: ast.SelectItem) -> Column:
        expr = item.expr
        label = item.alias or _describe(expr)
        if isinstance(expr, ast.Path):
            resolved = self.resolve(expr)
            if isinstance(resolved, ClassLiteral):
                return Column(label, "scalar", "RString")
            if resolved.kind == schema.ENTITY:
                if resolved.steps:
                    self.paths.append(dataclasses.replace(resolved, join_last=True))
                return Column(label, "entity", resolved.type_name)
            if resolved.kind in (schema.COLLECTION, schema.UNIT, DETAILS):
                raise syntax_error(
                    f"cannot select {expr.text}: it is a {resolved.kind}, select one of its properties instead"
                )
            return Column(label, "scalar", resolved.type_name)
        return Column(label, "scalar", self._static_type(expr))

    def _static_type(self, expr: ast.Expr) -> str | None:
        if isinstance(expr, ast.Function):
            if expr.name == "count":
                return "RLong"
            if expr.name in ("lower", "upper", "trim", "concat", "str"):
                return "RString"
            if expr.name in ("length", "size"):
                return "RInt"
            if expr.name == "avg":
                return "RDouble"
            if expr.name in ("min", "max", "abs", "coalesce") and expr.args:
                argument = expr.args[0]
                if isinstance(argument, ast.Path):
                    resolved = self.resolve(argument)
                    if isinstance(resolved, ResolvedPath) and resolved.kind in (schema.SCALAR, ID, UNIT_PART):
                        return resolved.type_name
        return None

    def _check_fetch_owners(self, joins: list[Alias]) -> None:
        """Reject fetch joins whose owner is not returned, as Hibernate does."""
        returned: set[int] = set()
        query = self.query
        if query.select is None:
            returned.update(alias.index for alias in self.aliases[self.outer_count:] if alias.parent is None)
            returned.update(alias.index for alias in joins if not alias.fetch)
        else:
            for item in query.select:
                if isinstance(item.expr, ast.Path) and len(item.expr.parts) == 1:
                    alias = self._find_alias(item.expr.parts[0])
                    if alias is not None:
                        returned.add(alias.index)
        for alias in joins:
            if not alias.fetch:
                continue
            assert alias.parent is not None
            if alias.parent.index not in returned:
                raise syntax_error(
                    "query specified join fetching, but the owner of the fetched association was not "
                    f"present in the select list (join fetch {alias.parent.name}.{'.'.join(s.name for s in alias.steps)})"
                )
            returned.add(alias.index)

    # Expressions

    def condition(self, expr: ast.Expr, in_group: bool = False) -> Callable:
        return self.expression(expr, in_group)

    def expression(self, expr: ast.Expr, in_group: bool = False) -> Callable:
        """Compile an expression into `f(row)`, or `f(rows)` inside an aggregate query."""
        if in_group:
            return self._group_expression(expr)
        return self._row_expression(expr)

    def _group_expression(self, expr: ast.Expr) -> Callable:
        """Compile for a group of rows: aggregates see all rows, plain expressions the first."""
        if isinstance(expr, ast.Function) and expr.name in ast.AGGREGATES:
            return self._aggregate(expr)
        if not _contains_aggregate(expr):
            row_function = self._row_expression(expr)
            return lambda rows: row_function(rows[0]) if rows else None
        return self._combine(expr, self._group_expression)

    def _aggregate(self, expr: ast.Function) -> Callable:
        if self.aggregate_depth:
            raise syntax_error(f"aggregate {expr.name}() cannot be nested in another aggregate")
        self.aggregate_depth += 1
        try:
            argument = expr.args[0]
            if isinstance(argument, ast.Star):
                return len
            function = self._row_expression(argument)
        finally:
            self.aggregate_depth -= 1
        return functools.partial(_aggregate_rows, expr.name, expr.distinct, function)

    def _row_expression(self, expr: ast.Expr) -> Callable:
        if isinstance(expr, ast.Literal):
            value = expr.value
            return lambda row: value
        if isinstance(expr, ast.Param):
            value = self._parameter(expr)
            return lambda row: value
        if isinstance(expr, ast.Path):
            return self._path_expression(expr)
        if isinstance(expr, ast.Star):
            raise syntax_error("'*' is only valid inside count(*)")
        if isinstance(expr, ast.Function) and expr.name in ast.AGGREGATES:
            raise syntax_error(f"aggregate {expr.name}() is not valid here in HQL: {self.query.text}")
        if isinstance(expr, ast.Exists):
            return self._exists(expr)
        if isinstance(expr, ast.InQuery):
            return self._in_query(expr)
        return self._combine(expr, self._row_expression)

    def _combine(self, expr: ast.Expr, compile_part: Callable) -> Callable:
        """Compile an operator or function node whose operands compile with `compile_part`."""
        if isinstance(expr, ast.Function):
            args = [compile_part(arg) for arg in expr.args]
            implementation = _scalar_function(expr)
            return lambda row: implementation([arg(row) for arg in args])
        if isinstance(expr, ast.Compare):
            left, right, op = compile_part(expr.left), compile_part(expr.right), expr.op
            return lambda row: _compare(op, left(row), right(row))
        if isinstance(expr, ast.And):
            left, right = compile_part(expr.left), compile_part(expr.right)
            return lambda row: _and(left(row), lambda: right(row))
        if isinstance(expr, ast.Or):
            left, right = compile_part(expr.left), compile_part(expr.right)
            return lambda row: _or(left(row), lambda: right(row))
        if isinstance(expr, ast.Not):
            operand = compile_part(expr.operand)
            return lambda row: _not(operand(row))
        if isinstance(expr, ast.IsNull):
            operand, negated = compile_part(expr.operand), expr.negated
            return lambda row: (operand(row) is None) != negated
        if isinstance(expr, ast.InList):
            return self._in_list(expr, compile_part)
        if isinstance(expr, ast.Like):
            return self._like(expr, compile_part)
        if isinstance(expr, ast.Between):
            operand, low, high = compile_part(expr.operand), compile_part(expr.low), compile_part(expr.high)
            negated = expr.negated
            return lambda row: _between(operand(row), low(row), high(row), negated)
        if isinstance(expr, ast.Arithmetic):
            left, right, op = compile_part(expr.left), compile_part(expr.right), expr.op
            return lambda row: _arithmetic(op, left(row), right(row))
        if isinstance(expr, ast.Negate):
            operand = compile_part(expr.operand)
            return lambda row: _arithmetic("-", 0, operand(row))
        if isinstance(expr, (ast.Exists, ast.InQuery)):
            raise syntax_error("subqueries cannot be combined with aggregates in one expression")
        raise syntax_error(f"unsupported expression {expr!r}")

    def _parameter(self, expr: ast.Param) -> Any:
        if expr.name not in self.parameters:
            known = ", ".join(sorted(self.parameters)) or "none"
            raise syntax_error(
                f"named parameter :{expr.name} is not set (Parameters.map has: {known})"
            )
        return self.parameters[expr.name]

    def _path_expression(self, expr: ast.Path) -> Callable:
        resolved = self.resolve(expr)
        if isinstance(resolved, ClassLiteral):
            name = resolved.name
            return lambda row: name
        index = resolved.alias.index
        steps = resolved.steps
        if not steps:
            return lambda row: row[index]
        return lambda row: _walk(row[index], steps)

    def _in_list(self, expr: ast.InList, compile_part: Callable) -> Callable:
        operand = compile_part(expr.operand)
        negated = expr.negated

        if all(isinstance(item, (ast.Literal, ast.Param)) for item in expr.items):
            constants = _flatten([self._row_expression(item)(None) for item in expr.items])
            if not constants:
                # PostgreSQL rejects the `in ()` that Hibernate 3 writes for an empty list.
                raise syntax_error(f"the IN list of {_describe(expr.operand)} is empty in HQL: {self.query.text}")
            return lambda row: _in(operand(row), constants, negated)

        items = [compile_part(item) for item in expr.items]
        return lambda row: _in(operand(row), _flatten([item(row) for item in items]), negated)

    def _like(self, expr: ast.Like, compile_part: Callable) -> Callable:
        operand, pattern = compile_part(expr.operand), compile_part(expr.pattern)
        escape = compile_part(expr.escape) if expr.escape is not None else (lambda row: None)
        negated = expr.negated
        return lambda row: _like(operand(row), pattern(row), escape(row), negated)

    def _subquery(self, query: ast.Query) -> _Compiled:
        return _Compiler(query, self.aliases, self.parameters).compile()

    def _exists(self, expr: ast.Exists) -> Callable:
        compiled = self._subquery(expr.query)
        negated = expr.negated

        def evaluate(row, scope_holder=_CURRENT):
            rows = _filtered_rows(compiled, scope_holder.scope, row)
            return (len(rows) > 0) != negated

        return evaluate

    def _in_query(self, expr: ast.InQuery) -> Callable:
        compiled = self._subquery(expr.query)
        if len(compiled.select) != 1:
            raise syntax_error("a subquery after IN must select exactly one expression")
        operand = self._row_expression(expr.operand)
        negated = expr.negated

        def evaluate(row, scope_holder=_CURRENT):
            values = [output[0] for output, _ in _output_rows(compiled, scope_holder.scope, row)]
            if not values:
                return negated
            return _in(operand(row), values, negated)

        return evaluate

    # Index use

    def _root_prefilters(self, where: ast.Expr | None, roots: list[Alias]):
        """Find top-level `root.<association...>.id` `=` or `in` conjuncts that an index lookup can resolve."""
        if where is None or len(roots) != 1:
            return []
        root = roots[0]
        prefilters = []
        for conjunct in _conjuncts(where):
            if isinstance(conjunct, ast.Compare) and conjunct.op == "=":
                path, value = conjunct.left, conjunct.right
                if not isinstance(path, ast.Path):
                    path, value = value, path
                items = (value,)
            elif isinstance(conjunct, ast.InList) and not conjunct.negated:
                path, items = conjunct.operand, conjunct.items
            else:
                continue
            if not isinstance(path, ast.Path) or not all(isinstance(i, (ast.Literal, ast.Param)) for i in items):
                continue
            try:
                resolved = self.resolve(path)
            except omero.QueryException:
                continue
            if not isinstance(resolved, ResolvedPath) or resolved.alias is not root:
                continue
            steps = resolved.steps
            if not steps or steps[-1].kind != ID:
                continue
            if not all(step.kind in (schema.ENTITY, DETAILS) for step in steps[:-1]):
                continue
            values = [self._row_expression(item)(None) for item in items]
            prefilters.append((tuple(step.name for step in steps[:-1]), _flatten_ids(values)))
        return prefilters


class _ScopeHolder:
    """The scope of the query being evaluated, for subquery closures compiled earlier."""

    scope: Scope | None = None


_CURRENT = _ScopeHolder()


def _alias_getter(alias: Alias) -> Callable:
    index = alias.index
    return lambda row: row[index]


def _describe(expr: ast.Expr) -> str:
    if isinstance(expr, ast.Path):
        return expr.text
    if isinstance(expr, ast.Function):
        return f"{expr.name}(...)"
    return type(expr).__name__.lower()


def _contains_aggregate(expr: Any) -> bool:
    if isinstance(expr, ast.Function) and expr.name in ast.AGGREGATES:
        return True
    if isinstance(expr, (ast.Exists, ast.InQuery)):
        return False
    if dataclasses.is_dataclass(expr):
        for field in dataclasses.fields(expr):
            value = getattr(expr, field.name)
            if isinstance(value, tuple):
                if any(_contains_aggregate(item) for item in value):
                    return True
            elif _contains_aggregate(value):
                return True
    return False


def _conjuncts(expr: ast.Expr) -> list[ast.Expr]:
    if isinstance(expr, ast.And):
        return _conjuncts(expr.left) + _conjuncts(expr.right)
    return [expr]


def _flatten(values: list[Any]) -> list[Any]:
    """Expand list parameters (an RList for `in (:ids)`) into their items."""
    flat: list[Any] = []
    for value in values:
        if isinstance(value, list):
            flat.extend(value)
        else:
            flat.append(value)
    return flat


def _flatten_ids(values: list[Any]) -> set[int] | None:
    ids: set[int] = set()
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, omero.model.IObject):
                item = item.getId().getValue() if item.getId() is not None else None
            if isinstance(item, bool) or not isinstance(item, int):
                return None
            ids.add(item)
    return ids


# ---------------------------------------------------------------------------
# Values


def unwrap_parameter(value: Any) -> Any:
    """Turn an rtype from Parameters.map into the Python value the evaluator compares."""
    if isinstance(value, (omero.RList, omero.RSet, omero.RArray)):
        return [unwrap_parameter(item) for item in (value.getValue() or [])]
    if isinstance(value, omero.RObject):
        return value.getValue()
    if isinstance(value, omero.RType):
        return value.getValue()
    if isinstance(value, (list, tuple, set)):
        return [unwrap_parameter(item) for item in value]
    return value


def _walk(obj: Any, steps: tuple[Step, ...]) -> Any:
    """Follow `steps` from an object; return None at the first NULL."""
    for step in steps:
        if obj is None:
            return None
        kind = step.kind
        if kind == ID:
            return obj._id.getValue() if obj._id is not None else None
        if kind == DETAILS:
            obj = obj._details
        elif kind == CLASS:
            return type(obj).__name__.removesuffix("I")
        elif kind == UNIT_PART:
            if step.name == "value":
                return obj.getValue()
            unit = obj.getUnit()
            return str(unit) if unit is not None else None
        elif kind == SIZE:
            return len(obj)
        elif kind == schema.COLLECTION:
            obj = getattr(obj, "_" + step.name + "Seq", None)
        else:
            # Objects of sibling subclasses lack the field and read NULL.
            obj = getattr(obj, "_" + step.name, None)
            if kind == schema.SCALAR and isinstance(obj, omero.RType):
                obj = obj.getValue()
    return obj


def _comparable(value: Any) -> Any:
    if isinstance(value, omero.model.IObject):
        return ("entity", _id_space(value), value._id.getValue())
    return value


@functools.cache
def _id_space_of(class_name: str) -> str:
    model = schema.model_class(class_name)
    while model.base is not None:
        model = schema.model_class(model.base)
    return model.name


def _id_space(obj: omero.model.IObject) -> str:
    return _id_space_of(type(obj).__name__.removesuffix("I"))


def _pair(left: Any, right: Any) -> tuple[Any, Any]:
    """Bring an entity and an id (or two entities) to comparable values."""
    left_entity = isinstance(left, omero.model.IObject)
    right_entity = isinstance(right, omero.model.IObject)
    if left_entity and right_entity:
        return _comparable(left), _comparable(right)
    if left_entity:
        return left._id.getValue(), right
    if right_entity:
        return left, right._id.getValue()
    return left, right


def _compare(op: str, left: Any, right: Any) -> bool | None:
    if left is None or right is None:
        return None
    left, right = _pair(left, right)
    try:
        if op == "=":
            return left == right
        if op == "<>":
            return left != right
        if op == "<":
            return left < right
        if op == ">":
            return left > right
        if op == "<=":
            return left <= right
        if op == ">=":
            return left >= right
    except TypeError:
        raise syntax_error(f"cannot compare {left!r} with {right!r} using {op}") from None
    raise syntax_error(f"unknown operator {op}")


def _in(value: Any, items: list[Any], negated: bool) -> bool | None:
    if value is None:
        return None
    found = False
    saw_null = False
    for item in items:
        if item is None:
            saw_null = True
            continue
        left, right = _pair(value, item)
        if left == right:
            found = True
            break
    if found:
        return not negated
    if saw_null:
        return None
    return negated


def _and(left: bool | None, right: Callable[[], bool | None]) -> bool | None:
    if left is False:
        return False
    right_value = right()
    if right_value is False:
        return False
    if left is None or right_value is None:
        return None
    return True


def _or(left: bool | None, right: Callable[[], bool | None]) -> bool | None:
    if left is True:
        return True
    right_value = right()
    if right_value is True:
        return True
    if left is None or right_value is None:
        return None
    return False


def _not(value: bool | None) -> bool | None:
    return None if value is None else not value


def _between(value: Any, low: Any, high: Any, negated: bool) -> bool | None:
    result = _and(_compare(">=", value, low), lambda: _compare("<=", value, high))
    return _not(result) if negated else result


def _like(value: Any, pattern: Any, escape: Any, negated: bool) -> bool | None:
    if value is None or pattern is None:
        return None
    regex = []
    characters = iter(str(pattern))
    for character in characters:
        if escape is not None and character == escape:
            regex.append(re.escape(next(characters, "")))
        elif character == "%":
            regex.append(".*")
        elif character == "_":
            regex.append(".")
        else:
            regex.append(re.escape(character))
    matched = re.fullmatch("".join(regex), str(value), re.S) is not None
    return matched != negated


def _arithmetic(op: str, left: Any, right: Any) -> Any:
    if left is None or right is None:
        return None
    try:
        if op == "||":
            return f"{left}{right}"
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        if op == "/":
            if isinstance(left, int) and isinstance(right, int):
                return int(left / right)
            return left / right
    except (TypeError, ZeroDivisionError) as error:
        raise syntax_error(f"cannot evaluate {left!r} {op} {right!r}: {error}") from None
    raise syntax_error(f"unknown operator {op}")


def _scalar_function(expr: ast.Function) -> Callable[[list[Any]], Any]:
    name = expr.name
    expected = {"lower": 1, "upper": 1, "length": 1, "trim": 1, "abs": 1, "size": 1, "str": 1}
    if name in expected and len(expr.args) != expected[name]:
        raise syntax_error(f"{name}() takes {expected[name]} argument, got {len(expr.args)}")

    def first_or_none(function):
        def apply(args):
            value = args[0]
            if value is None:
                return None
            if name != "size" and not isinstance(value, (str, int, float)):
                raise syntax_error(f"{name}() needs a value, not a {type(value).__name__.removesuffix('I')}")
            return function(value)

        return apply

    if name == "lower":
        return first_or_none(lambda value: str(value).lower())
    if name == "upper":
        return first_or_none(lambda value: str(value).upper())
    if name == "length":
        return first_or_none(lambda value: len(str(value)))
    if name == "trim":
        return first_or_none(lambda value: str(value).strip())
    if name == "str":
        return first_or_none(str)
    if name == "abs":
        return first_or_none(abs)
    if name == "size":
        return first_or_none(len)
    if name == "concat":
        def concat(args):
            if any(a is None for a in args):
                return None
            if not all(isinstance(a, (str, int, float)) for a in args):
                raise syntax_error("concat() needs values, not objects")
            return "".join(str(a) for a in args)

        return concat
    if name == "coalesce":
        return lambda args: next((a for a in args if a is not None), None)
    raise syntax_error(f"unknown function {name}()")


def _aggregate_rows(name: str, distinct: bool, function: Callable, rows: list) -> Any:
    values = [function(row) for row in rows]
    values = [value for value in values if value is not None]
    if distinct:
        unique = {}
        for value in values:
            unique.setdefault(_hashable(value), value)
        values = list(unique.values())
    if name == "count":
        return len(values)
    if not values:
        return None
    values = [_comparable(v)[2] if isinstance(v, omero.model.IObject) else v for v in values]
    try:
        if name == "sum":
            return sum(values)
        if name == "avg":
            return sum(values) / len(values)
        if name == "min":
            return min(values)
        if name == "max":
            return max(values)
    except TypeError:
        raise syntax_error(f"cannot compute {name}() over {values[:3]!r}") from None
    raise syntax_error(f"unknown aggregate {name}()")


def _hashable(value: Any) -> Any:
    if isinstance(value, omero.model.IObject):
        return _comparable(value)
    if isinstance(value, list):
        return tuple(_hashable(item) for item in value)
    return value


# ---------------------------------------------------------------------------
# Evaluation


def _root_candidates(compiled: _Compiled, alias: Alias, scope: Scope) -> Iterable:
    """Return the objects that may start a row for a FROM alias, using indexes where possible."""
    candidates = None
    if alias is compiled.roots[0]:
        for path, ids in compiled.root_prefilters:
            if ids is None:
                continue
            if not path:
                found = list(scope.by_ids(alias.model, sorted(ids)))
            else:
                found = list(scope.referrers(alias.model, path, ids))
            if candidates is not None:
                found_ids = {id(obj) for obj in found}
                found = [obj for obj in candidates if id(obj) in found_ids]
            candidates = found
    if candidates is None:
        candidates = scope.extent(alias.model)
    return [obj for obj in candidates if scope.is_visible(obj)]


def _joined_targets(alias: Alias, owner: Any, scope: Scope) -> list:
    if owner is None:
        return []
    target = _walk_objects(owner, alias.steps)
    if alias.through_collection:
        return [element for element in (target or []) if element is not None and scope.is_visible(element)]
    if target is None or not scope.is_visible(target):
        return []
    return [target]


def _walk_objects(obj: Any, steps: tuple[Step, ...]) -> Any:
    for step in steps:
        if obj is None:
            return None
        if step.kind == DETAILS:
            obj = obj._details
        elif step.kind == schema.COLLECTION:
            obj = getattr(obj, "_" + step.name + "Seq", None)
        else:
            obj = getattr(obj, "_" + step.name, None)
    return obj


def _passes_implicit_joins(path: ResolvedPath, row: tuple, scope: Scope) -> bool:
    """Return whether every association the path joins implicitly exists and is readable."""
    obj = row[path.alias.index]
    steps = path.steps
    last = len(steps) if path.join_last else len(steps) - 1
    for position, step in enumerate(steps[:last]):
        if obj is None:
            return False
        if step.kind == DETAILS:
            obj = obj._details
            continue
        if step.kind != schema.ENTITY:
            return True
        if position + 1 < len(steps) and steps[position + 1].kind == ID:
            return True
        obj = getattr(obj, "_" + step.name, None)
        if obj is None or not scope.is_visible(obj):
            return False
    return True


def _filtered_rows(compiled: _Compiled, scope: Scope, outer_row: tuple | None = None) -> list[tuple]:
    """Build the rows of FROM and JOIN and keep those that pass the implicit joins and WHERE."""
    rows: list[tuple] = [tuple(outer_row or ())]
    for alias in compiled.roots:
        candidates = _root_candidates(compiled, alias, scope)
        rows = [row + (obj,) for row in rows for obj in candidates]

    for alias in compiled.joins:
        extended = []
        parent_index = alias.parent.index
        for row in rows:
            targets = _joined_targets(alias, row[parent_index], scope)
            if alias.condition is not None:
                targets = [t for t in targets if alias.condition(row + (t,)) is True]
            if targets:
                extended.extend(row + (target,) for target in targets)
            elif alias.outer:
                extended.append(row + (None,))
        rows = extended

    implicit = compiled.implicit_paths
    where = compiled.where
    matching_rows = []
    for row in rows:
        if implicit and not all(_passes_implicit_joins(path, row, scope) for path in implicit):
            continue
        if where is not None and where(row) is not True:
            continue
        matching_rows.append(row)
    return matching_rows


def _output_rows(compiled: _Compiled, scope: Scope, outer_row: tuple | None = None) -> list[tuple[list, list]]:
    """Return (select values, order keys) per output row, before DISTINCT, ORDER BY and paging."""
    rows = _filtered_rows(compiled, scope, outer_row)
    if not compiled.aggregate:
        return [
            ([f(row) for f in compiled.select], [f(row) for f, _ in compiled.order_by])
            for row in rows
        ]

    groups: dict[Any, list] = {}
    if compiled.group_by:
        for row in rows:
            key = tuple(_hashable(f(row)) for f in compiled.group_by)
            groups.setdefault(key, []).append(row)
    else:
        groups[()] = rows

    output = []
    for members in groups.values():
        if compiled.having is not None and compiled.having(members) is not True:
            continue
        output.append(([f(members) for f in compiled.select], [f(members) for f, _ in compiled.order_by]))
    return output


def _sort_key(order_by: list[tuple[Callable, bool]]):
    directions = [descending for _, descending in order_by]

    def compare(a: tuple[list, list], b: tuple[list, list]) -> int:
        for left, right, descending in zip(a[1], b[1], directions):
            left, right = _pair(left, right)
            if isinstance(left, tuple) and isinstance(right, tuple):
                left, right = left[2], right[2]
            if left == right:
                continue
            # PostgreSQL sorts NULL as larger than any value.
            if left is None:
                result = 1
            elif right is None:
                result = -1
            else:
                try:
                    result = -1 if left < right else 1
                except TypeError:
                    raise syntax_error(f"cannot order {left!r} against {right!r}") from None
            return -result if descending else result
        return 0

    return functools.cmp_to_key(compare)


@dataclasses.dataclass
class Result:
    """The rows of one query, with what the query loaded for building result copies."""

    columns: list[Column]
    rows: list[list[Any]]
    scope: Scope
    loaded: set[int]
    collections: dict[tuple[int, str], list]

    def objects(self) -> list:
        """Return the rows as result copies: one object per row for a single entity column."""
        materializer = _Materializer(self.scope, self.loaded, self.collections)
        if len(self.columns) == 1 and self.columns[0].kind == "entity":
            return [materializer.copy(row[0]) if row[0] is not None else None for row in self.rows]
        return [self._wrap_row(row, materializer) for row in self.rows]

    def projection(self) -> list[list]:
        """Return every row as a list of rtypes, entities wrapped in RObject."""
        materializer = _Materializer(self.scope, self.loaded, self.collections)
        return [self._wrap_row(row, materializer) for row in self.rows]

    def _wrap_row(self, row: list[Any], materializer: "_Materializer") -> list:
        return [_wrap(value, column, materializer) for value, column in zip(row, self.columns)]


_RTYPE_WRAPPERS = {
    "RString": rstring,
    "RLong": rlong,
    "RInt": rint,
    "RDouble": rdouble,
    "RFloat": omero.rtypes.rfloat,
    "RBool": rbool,
    "RTime": omero.rtypes.rtime,
}


def _wrap(value: Any, column: Column, materializer: "_Materializer") -> Any:
    if value is None:
        return None
    if isinstance(value, omero.model.IObject):
        return robject(materializer.copy(value))
    if isinstance(value, omero.RType):
        return value
    wrapper = _RTYPE_WRAPPERS.get(column.type_name or "")
    if wrapper is not None:
        if column.type_name in ("RDouble", "RFloat") and isinstance(value, (int, float)):
            return wrapper(float(value))
        if column.type_name in ("RLong", "RInt", "RTime") and isinstance(value, (int, float)) and not isinstance(value, bool):
            return wrapper(int(value))
        if column.type_name == "RString":
            return wrapper(str(value))
        if column.type_name == "RBool" and isinstance(value, bool):
            return wrapper(value)
    if isinstance(value, bool):
        return rbool(value)
    if isinstance(value, int):
        return rlong(value)
    if isinstance(value, float):
        return rdouble(value)
    if isinstance(value, str):
        return rstring(value)
    raise syntax_error(f"cannot return a value of type {type(value).__name__} in column {column.label}")


class _Materializer:
    """Builds the trimmed copies of one query's results; see the module docstring."""

    def __init__(self, scope: Scope, loaded: set[int], collections: dict[tuple[int, str], list]):
        self.scope = scope
        self.loaded = loaded
        self.collections = collections
        self.copies: dict[int, omero.model.IObject] = {}

    def reference(self, target: Any) -> Any:
        if target is None:
            return None
        if id(target) in self.loaded:
            return self.copy(target)
        return type(target)(target._id.getValue(), False)

    def copy(self, master: omero.model.IObject) -> omero.model.IObject:
        key = id(master)
        existing = self.copies.get(key)
        if existing is not None:
            return existing

        copy = type(master)(master._id.getValue(), True)
        self.copies[key] = copy
        copy._version = getattr(master, "_version", None)

        for name, field in _fields_of(type(master).__name__).items():
            attribute = "_" + name
            if field.kind == schema.COLLECTION:
                self._copy_collection(master, copy, name)
            elif field.kind == schema.ENTITY:
                setattr(copy, attribute, self.reference(getattr(master, attribute, None)))
            elif field.kind == schema.VALUES:
                values = getattr(master, attribute, None)
                setattr(copy, attribute, list(values) if values is not None else None)
            else:
                setattr(copy, attribute, getattr(master, attribute, None))

        copy._details = self._copy_details(master)
        return copy

    def _copy_collection(self, master: Any, copy: Any, name: str) -> None:
        elements = self.collections.get((id(master), name))
        if elements is None:
            setattr(copy, "_" + name + "Seq", None)
            setattr(copy, "_" + name + "Loaded", False)
            return
        setattr(copy, "_" + name + "Seq", [self.copy(element) for element in elements])
        setattr(copy, "_" + name + "Loaded", True)

    def _copy_details(self, master: Any) -> omero.model.DetailsI:
        source = master._details
        details = omero.model.DetailsI()
        if source is not None:
            details._owner = self.reference(source._owner)
            details._group = self.reference(source._group)
            details._creationEvent = self.reference(source._creationEvent)
            details._updateEvent = self.reference(source._updateEvent)
            details._externalInfo = self.reference(source._externalInfo)
        details._permissions = self.scope.permissions(master)
        return details


@functools.cache
def _fields_of(implementation_name: str) -> dict[str, schema.Field]:
    return schema.model_class(implementation_name.removesuffix("I")).all_fields()


def copy_objects(scope: Scope, masters: list) -> list:
    """Return result copies as IQuery.get returns them: associations and collections unloaded."""
    materializer = _Materializer(scope, {id(master) for master in masters}, {})
    return [materializer.copy(master) for master in masters]


def _register_fetches(compiled: _Compiled, rows: list[tuple], loaded: set[int], collections: dict) -> None:
    fetches = [alias for alias in compiled.joins if alias.fetch]
    for row in rows:
        for alias in fetches:
            owner = row[alias.parent.index]
            target = row[alias.index]
            if owner is None:
                continue
            if target is not None:
                loaded.add(id(target))
            if alias.through_collection:
                key = (id(owner), alias.steps[-1].name)
                elements = collections.setdefault(key, [])
                if target is not None and all(e is not target for e in elements):
                    elements.append(target)


def execute(text: str, params: Any, scope: Scope) -> Result:
    """Run one HQL query for the viewer behind `scope`.

    `params` is an `omero.sys.Parameters` (or None): its `map` supplies the named
    parameters and its `theFilter` the offset and limit.
    """
    query = ast.parse(text)
    parameters = {}
    offset, limit = 0, None
    if params is not None:
        for name, value in (getattr(params, "map", None) or {}).items():
            parameters[name] = unwrap_parameter(value)
        page = getattr(params, "theFilter", None)
        if page is not None:
            offset = unwrap_parameter(page.offset) or 0
            limit = unwrap_parameter(page.limit)

    compiled = _Compiler(query, None, parameters).compile()
    previous = _CURRENT.scope
    _CURRENT.scope = scope
    try:
        return _run(compiled, scope, offset, limit)
    finally:
        _CURRENT.scope = previous


def _run(compiled: _Compiled, scope: Scope, offset: int, limit: int | None) -> Result:
    rows = _filtered_rows(compiled, scope)

    if compiled.aggregate:
        output = _output_rows(compiled, scope)
    else:
        output = [
            ([f(row) for f in compiled.select], [f(row) for f, _ in compiled.order_by])
            for row in rows
        ]

    if compiled.query.distinct:
        unique: dict[Any, tuple[list, list]] = {}
        for values, keys in output:
            unique.setdefault(tuple(_hashable(v) for v in values), (values, keys))
        output = list(unique.values())

    if compiled.order_by:
        output.sort(key=_sort_key(compiled.order_by))

    if offset:
        output = output[offset:]
    if limit is not None and limit >= 0:
        output = output[:limit]

    result_rows = [values for values, _ in output]
    loaded = {id(value) for row in result_rows for value in row if isinstance(value, omero.model.IObject)}
    collections: dict[tuple[int, str], list] = {}
    if not compiled.aggregate:
        _register_fetches(compiled, rows, loaded, collections)

    log.debug("HQL %r returned %d rows", compiled.query.text, len(result_rows))
    return Result(compiled.columns, result_rows, scope, loaded, collections)
