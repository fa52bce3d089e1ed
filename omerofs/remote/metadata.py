"""Server queries that build the metadata records of ``omerofs.metarecords``.

Every function takes a ``Connection`` and many object IDs and costs a
fixed number of queries per batch of ``ID_BATCH`` IDs, never one query per
object: related rows (pixels, channels, enumerations, annotation children)
come from ``join fetch`` or from one query over all the batch's parents.

Rows come back as OMERO model objects trimmed to what the query fetched.
An association that was not fetched is an unloaded object that still
carries its ID, so the records get foreign keys (``owner_id``,
``detector_id``) without fetching the other side.
"""

import logging
from collections.abc import Iterable, Sequence

import omero
import omero.sys
from omero.rtypes import unwrap

from .. import metarecords as mr
from .connection import ID_BATCH, Connection, _batches, _ids_param, original_file_record

log = logging.getLogger(__name__)

# Planes read by one query at most, as far as the sizes of the Pixels tell.
# A PlaneInfo takes a few hundred bytes in a reply (an estimate), so this
# keeps a reply well below Ice's 64 MiB message size limit.
PLANES_PER_QUERY = 50_000

# Top-level kinds that can be listed, with their HQL class names.
LISTABLE_KINDS = ("Project", "Dataset", "Screen", "Plate")


# Reading model objects


def _get(obj, field: str):
    """Return a field's plain value, None when unset or when ``obj`` is None or unloaded."""
    if obj is None:
        return None
    try:
        return unwrap(getattr(obj, "_" + field))
    except (omero.UnloadedEntityException, AttributeError):
        return None


def _text(obj, field: str) -> str | None:
    value = _get(obj, field)
    return None if value is None else str(value)


def _float(obj, field: str) -> float | None:
    value = _get(obj, field)
    return None if value is None else float(value)


def _int(obj, field: str) -> int | None:
    value = _get(obj, field)
    return None if value is None else int(value)


def _seconds(obj, field: str) -> float | None:
    """Return an RTime field (milliseconds) in seconds."""
    value = _get(obj, field)
    return None if value is None else value / 1000.0


def _child(obj, field: str):
    """Return an association's object (loaded or not), None when unset."""
    if obj is None:
        return None
    return getattr(obj, "_" + field, None)


def _id(obj) -> int | None:
    """Return the ID of a model object, loaded or not."""
    if obj is None or obj._id is None:
        return None
    return int(obj._id.val)


def _ref(obj, field: str) -> int | None:
    """Return the ID of the object an association points to."""
    return _id(_child(obj, field))


def _enum(obj, field: str) -> str | None:
    """Return an enumeration's value; None when unset or not fetched."""
    value = _child(obj, field)
    if value is None:
        return None
    if not value.isLoaded():
        log.debug("enumeration %s of %s:%s was not fetched", field, type(obj).__name__, _id(obj))
        return None
    return _get(value, "value")


def _quantity(obj, field: str) -> mr.Quantity | None:
    """Return a unit field (LengthI, TimeI, ...) as a Quantity with OME-XML's unit symbol."""
    value = _child(obj, field)
    if value is None:
        return None
    return mr.Quantity(float(value.getValue()), value.getSymbol())


def _details_id(obj, field: str) -> int | None:
    details = getattr(obj, "_details", None)
    if details is None:
        return None
    return _id(getattr(details, "_" + field, None))


def _kind(obj) -> str:
    """Return the OMERO class name of a model object: ``TagAnnotation`` for ``TagAnnotationI``."""
    return obj.ice_staticId().rsplit("::", 1)[-1]


def _pairs(obj, field: str) -> tuple[tuple[str, str], ...]:
    values = getattr(obj, "_" + field, None) or []
    return tuple((v.name or "", v.value or "") for v in values)


def _rgba(obj) -> int | None:
    """Return red/green/blue/alpha fields as OME-XML's signed RGBA integer."""
    parts = [_int(obj, name) for name in ("red", "green", "blue", "alpha")]
    if all(p is None for p in parts):
        return None
    red, green, blue, alpha = ((p if p is not None else 255) & 0xFF for p in parts)
    value = (red << 24) | (green << 16) | (blue << 8) | alpha
    return value - (1 << 32) if value >= 1 << 31 else value


def _spec(obj) -> mr.ManufacturerSpec:
    return mr.ManufacturerSpec(_text(obj, "manufacturer"), _text(obj, "model"), _text(obj, "serialNumber"),
                               _text(obj, "lotNumber"))


def _unique(rows: Iterable) -> list:
    """Drop repeated root objects: a ``join fetch`` of a collection returns the root once per element."""
    seen: dict[int, object] = {}
    for row in rows:
        seen.setdefault(_id(row), row)
    return list(seen.values())


def _query(connection: Connection, what: str, hql: str, ids: Sequence[int]) -> list:
    """Run a query with ``:ids`` once per batch of IDs and return all rows."""
    rows = []
    for batch in _batches(sorted(set(ids))):
        rows.extend(connection._query(what, hql, _ids_param("ids", batch)))
    return rows


