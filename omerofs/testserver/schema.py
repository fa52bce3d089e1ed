"""The OMERO object model as the test server sees it: classes, fields and their types.

omero-py's model classes list their fields (`_field_info`) but not the types of
associations and collections. Those types live only in the Ice type definitions
that slice2py generated (`omero_model_<Class>_ice.py`). This module reads them from
those files once, so that the HQL evaluator can resolve `i.fileset.templatePrefix`
before any row exists and the manifest loader can turn `lensNA: 1.4` into an
`RDouble`.

Field kinds:
- `scalar`: an rtype (`RString`, `RLong`, `RTime`, ...), or a plain Ice value such as
  `Mask.bytes`.
- `entity`: a many-to-one association to another `IObject` (`Image.fileset`).
- `collection`: a one-to-many collection of `IObject`s, stored as `_<name>Seq` with
  a `_<name>Loaded` flag (`Fileset.usedFiles`).
- `unit`: a unit value such as `Length` (`Pixels.physicalSizeX`).
- `values`: a list of plain values (`MapAnnotation.mapValue`, `ExperimenterGroup.config`).
- `component`: the embedded `Details` (owner, group, events, permissions).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import re

import omero
import omero.model  # noqa: F401  (registers every model class under omero.model)

log = logging.getLogger(__name__)

SCALAR = "scalar"
ENTITY = "entity"
COLLECTION = "collection"
UNIT = "unit"
VALUES = "values"
COMPONENT = "component"

# Unit types of the OMERO model (omero-py 5.x), each with the unit the manifest
# assumes when a bare number is given.
UNIT_DEFAULTS = {
    "Length": "MICROMETER",
    "Time": "SECOND",
    "ElectricPotential": "VOLT",
    "Frequency": "HERTZ",
    "Power": "MILLIWATT",
    "Pressure": "MILLIBAR",
    "Temperature": "CELSIUS",
}

_CLASS_RE = re.compile(
    r"_t_(\w+) = IcePy\.defineClass\('::omero::model::(\w+)', \w+, -?\d+, \(\), "
    r"(?:True|False), (?:True|False), ([\w.]+|None), \(\), \((.*?)\)\)\n",
    re.S,
)
_MEMBER_RE = re.compile(r"\('_(\w+)', \(\), ([\w.]+), (?:True|False), \d+\)")
_SEQUENCE_RE = re.compile(
    r"_M_omero\.model\._t_(\w+) = IcePy\.defineSequence\('::omero::model::\w+', \(\), "
    r"_M_omero\.model\._t_(\w+)\)"
)


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a model class."""

    name: str
    kind: str
    # The rtype name (`RString`) for scalars, the target model class name
    # (`Fileset`) for entities and collections, the unit class name (`Length`).
    type_name: str


@dataclasses.dataclass(frozen=True)
class ModelClass:
    """One class of the OMERO model, such as `Image` or `TagAnnotation`."""

    name: str
    base: str | None
    java_name: str
    fields: dict[str, Field]

    @property
    def implementation(self) -> type:
        """The omero-py class that instances use (`omero.model.ImageI`)."""
        return getattr(omero.model, self.name + "I")

    @property
    def interface(self) -> type:
        """The Ice class that all subclasses share (`omero.model.Image`)."""
        return getattr(omero.model, self.name)

    def field(self, name: str) -> Field | None:
        """Return the named field, looking through the base classes."""
        found = self.fields.get(name)
        if found is not None or self.base is None:
            return found
        return model_class(self.base).field(name)

    def polymorphic_field(self, name: str) -> Field | None:
        """Return the named field of this class or, as Hibernate allows, of one of its subclasses.

        OMERO maps class hierarchies such as Annotation to one table, so HQL may
        use `a.file` on an `Annotation` alias; objects without the field read NULL.
        """
        found = self.field(name)
        if found is not None:
            return found
        for subclass in subclasses(self.name):
            found = model_class(subclass).fields.get(name)
            if found is not None:
                return found
        return None

    def all_fields(self) -> dict[str, Field]:
        """Return every field of the class, base class fields first."""
        merged: dict[str, Field] = {}
        if self.base is not None:
            merged.update(model_class(self.base).all_fields())
        merged.update(self.fields)
        return merged

    def is_a(self, other: str) -> bool:
        """Return whether this class is `other` or inherits from it."""
        return issubclass(self.interface, getattr(omero.model, other))


class UnknownClass(LookupError):
    """Raised when a name is not a class of the OMERO model."""


def _ice_source(class_name: str) -> str:
    spec = importlib.util.find_spec(f"omero_model_{class_name}_ice")
    if spec is None or spec.origin is None:
        raise UnknownClass(class_name)
    with open(spec.origin, encoding="utf-8") as source:
        return source.read()