def _projection(connection: Connection, what: str, hql: str, ids: Sequence[int]) -> list[list]:
    rows = []
    for batch in _batches(sorted(set(ids))):
        rows.extend(connection._projection(what, hql, _ids_param("ids", batch)))
    return rows


def _pairs_by_first(rows: Iterable[Sequence]) -> dict[int, tuple[int, ...]]:
    """Group (parent, child) rows into parent -> children, in row order without repeats."""
    grouped: dict[int, list[int]] = {}
    for parent, child in rows:
        children = grouped.setdefault(parent, [])
        if child not in children:
            children.append(child)
    return {parent: tuple(children) for parent, children in grouped.items()}


# Listings


def object_ids(connection: Connection, kind: str, offset: int, limit: int) -> list[int]:
    """Return one page of the IDs of readable objects of ``kind`` (one of ``LISTABLE_KINDS``)."""
    if kind not in LISTABLE_KINDS:
        raise ValueError(f"cannot list {kind!r}")
    params = omero.sys.ParametersI()
    params.page(offset, limit)
    rows = connection._projection(f"Listing {kind} objects", f"select x.id from {kind} x order by x.id", params)
    return [row[0] for row in rows]


# Annotations


def _annotation_record(obj, annotation_ids: tuple[int, ...]) -> mr.Annotation | None:
    kind = _kind(obj)
    if kind not in mr.ANNOTATION_KINDS:
        log.debug("skipping annotation %s of unsupported kind %s", _id(obj), kind)
        return None
    value = None
    if kind in ("TagAnnotation", "CommentAnnotation", "XmlAnnotation"):
        value = _text(obj, "textValue")
    elif kind == "TermAnnotation":
        value = _text(obj, "termValue")
    elif kind == "LongAnnotation":
        value = _int(obj, "longValue")
    elif kind == "DoubleAnnotation":
        value = _float(obj, "doubleValue")
    elif kind == "BooleanAnnotation":
        value = _get(obj, "boolValue")
    elif kind == "TimestampAnnotation":
        value = _seconds(obj, "timeValue")

    file = None
    if kind == "FileAnnotation":
        original = _child(obj, "file")
        if original is not None and original.isLoaded():
            file = original_file_record(original)
    return mr.Annotation(
        id=_id(obj), kind=kind, namespace=_text(obj, "ns"), description=_text(obj, "description"),
        name=_text(obj, "name"), value=value,
        map_value=_pairs(obj, "mapValue") if kind == "MapAnnotation" else (),
        file=file, annotation_ids=annotation_ids, owner_id=_details_id(obj, "owner"))


# Fetches an annotation's links to further annotations along with it, so
# the IDs of those annotations cost no query of their own.
_ANNOTATION_FETCH = ("left outer join fetch a.annotationLinks al left outer join fetch a.details.owner "
                     "left outer join fetch a.file f left outer join fetch f.hasher")


def _annotation_records(objects: Iterable) -> dict[int, mr.Annotation]:
    """Turn annotation objects fetched with ``_ANNOTATION_FETCH`` into records."""
    found = {}
    for obj in objects:
        links = sorted((link for link in obj.copyAnnotationLinks() if link is not None), key=_id) \
            if obj.isAnnotationLinksLoaded() else []
        children = tuple(dict.fromkeys(_ref(link, "child") for link in links))
        record = _annotation_record(obj, children)
        if record is not None:
            found[record.id] = record
    return found


def annotations(connection: Connection, annotation_ids: Sequence[int]) -> dict[int, mr.Annotation]:
    """Return the readable annotations among ``annotation_ids``; one query per batch."""
    rows = _query(connection, f"Reading {len(annotation_ids)} annotations",
                  f"select a from Annotation a {_ANNOTATION_FETCH} where a.id in (:ids)", annotation_ids)
    return _annotation_records(_unique(rows))


# Classes whose annotation links ``linked_annotations`` reads, with their link class.
ANNOTATED_KINDS = {
    "Image": "ImageAnnotationLink",
    "Roi": "RoiAnnotationLink",
    "Shape": "ShapeAnnotationLink",
    "Channel": "ChannelAnnotationLink",
    "Annotation": "AnnotationAnnotationLink",
    "Project": "ProjectAnnotationLink",
    "Dataset": "DatasetAnnotationLink",
    "Screen": "ScreenAnnotationLink",
    "Plate": "PlateAnnotationLink",
    "Well": "WellAnnotationLink",
}


def linked_annotations(connection: Connection, kind: str, parent_ids: Sequence[int]
                       ) -> tuple[dict[int, tuple[int, ...]], dict[int, mr.Annotation], dict[int, mr.Experimenter]]:
    """Return the annotation IDs linked to each parent, the records of those annotations and their owners.

    One query per batch of parents: the links, with their annotations, the
    annotations' owners and the annotations' links to further annotations
    fetched.
    """
    link_class = ANNOTATED_KINDS[kind]
    links = _query(connection, f"Reading the annotations of {len(parent_ids)} {kind} objects",
                   f"select l from {link_class} l join fetch l.child a {_ANNOTATION_FETCH} "
                   f"where l.parent.id in (:ids) order by l.id", parent_ids)
    by_parent = _pairs_by_first((_ref(link, "parent"), _ref(link, "child")) for link in links)
    objects = _unique(link._child for link in links)
    records = _annotation_records(objects)
    by_parent = {parent: tuple(i for i in children if i in records) for parent, children in by_parent.items()}
    owners, _ = _people(objects)
    return by_parent, records, owners


# Images


_IMAGE_QUERY = (
    "select i from Image i "
    "left outer join fetch i.details.owner "
    "left outer join fetch i.details.group "
    "left outer join fetch i.pixels p "
    "left outer join fetch p.pixelsType "
    "left outer join fetch p.dimensionOrder "
    "left outer join fetch p.channels c "
    "left outer join fetch c.logicalChannel lc "
    "left outer join fetch lc.illumination "
    "left outer join fetch lc.contrastMethod "
    "left outer join fetch lc.mode "
    "left outer join fetch lc.lightSourceSettings "
    "left outer join fetch lc.detectorSettings ds "
    "left outer join fetch ds.binning "
    "left outer join fetch lc.lightPath "
    "left outer join fetch i.objectiveSettings os "
    "left outer join fetch os.medium "
    "left outer join fetch i.imagingEnvironment "
    "left outer join fetch i.stageLabel "
    "where i.id in (:ids)"
)


def image_metadata(connection: Connection, image_ids: Sequence[int]
                   ) -> tuple[dict[int, mr.ImageMetadata], dict[int, mr.Experimenter], dict[int, mr.ExperimenterGroup]]:
    """Return the full metadata of the readable images among ``image_ids``, with their owners and groups.

    Costs up to seven queries per batch of images, plus those of
    ``instruments``, and one more per ``PLANES_PER_QUERY`` planes. They
    read the images with pixels, channels, channel settings, owners and
    groups, then planes, light-path filters, channel annotation links, ROI
    IDs, and dataset and plate IDs. The records leave ``annotation_ids``
    empty: the links to image annotations come with the annotations
    (``linked_annotations``).
    """
    images = _unique(_query(connection, f"Reading the metadata of {len(image_ids)} images", _IMAGE_QUERY, image_ids))
    if not images:
        return {}, {}, {}
    found_ids = [_id(i) for i in images]
    pixels_by_image = {_id(i): _first_pixels(i) for i in images}
    planes = _planes(connection, [p for p in pixels_by_image.values() if p is not None])

    channels_by_pixels = {pixels_id: _channels(pixels) for pixels_id, pixels in
                          ((_id(p), p) for p in pixels_by_image.values() if p is not None)}
    light_path_ids = [_id(_child(lc, "lightPath")) for channels in channels_by_pixels.values()
                      for _, lc in channels if _child(lc, "lightPath") is not None]
    excitation, emission = _light_path_filters(connection, light_path_ids)
    channel_ids = [_id(c) for channels in channels_by_pixels.values() for c, _ in channels]
    channel_annotations = _link_ids(connection, "ChannelAnnotationLink", channel_ids)

    rois = _pairs_by_first(_projection(connection, f"Listing the ROIs of {len(found_ids)} images",
                                       "select r.image.id, r.id from Roi r where r.image.id in (:ids) order by r.id",
                                       found_ids))
    datasets, plates = _containers_of_images(connection, found_ids)
    instrument_ids = {_ref(i, "instrument") for i in images} - {None}
    instrument_by_id = instruments(connection, sorted(instrument_ids)) if instrument_ids else {}

    found = {}
    for image in images:
        image_id = _id(image)
        pixels = pixels_by_image[image_id]
        channels = channels_by_pixels.get(_id(pixels), []) if pixels is not None else []
        found[image_id] = mr.ImageMetadata(
            id=image_id, name=_text(image, "name") or "", description=_text(image, "description"),
            acquisition_date=_seconds(image, "acquisitionDate"), owner_id=_details_id(image, "owner"),
            group_id=_details_id(image, "group"),
            pixels=_pixels_record(pixels) if pixels is not None else None,
            channels=tuple(_channel_record(c, lc, index, excitation, emission, channel_annotations)
                           for index, (c, lc) in enumerate(channels)),
            planes=tuple(planes.get(_id(pixels), ())) if pixels is not None else (),
            instrument=instrument_by_id.get(_ref(image, "instrument")),
            objective_settings=_objective_settings_record(_child(image, "objectiveSettings")),
            imaging_environment=_environment_record(_child(image, "imagingEnvironment")),
            stage_label=_stage_label_record(_child(image, "stageLabel")),
            roi_ids=rois.get(image_id, ()), dataset_ids=datasets.get(image_id, ()),
            plate_ids=plates.get(image_id, ()))
    experimenters, groups = _people(images)
    return found, experimenters, groups