def _field_kind(type_token: str, sequences: dict[str, str]) -> tuple[str, str] | None:
    """Map an Ice type token of a member to (kind, type name), or None to skip it."""
    if type_token.startswith("_M_omero._t_R"):
        return SCALAR, type_token.rsplit("_t_", 1)[1]
    if type_token == "_M_Ice._t_ByteSeq":
        return SCALAR, "bytes"
    if type_token in ("_M_omero.api._t_NamedValueList",):
        return VALUES, "NamedValue"
    if type_token.startswith("_M_omero.model._t_"):
        name = type_token.rsplit("_t_", 1)[1]
        if name in sequences:
            return COLLECTION, sequences[name]
        if name in UNIT_DEFAULTS:
            return UNIT, name
        if name == "Permissions":
            return None
        return ENTITY, name
    return None


@functools.cache
def model_class(name: str) -> ModelClass:
    """Return the model class called `name` (`Image`), read from its Ice definition.

    Raises UnknownClass for names that are not model classes.
    """
    if not re.fullmatch(r"[A-Z]\w*", name) or not isinstance(getattr(omero.model, name, None), type):
        raise UnknownClass(name)
    if not issubclass(getattr(omero.model, name), omero.model.IObject) or name == "IObject":
        raise UnknownClass(name)
    source = _ice_source(name)
    sequences = dict(_SEQUENCE_RE.findall(source))

    for _type_id, class_name, base_token, members in _CLASS_RE.findall(source):
        if class_name != name:
            continue
        base = base_token.rsplit("_t_", 1)[1] if base_token.startswith("_M_omero.model._t_") else None
        if base == "IObject":
            base = None
        fields = {}
        for member, type_token in _MEMBER_RE.findall(members):
            if member.endswith("Loaded") or member.endswith("CountPerOwner") or member == "version":
                continue
            field_name = member[:-3] if member.endswith("Seq") else member
            kind = _field_kind(type_token, sequences)
            if kind is not None:
                fields[field_name] = Field(field_name, kind[0], kind[1])
        return ModelClass(name, base, _java_name(name), fields)
    raise UnknownClass(name)


@functools.cache
def subclasses(name: str) -> tuple[str, ...]:
    """Return the names of the model classes that inherit from `name`, in name order."""
    interface = getattr(omero.model, name)
    found = []
    for attribute in dir(omero.model):
        candidate = getattr(omero.model, attribute)
        if (
            isinstance(candidate, type) and not attribute.endswith("I") and attribute != name
            and issubclass(candidate, interface)
        ):
            found.append(attribute)
    return tuple(sorted(found))


def _java_name(name: str) -> str:
    """Return the server-side class name (`ome.model.core.Image`) from omero-py's field constants.

    Abstract classes (`Shape`, `Annotation`) have no omero-py implementation, so
    their package comes from a concrete subclass.
    """
    implementation = getattr(omero.model, name + "I", None)
    constant = getattr(implementation, "DETAILS", None)
    if isinstance(constant, str) and constant.endswith("_details"):
        return constant[: -len("_details")]

    interface = getattr(omero.model, name)
    for attribute in dir(omero.model):
        candidate = getattr(omero.model, attribute)
        if attribute.endswith("I") and isinstance(candidate, type) and issubclass(candidate, interface):
            constant = getattr(candidate, "DETAILS", "")
            if constant.endswith("_details"):
                return constant.rsplit(".", 1)[0] + "." + name
    return "ome.model." + name


@functools.cache
def _java_names() -> dict[str, str]:
    names = {}
    for attribute in dir(omero.model):
        candidate = getattr(omero.model, attribute)
        if isinstance(candidate, type) and issubclass(candidate, omero.model.IObject):
            if not attribute.endswith("I") and attribute != "IObject":
                names[_java_name(attribute)] = attribute
    return names


def resolve_entity_name(hql_name: str) -> ModelClass:
    """Return the model class for an entity name as HQL takes it.

    HQL accepts the short name (`Image`) and the server-side name
    (`ome.model.core.Image`); omero-py's names (`omero.model.Image`, `ImageI`) are
    not entity names.
    """
    if "." in hql_name:
        short = _java_names().get(hql_name)
        if short is None:
            raise UnknownClass(hql_name)
        return model_class(short)
    return model_class(hql_name)


def class_of(obj: object) -> ModelClass:
    """Return the model class of an omero-py object (`ImageI` -> `Image`)."""
    return model_class(type(obj).__name__.removesuffix("I"))


DETAILS_FIELDS = {
    "owner": Field("owner", ENTITY, "Experimenter"),
    "group": Field("group", ENTITY, "ExperimenterGroup"),
    "creationEvent": Field("creationEvent", ENTITY, "Event"),
    "updateEvent": Field("updateEvent", ENTITY, "Event"),
    "externalInfo": Field("externalInfo", ENTITY, "ExternalInfo"),
    "permissions": Field("permissions", SCALAR, "Permissions"),
}