def _planes(connection: Connection, pixels: Sequence) -> dict[int, list[mr.Plane]]:
    """Return the planes of each Pixels, with as many Pixels per query as ``PLANES_PER_QUERY`` allows.

    The size of a Pixels (Z times C times T) is the usual number of its
    planes, so it bounds the reply of each query.
    """
    planes: dict[int, list[mr.Plane]] = {}
    batch: list[int] = []
    expected = 0
    for index, item in enumerate(pixels):
        batch.append(_id(item))
        expected += (_int(item, "sizeZ") or 1) * (_int(item, "sizeC") or 1) * (_int(item, "sizeT") or 1)
        last = index == len(pixels) - 1
        if not (last or expected >= PLANES_PER_QUERY or len(batch) >= ID_BATCH):
            continue
        for plane in connection._query(f"Reading the planes of {len(batch)} images",
                                       "select pi from PlaneInfo pi where pi.pixels.id in (:ids) order by pi.id",
                                       _ids_param("ids", batch)):
            planes.setdefault(_ref(plane, "pixels"), []).append(_plane_record(plane))
        batch, expected = [], 0
    return planes


def _containers_of_images(connection: Connection, image_ids: Sequence[int]
                          ) -> tuple[dict[int, tuple[int, ...]], dict[int, tuple[int, ...]]]:
    """Return the IDs of the datasets and of the plates that hold each image, in one query per batch."""
    rows = _projection(connection, f"Listing the datasets and plates of {len(image_ids)} images",
                       "select i.id, dl.parent.id, w.plate.id from Image i left outer join i.datasetLinks dl "
                       "left outer join i.wellSamples ws left outer join ws.well w where i.id in (:ids) "
                       "order by dl.parent.id, w.plate.id", image_ids)
    datasets = _pairs_by_first((image_id, dataset_id) for image_id, dataset_id, _ in rows if dataset_id is not None)
    plates = _pairs_by_first((image_id, plate_id) for image_id, _, plate_id in rows if plate_id is not None)
    return datasets, plates


def _people(objects: Iterable) -> tuple[dict[int, mr.Experimenter], dict[int, mr.ExperimenterGroup]]:
    """Return the owners and groups that a query fetched with ``objects`` (those left unloaded are skipped)."""
    experimenters: dict[int, mr.Experimenter] = {}
    groups: dict[int, mr.ExperimenterGroup] = {}
    for obj in objects:
        details = getattr(obj, "_details", None)
        owner = getattr(details, "_owner", None)
        group = getattr(details, "_group", None)
        if owner is not None and owner.isLoaded():
            experimenters[_id(owner)] = _experimenter_record(owner)
        if group is not None and group.isLoaded():
            groups[_id(group)] = _group_record(group)
    return experimenters, groups


def _link_ids(connection: Connection, link_class: str, parent_ids: Sequence[int]) -> dict[int, tuple[int, ...]]:
    if not parent_ids:
        return {}
    return _pairs_by_first(_projection(
        connection, f"Reading {link_class} rows of {len(parent_ids)} objects",
        f"select l.parent.id, l.child.id from {link_class} l where l.parent.id in (:ids) order by l.id",
        parent_ids))


def _first_pixels(image):
    """Return an image's Pixels; OMERO images have exactly one."""
    if not image.isPixelsLoaded():
        return None
    pixels = [p for p in image.copyPixels() if p is not None]
    return pixels[0] if pixels else None


def _channels(pixels) -> list[tuple]:
    """Return (Channel, LogicalChannel) pairs in channel order."""
    if not pixels.isChannelsLoaded():
        return []
    return [(c, _child(c, "logicalChannel")) for c in pixels.copyChannels() if c is not None]


def _pixels_record(pixels) -> mr.Pixels:
    return mr.Pixels(
        id=_id(pixels), dimension_order=_enum(pixels, "dimensionOrder") or "XYZCT",
        type=_enum(pixels, "pixelsType") or "uint8",
        size_x=_int(pixels, "sizeX") or 1, size_y=_int(pixels, "sizeY") or 1, size_z=_int(pixels, "sizeZ") or 1,
        size_c=_int(pixels, "sizeC") or 1, size_t=_int(pixels, "sizeT") or 1,
        significant_bits=_int(pixels, "significantBits"),
        physical_size_x=_quantity(pixels, "physicalSizeX"), physical_size_y=_quantity(pixels, "physicalSizeY"),
        physical_size_z=_quantity(pixels, "physicalSizeZ"), time_increment=_quantity(pixels, "timeIncrement"))


def _plane_record(plane) -> mr.Plane:
    return mr.Plane(
        the_z=_int(plane, "theZ") or 0, the_c=_int(plane, "theC") or 0, the_t=_int(plane, "theT") or 0,
        delta_t=_quantity(plane, "deltaT"), exposure_time=_quantity(plane, "exposureTime"),
        position_x=_quantity(plane, "positionX"), position_y=_quantity(plane, "positionY"),
        position_z=_quantity(plane, "positionZ"))


def _channel_record(channel, logical, index: int, excitation: dict, emission: dict,
                    channel_annotations: dict[int, tuple[int, ...]]) -> mr.Channel:
    loaded = logical is not None and logical.isLoaded()
    logical = logical if loaded else None

    light_settings = _child(logical, "lightSourceSettings")
    light_source_settings = None
    if light_settings is not None and light_settings.isLoaded() and _ref(light_settings, "lightSource"):
        light_source_settings = mr.LightSourceSettings(
            _ref(light_settings, "lightSource"), _float(light_settings, "attenuation"),
            _quantity(light_settings, "wavelength"))

    detector = _child(logical, "detectorSettings")
    detector_settings = None
    if detector is not None and detector.isLoaded() and _ref(detector, "detector"):
        detector_settings = mr.DetectorSettings(
            _ref(detector, "detector"), _float(detector, "offsetValue"), _float(detector, "gain"),
            _quantity(detector, "voltage"), _float(detector, "zoom"), _quantity(detector, "readOutRate"),
            _enum(detector, "binning"), _int(detector, "integration"))

    path = _child(logical, "lightPath")
    light_path = None
    if path is not None:
        path_id = _id(path)
        light_path = mr.LightPath(excitation.get(path_id, ()),
                                  _ref(path, "dichroic") if path.isLoaded() else None, emission.get(path_id, ()))

    return mr.Channel(
        id=_id(channel), index=index, name=_text(logical, "name"), color=_rgba(channel),
        samples_per_pixel=_int(logical, "samplesPerPixel"), illumination=_enum(logical, "illumination"),
        contrast_method=_enum(logical, "contrastMethod"), acquisition_mode=_enum(logical, "mode"),
        pinhole_size=_quantity(logical, "pinHoleSize"), excitation_wavelength=_quantity(logical, "excitationWave"),
        emission_wavelength=_quantity(logical, "emissionWave"), fluor=_text(logical, "fluor"),
        nd_filter=_float(logical, "ndFilter"), pockel_cell_setting=_int(logical, "pockelCellSetting"),
        light_source_settings=light_source_settings, detector_settings=detector_settings,
        filter_set_id=_ref(logical, "filterSet"), light_path=light_path,
        annotation_ids=channel_annotations.get(_id(channel), ()))


def _light_path_filters(connection: Connection, light_path_ids: Sequence[int]) -> tuple[dict, dict]:
    if not light_path_ids:
        return {}, {}
    return (_link_ids(connection, "LightPathExcitationFilterLink", light_path_ids),
            _link_ids(connection, "LightPathEmissionFilterLink", light_path_ids))


def _objective_settings_record(settings) -> mr.ObjectiveSettings | None:
    if settings is None or not settings.isLoaded() or _ref(settings, "objective") is None:
        return None
    return mr.ObjectiveSettings(_ref(settings, "objective"), _float(settings, "correctionCollar"),
                                _enum(settings, "medium"), _float(settings, "refractiveIndex"))


def _environment_record(environment) -> mr.ImagingEnvironment | None:
    if environment is None or not environment.isLoaded():
        return None
    return mr.ImagingEnvironment(_quantity(environment, "temperature"), _quantity(environment, "airPressure"),
                                 _float(environment, "humidity"), _float(environment, "co2percent"),
                                 _pairs(environment, "map"))


def _stage_label_record(label) -> mr.StageLabel | None:
    if label is None or not label.isLoaded():
        return None
    return mr.StageLabel(_text(label, "name") or "", _quantity(label, "positionX"), _quantity(label, "positionY"),
                         _quantity(label, "positionZ"))


# Instruments


def instruments(connection: Connection, instrument_ids: Sequence[int]) -> dict[int, mr.Instrument]:
    """Return instruments with all their parts; thirteen queries per batch, about one per kind of part."""
    rows = _query(connection, f"Reading {len(instrument_ids)} instruments",
                  "select inst from Instrument inst left outer join fetch inst.microscope m "
                  "left outer join fetch m.type where inst.id in (:ids)", instrument_ids)
    if not rows:
        return {}

    def parts(what: str, hql: str) -> dict[int, list]:
        by_instrument: dict[int, list] = {}
        for obj in _unique(_query(connection, f"Reading the {what} of {len(rows)} instruments", hql, instrument_ids)):
            by_instrument.setdefault(_ref(obj, "instrument"), []).append(obj)
        for objects in by_instrument.values():
            objects.sort(key=_id)
        return by_instrument

    objectives = parts("objectives", "select o from Objective o left outer join fetch o.immersion "
                                     "left outer join fetch o.correction where o.instrument.id in (:ids)")
    detectors = parts("detectors", "select d from Detector d left outer join fetch d.type "
                                   "where d.instrument.id in (:ids)")
    sources = {
        "Laser": parts("lasers", "select l from Laser l left outer join fetch l.type "
                                 "left outer join fetch l.laserMedium left outer join fetch l.pulse "
                                 "where l.instrument.id in (:ids)"),
        "Arc": parts("arcs", "select l from Arc l left outer join fetch l.type where l.instrument.id in (:ids)"),
        "Filament": parts("filaments", "select l from Filament l left outer join fetch l.type "
                                       "where l.instrument.id in (:ids)"),
        "LightEmittingDiode": parts("LEDs", "select l from LightEmittingDiode l where l.instrument.id in (:ids)"),
        "GenericExcitationSource": parts("generic light sources", "select l from GenericExcitationSource l "
                                                                  "where l.instrument.id in (:ids)"),
    }
    filters = parts("filters", "select f from Filter f left outer join fetch f.type "
                               "left outer join fetch f.transmittanceRange where f.instrument.id in (:ids)")
    dichroics = parts("dichroics", "select d from Dichroic d where d.instrument.id in (:ids)")
    filter_sets = parts("filter sets", "select s from FilterSet s where s.instrument.id in (:ids)")
    filter_set_ids = [_id(s) for objects in filter_sets.values() for s in objects]
    set_excitation = _link_ids(connection, "FilterSetExcitationFilterLink", filter_set_ids)
    set_emission = _link_ids(connection, "FilterSetEmissionFilterLink", filter_set_ids)

    found = {}
    for inst in _unique(rows):
        instrument_id = _id(inst)
        microscope = _child(inst, "microscope")
        light_sources = tuple(sorted(
            (_light_source_record(kind, obj) for kind, by_instrument in sources.items()
             for obj in by_instrument.get(instrument_id, [])), key=lambda s: s.id))
        found[instrument_id] = mr.Instrument(
            id=instrument_id,
            microscope=(mr.Microscope(_spec(microscope), _enum(microscope, "type"))
                        if microscope is not None and microscope.isLoaded() else None),
            objectives=tuple(_objective_record(o) for o in objectives.get(instrument_id, [])),
            detectors=tuple(_detector_record(d) for d in detectors.get(instrument_id, [])),
            light_sources=light_sources,
            filters=tuple(_filter_record(f) for f in filters.get(instrument_id, [])),
            dichroics=tuple(mr.Dichroic(_id(d), _spec(d)) for d in dichroics.get(instrument_id, [])),
            filter_sets=tuple(mr.FilterSet(_id(s), _spec(s), set_excitation.get(_id(s), ()), _ref(s, "dichroic"),
                                           set_emission.get(_id(s), ()))
                              for s in filter_sets.get(instrument_id, [])))
    return found


def _objective_record(obj) -> mr.Objective:
    return mr.Objective(
        _id(obj), _spec(obj), _enum(obj, "correction"), _enum(obj, "immersion"), _float(obj, "lensNA"),
        _float(obj, "nominalMagnification"), _float(obj, "calibratedMagnification"),
        _quantity(obj, "workingDistance"), _get(obj, "iris"))


def _detector_record(obj) -> mr.Detector:
    return mr.Detector(_id(obj), _spec(obj), _enum(obj, "type"), _float(obj, "gain"), _quantity(obj, "voltage"),
                       _float(obj, "offsetValue"), _float(obj, "zoom"), _float(obj, "amplificationGain"))


def _light_source_record(kind: str, obj) -> mr.LightSource:
    fields = {"id": _id(obj), "kind": kind, "spec": _spec(obj), "power": _quantity(obj, "power")}
    if kind in ("Laser", "Arc", "Filament"):
        fields["type"] = _enum(obj, "type")
    if kind == "Laser":
        fields.update(
            laser_medium=_enum(obj, "laserMedium"), wavelength=_quantity(obj, "wavelength"),
            frequency_multiplication=_int(obj, "frequencyMultiplication"), tuneable=_get(obj, "tuneable"),
            pulse=_enum(obj, "pulse"), pockel_cell=_get(obj, "pockelCell"),
            repetition_rate=_quantity(obj, "repetitionRate"), pump_id=_ref(obj, "pump"))
    if kind == "GenericExcitationSource":
        fields["map"] = _pairs(obj, "map")
    return mr.LightSource(**fields)


def _filter_record(obj) -> mr.Filter:
    transmittance = _child(obj, "transmittanceRange")
    transmittance_range = None
    if transmittance is not None and transmittance.isLoaded():
        transmittance_range = mr.TransmittanceRange(
            _quantity(transmittance, "cutIn"), _quantity(transmittance, "cutOut"),
            _quantity(transmittance, "cutInTolerance"), _quantity(transmittance, "cutOutTolerance"),
            _float(transmittance, "transmittance"))
    return mr.Filter(_id(obj), _spec(obj), _enum(obj, "type"), _text(obj, "filterWheel"), transmittance_range)


# ROIs


def image_rois(connection: Connection, image_ids: Sequence[int]) -> dict[int, mr.Roi]:
    """Return the ROIs of the given images, keyed by ROI ID; three queries per batch."""
    return _rois(connection, "r.image.id", image_ids)


def rois(connection: Connection, roi_ids: Sequence[int]) -> dict[int, mr.Roi]:
    """Return the readable ROIs among ``roi_ids``; three queries per batch."""
    return _rois(connection, "r.id", roi_ids)


def _rois(connection: Connection, key: str, ids: Sequence[int]) -> dict[int, mr.Roi]:
    rows = _unique(_query(connection, f"Reading the ROIs of {len(ids)} objects",
                          "select r from Roi r left outer join fetch r.shapes s left outer join fetch s.transform "
                          f"where {key} in (:ids)", ids))
    if not rows:
        return {}
    roi_annotations = _link_ids(connection, "RoiAnnotationLink", [_id(r) for r in rows])
    shapes = [s for r in rows if r.isShapesLoaded() for s in r.copyShapes() if s is not None]
    shape_annotations = _link_ids(connection, "ShapeAnnotationLink", [_id(s) for s in shapes])

    found = {}
    for roi in rows:
        roi_shapes = sorted((s for s in roi.copyShapes() if s is not None), key=_id) if roi.isShapesLoaded() else []
        records = tuple(r for r in (_shape_record(s, shape_annotations) for s in roi_shapes) if r is not None)
        found[_id(roi)] = mr.Roi(_id(roi), _text(roi, "name"), _text(roi, "description"), _ref(roi, "image"),
                                 records, roi_annotations.get(_id(roi), ()), _details_id(roi, "owner"))
    return found


def _shape_record(obj, shape_annotations: dict[int, tuple[int, ...]]) -> mr.Shape | None:
    kind = _kind(obj)
    if kind not in mr.SHAPE_KINDS:
        log.debug("skipping shape %s of unsupported kind %s", _id(obj), kind)
        return None
    transform = _child(obj, "transform")
    transform_record = None
    if transform is not None and transform.isLoaded():
        transform_record = mr.AffineTransform(*(_float(transform, name) or 0.0
                                                for name in ("a00", "a10", "a01", "a11", "a02", "a12")))
    mask = getattr(obj, "_bytes", None) if kind == "Mask" else None
    return mr.Shape(
        id=_id(obj), kind=kind, the_z=_int(obj, "theZ"), the_c=_int(obj, "theC"), the_t=_int(obj, "theT"),
        text=_text(obj, "textValue"), transform=transform_record, fill_color=_int(obj, "fillColor"),
        fill_rule=_text(obj, "fillRule"), stroke_color=_int(obj, "strokeColor"),
        stroke_width=_quantity(obj, "strokeWidth"), stroke_dash_array=_text(obj, "strokeDashArray"),
        font_family=_text(obj, "fontFamily"), font_size=_quantity(obj, "fontSize"),
        font_style=_text(obj, "fontStyle"), locked=_get(obj, "locked"),
        x=_float(obj, "x"), y=_float(obj, "y"), width=_float(obj, "width"), height=_float(obj, "height"),
        radius_x=_float(obj, "radiusX"), radius_y=_float(obj, "radiusY"),
        x1=_float(obj, "x1"), y1=_float(obj, "y1"), x2=_float(obj, "x2"), y2=_float(obj, "y2"),
        points=_text(obj, "points"), marker_start=_text(obj, "markerStart"), marker_end=_text(obj, "markerEnd"),
        mask=bytes(mask) if mask else None, annotation_ids=shape_annotations.get(_id(obj), ()))


# People


def experimenters(connection: Connection, experimenter_ids: Sequence[int]) -> dict[int, mr.Experimenter]:
    rows = _query(connection, f"Reading {len(experimenter_ids)} experimenters",
                  "select e from Experimenter e where e.id in (:ids)", experimenter_ids)
    return {_id(e): _experimenter_record(e) for e in rows}


def groups(connection: Connection, group_ids: Sequence[int]) -> dict[int, mr.ExperimenterGroup]:
    rows = _query(connection, f"Reading {len(group_ids)} groups",
                  "select g from ExperimenterGroup g where g.id in (:ids)", group_ids)
    return {_id(g): _group_record(g) for g in rows}


def _experimenter_record(obj) -> mr.Experimenter:
    return mr.Experimenter(_id(obj), _text(obj, "omeName") or "", _text(obj, "firstName"), _text(obj, "middleName"),
                           _text(obj, "lastName"), _text(obj, "email"), _text(obj, "institution"))


def _group_record(obj) -> mr.ExperimenterGroup:
    return mr.ExperimenterGroup(_id(obj), _text(obj, "name") or "", _text(obj, "description"))


# Containers


def projects(connection: Connection, project_ids: Sequence[int]) -> dict[int, mr.Project]:
    """Return projects with the IDs of their datasets; two queries per batch."""
    rows = _query(connection, f"Reading {len(project_ids)} projects",
                  "select p from Project p where p.id in (:ids)", project_ids)
    children = _link_ids(connection, "ProjectDatasetLink", [_id(p) for p in rows])
    return {_id(p): mr.Project(_id(p), _text(p, "name") or "", _text(p, "description"), children.get(_id(p), ()),
                               _details_id(p, "owner"), _details_id(p, "group")) for p in rows}


def datasets(connection: Connection, dataset_ids: Sequence[int]) -> dict[int, mr.Dataset]:
    """Return datasets with the IDs of their images; two queries per batch."""
    rows = _query(connection, f"Reading {len(dataset_ids)} datasets",
                  "select d from Dataset d where d.id in (:ids)", dataset_ids)
    children = _link_ids(connection, "DatasetImageLink", [_id(d) for d in rows])
    return {_id(d): mr.Dataset(_id(d), _text(d, "name") or "", _text(d, "description"), children.get(_id(d), ()),
                               _details_id(d, "owner"), _details_id(d, "group")) for d in rows}


def screens(connection: Connection, screen_ids: Sequence[int]) -> dict[int, mr.Screen]:
    """Return screens with the IDs of their plates; two queries per batch."""
    rows = _query(connection, f"Reading {len(screen_ids)} screens",
                  "select s from Screen s where s.id in (:ids)", screen_ids)
    children = _link_ids(connection, "ScreenPlateLink", [_id(s) for s in rows])
    return {_id(s): mr.Screen(_id(s), _text(s, "name") or "", _text(s, "description"), _text(s, "type"),
                              _text(s, "protocolIdentifier"), _text(s, "protocolDescription"),
                              _text(s, "reagentSetIdentifier"), _text(s, "reagentSetDescription"),
                              children.get(_id(s), ())) for s in rows}


def plates(connection: Connection, plate_ids: Sequence[int]) -> dict[int, mr.Plate]:
    """Return plates with their wells, well samples and acquisitions; four queries per batch."""
    rows = _query(connection, f"Reading {len(plate_ids)} plates",
                  "select p from Plate p where p.id in (:ids)", plate_ids)
    if not rows:
        return {}
    found_ids = [_id(p) for p in rows]
    wells: dict[int, list] = {}
    for well in _query(connection, f"Reading the wells of {len(found_ids)} plates",
                       "select w from Well w where w.plate.id in (:ids) order by w.id", found_ids):
        wells.setdefault(_ref(well, "plate"), []).append(well)
    samples: dict[int, list] = {}
    for sample in _query(connection, f"Reading the well samples of {len(found_ids)} plates",
                         "select ws from WellSample ws where ws.well.plate.id in (:ids) order by ws.id", found_ids):
        samples.setdefault(_ref(sample, "well"), []).append(sample)
    acquisitions: dict[int, list] = {}
    for acquisition in _query(connection, f"Reading the acquisitions of {len(found_ids)} plates",
                              "select a from PlateAcquisition a where a.plate.id in (:ids) order by a.id", found_ids):
        acquisitions.setdefault(_ref(acquisition, "plate"), []).append(acquisition)

    found = {}
    for plate in rows:
        plate_id = _id(plate)
        found[plate_id] = mr.Plate(
            id=plate_id, name=_text(plate, "name") or "", description=_text(plate, "description"),
            status=_text(plate, "status"), external_identifier=_text(plate, "externalIdentifier"),
            column_naming_convention=_text(plate, "columnNamingConvention"),
            row_naming_convention=_text(plate, "rowNamingConvention"),
            well_origin_x=_quantity(plate, "wellOriginX"), well_origin_y=_quantity(plate, "wellOriginY"),
            rows=_int(plate, "rows"), columns=_int(plate, "columns"), field_index=_int(plate, "defaultSample"),
            wells=tuple(_well_record(w, samples.get(_id(w), [])) for w in wells.get(plate_id, [])),
            acquisitions=tuple(mr.PlateAcquisition(_id(a), _text(a, "name"), _text(a, "description"),
                                                   _seconds(a, "startTime"), _seconds(a, "endTime"),
                                                   _int(a, "maximumFieldCount"))
                               for a in acquisitions.get(plate_id, [])))
    return found


def _well_record(well, samples: list) -> mr.Well:
    return mr.Well(
        id=_id(well), row=_int(well, "row") or 0, column=_int(well, "column") or 0, color=_rgba(well),
        type=_text(well, "type"), external_description=_text(well, "externalDescription"),
        external_identifier=_text(well, "externalIdentifier"),
        samples=tuple(mr.WellSample(_id(s), index, _ref(s, "image"), _quantity(s, "posX"), _quantity(s, "posY"),
                                    _seconds(s, "timepoint"), _ref(s, "plateAcquisition"))
                      for index, s in enumerate(samples)))
