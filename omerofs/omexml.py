"""Metadata records as OME-XML (schema 2016-06), built with ome-types.

Two outputs:

- ``image_element``, ``annotation_element``, ``roi_element``: one object as
  its bare OME element (``<Image>``, ``<TagAnnotation>``, ``<ROI>``) in the
  OME namespace. The whole element is on one line, followed by a newline
  and no XML declaration, so line-based tools see one object per line.
- ``export_document``: one complete OME document for an image, valid
  against the schema: the image with Pixels marked ``MetadataOnly``, its
  instrument, owner and group, annotations, ROIs, datasets and plate.

ID scheme: every element's ID is its OME-XML ID type name and the OMERO ID
of the object it came from (``Image:12``, ``Pixels:12``, ``Channel:40``,
``Annotation:5``, ``ROI:3``, ``Shape:7``, ``LightSource:2``), so an object
has the same ID in every document, and references within a document use
the same IDs.

How text is made safe (``clean_text``), applied to every string from the
server before it enters a model:

- Characters that XML 1.0 does not allow (C0 controls other than tab, line
  feed and carriage return, unpaired surrogates, U+FFFE and U+FFFF) become
  U+FFFD, the Unicode replacement character.
- Line ends become line feeds: CR LF and a lone CR read as LF, as any XML
  parser would read them.
- ``&``, ``<`` and ``>`` are escaped everywhere, ``"`` in attributes, and
  in the one-line elements a line feed in text is written as ``&#10;``.
  Other non-ASCII characters are written as UTF-8.

How the output is made: records become ome-types models, ome-types writes
them, the text is parsed with ElementTree, and ``_Writer`` writes the
element tree again. That last step controls what ome-types does not: one
line per element, character references for line ends, and the contents of
XML annotations, which are inserted into the tree verbatim.
"""

import base64
import datetime
import functools
import logging
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from urllib.parse import quote

import pydantic
from ome_types import model as ome
from xsdata_pydantic_basemodel.bindings import SerializerConfig, XmlContext, XmlSerializer

from . import metarecords as mr

log = logging.getLogger(__name__)

OME_NAMESPACE = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
XML_NAMESPACE = "http://www.w3.org/XML/1998/namespace"
SCHEMA_LOCATION = f"{OME_NAMESPACE} {OME_NAMESPACE}/ome.xsd"

# Written as the Creator of every exported document.
CREATOR = "omerofs"

_O = "{" + OME_NAMESPACE + "}"

# Characters outside XML 1.0's Char production.
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_LINE_END = re.compile("\r\n?")
_SHA1_HEX = re.compile("[0-9a-fA-F]{40}")


def clean_text(text: str | None) -> str | None:
    """Return ``text`` with the characters XML 1.0 cannot carry replaced (see the module notes)."""
    if text is None:
        return None
    return _NOT_XML_CHAR.sub("\ufffd", _LINE_END.sub("\n", text))


def ome_id(kind: str, object_id: int) -> str:
    """Return the OME-XML ID of the object with OMERO ID ``object_id``: ``Image:12``."""
    return f"{kind}:{object_id}"


# Building ome-types models


def _build(model_class, **fields):
    """Make an ome-types model, leaving out any optional field whose value it rejects.

    A value outside what OME-XML allows (a negative size, an attenuation
    above 1, an enumeration value the schema does not list) is dropped, and
    with it the unit of that value, rather than failing the whole document.
    """
    fields = {name: value for name, value in fields.items() if value is not None and value != []}
    while True:
        try:
            return model_class(**fields)
        except pydantic.ValidationError as error:
            rejected = {str(e["loc"][0]) for e in error.errors() if e["loc"]}
            optional = {name for name in rejected
                        if name in fields and not model_class.model_fields[name].is_required()}
            if not optional:
                raise
            for name in sorted(optional):
                log.debug("leaving out %s.%s=%r, which OME-XML does not allow",
                          model_class.__name__, name, fields[name])
                fields.pop(name)
                if name.endswith("_unit"):
                    fields.pop(name[:-len("_unit")], None)
                else:
                    fields.pop(name + "_unit", None)


def _enum_value(enum_class, value: str | None) -> str | None:
    """Return ``value`` if the OME enumeration lists it, else "Other" where the enumeration has it."""
    if value is None:
        return None
    values = {member.value for member in enum_class}
    if value in values:
        return value
    if "Other" in values:
        log.debug("writing %s value %r as Other", enum_class.__name__, value)
        return "Other"
    return None


def _quantity(name: str, quantity: mr.Quantity | None) -> dict:
    """Return ``{name: value, name_unit: unit}`` for a model's keyword arguments."""
    if quantity is None:
        return {}
    return {name: quantity.value, f"{name}_unit": quantity.unit}


def _time(seconds: float | None) -> datetime.datetime | None:
    """Return a UTC time, or None for None and for times outside years 1 to 9999."""
    if seconds is None:
        return None
    try:
        return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        log.debug("leaving out the time %r s, which Python's datetime cannot hold", seconds)
        return None


def _color(value: int | None):
    return ome.Color(value) if value is not None else None


def _annotation_refs(annotation_ids: Iterable[int], known: Callable[[int], bool]) -> list:
    return [ome.AnnotationRef(id=ome_id("Annotation", i)) for i in annotation_ids if known(i)]


def _spec(spec: mr.ManufacturerSpec) -> dict:
    return {
        "manufacturer": clean_text(spec.manufacturer),
        "model": clean_text(spec.model),
        "serial_number": clean_text(spec.serial_number),
        "lot_number": clean_text(spec.lot_number),
    }


def _map(pairs: Sequence[tuple[str, str]]):
    return ome.Map(ms=[ome.Map.M(k=clean_text(key), value=clean_text(value) or "") for key, value in pairs])


# Instrument


def _instrument(instrument: mr.Instrument):
    microscope = None
    if instrument.microscope is not None:
        microscope = _build(ome.Microscope, **_spec(instrument.microscope.spec),
                            type=_enum_value(ome.Microscope_Type, instrument.microscope.type))

    objectives = [
        _build(ome.Objective, id=ome_id("Objective", o.id), **_spec(o.spec),
               correction=_enum_value(ome.Objective_Correction, o.correction),
               immersion=_enum_value(ome.Objective_Immersion, o.immersion),
               lens_na=o.lens_na, nominal_magnification=o.nominal_magnification,
               calibrated_magnification=o.calibrated_magnification,
               **_quantity("working_distance", o.working_distance), iris=o.iris)
        for o in instrument.objectives]
    detectors = [
        _build(ome.Detector, id=ome_id("Detector", d.id), **_spec(d.spec),
               type=_enum_value(ome.Detector_Type, d.type), gain=d.gain, **_quantity("voltage", d.voltage),
               offset=d.offset, zoom=d.zoom, amplification_gain=d.amplification_gain)
        for d in instrument.detectors]
    filters = [_filter(f) for f in instrument.filters]
    dichroics = [_build(ome.Dichroic, id=ome_id("Dichroic", d.id), **_spec(d.spec)) for d in instrument.dichroics]

    filter_ids = {f.id for f in instrument.filters}
    dichroic_ids = {d.id for d in instrument.dichroics}
    filter_sets = [
        _build(ome.FilterSet, id=ome_id("FilterSet", s.id), **_spec(s.spec),
               excitation_filters=[ome.FilterRef(id=ome_id("Filter", i)) for i in s.excitation_filter_ids
                                   if i in filter_ids],
               dichroic_ref=(ome.DichroicRef(id=ome_id("Dichroic", s.dichroic_id))
                             if s.dichroic_id in dichroic_ids else None),
               emission_filters=[ome.FilterRef(id=ome_id("Filter", i)) for i in s.emission_filter_ids
                                 if i in filter_ids])
        for s in instrument.filter_sets]

    sources: dict[str, list] = {kind: [] for kind in mr.LIGHT_SOURCE_KINDS}
    source_ids = {s.id for s in instrument.light_sources}
    for source in instrument.light_sources:
        if source.kind in sources:
            sources[source.kind].append(_light_source(source, source_ids))

    return _build(ome.Instrument, id=ome_id("Instrument", instrument.id), microscope=microscope,
                  objectives=objectives, detectors=detectors, filters=filters, dichroics=dichroics,
                  filter_sets=filter_sets, lasers=sources["Laser"], arcs=sources["Arc"],
                  filaments=sources["Filament"], light_emitting_diodes=sources["LightEmittingDiode"],
                  generic_excitation_sources=sources["GenericExcitationSource"])


def _filter(record: mr.Filter):
    transmittance = None
    if record.transmittance_range is not None:
        r = record.transmittance_range
        transmittance = _build(ome.TransmittanceRange, **_quantity("cut_in", r.cut_in),
                               **_quantity("cut_out", r.cut_out),
                               **_quantity("cut_in_tolerance", r.cut_in_tolerance),
                               **_quantity("cut_out_tolerance", r.cut_out_tolerance),
                               transmittance=r.transmittance)
    return _build(ome.Filter, id=ome_id("Filter", record.id), **_spec(record.spec),
                  type=_enum_value(ome.Filter_Type, record.type), filter_wheel=clean_text(record.filter_wheel),
                  transmittance_range=transmittance)


def _light_source(source: mr.LightSource, source_ids: set[int]):
    common = {"id": ome_id("LightSource", source.id), **_spec(source.spec), **_quantity("power", source.power)}
    if source.kind == "Laser":
        pump = ome.Pump(id=ome_id("LightSource", source.pump_id)) if source.pump_id in source_ids else None
        return _build(ome.Laser, **common, type=_enum_value(ome.Laser_Type, source.type),
                      laser_medium=_enum_value(ome.Laser_LaserMedium, source.laser_medium),
                      **_quantity("wavelength", source.wavelength),
                      frequency_multiplication=source.frequency_multiplication, tuneable=source.tuneable,
                      pulse=_enum_value(ome.Laser_Pulse, source.pulse), pockel_cell=source.pockel_cell,
                      **_quantity("repetition_rate", source.repetition_rate), pump=pump)
    if source.kind == "Arc":
        return _build(ome.Arc, **common, type=_enum_value(ome.Arc_Type, source.type))
    if source.kind == "Filament":
        return _build(ome.Filament, **common, type=_enum_value(ome.Filament_Type, source.type))
    if source.kind == "LightEmittingDiode":
        return _build(ome.LightEmittingDiode, **common)
    return _build(ome.GenericExcitationSource, **common, map=_map(source.map) if source.map else None)


def _instrument_ids(instrument: mr.Instrument | None) -> dict[str, set[int]]:
    """Return the IDs of an instrument's parts by kind, so references to absent parts can be left out."""
    if instrument is None:
        return {"Objective": set(), "Detector": set(), "LightSource": set(), "Filter": set(), "Dichroic": set(),
                "FilterSet": set()}
    return {
        "Objective": {o.id for o in instrument.objectives},
        "Detector": {d.id for d in instrument.detectors},
        "LightSource": {s.id for s in instrument.light_sources},
        "Filter": {f.id for f in instrument.filters},
        "Dichroic": {d.id for d in instrument.dichroics},
        "FilterSet": {s.id for s in instrument.filter_sets},
    }


# Image


def _channel(channel: mr.Channel, parts: dict[str, set[int]], known_annotation: Callable[[int], bool]):
    light_source_settings = None
    settings = channel.light_source_settings
    if settings is not None and settings.light_source_id in parts["LightSource"]:
        light_source_settings = _build(ome.LightSourceSettings, id=ome_id("LightSource", settings.light_source_id),
                                       attenuation=settings.attenuation,
                                       **_quantity("wavelength", settings.wavelength))
    detector_settings = None
    detector = channel.detector_settings
    if detector is not None and detector.detector_id in parts["Detector"]:
        detector_settings = _build(ome.DetectorSettings, id=ome_id("Detector", detector.detector_id),
                                   offset=detector.offset, gain=detector.gain, **_quantity("voltage", detector.voltage),
                                   zoom=detector.zoom, **_quantity("read_out_rate", detector.read_out_rate),
                                   binning=_enum_value(ome.Binning, detector.binning),
                                   integration=detector.integration)
    light_path = None
    if channel.light_path is not None:
        path = channel.light_path
        light_path = _build(
            ome.LightPath,
            excitation_filters=[ome.FilterRef(id=ome_id("Filter", i)) for i in path.excitation_filter_ids
                                if i in parts["Filter"]],
            dichroic_ref=(ome.DichroicRef(id=ome_id("Dichroic", path.dichroic_id))
                          if path.dichroic_id in parts["Dichroic"] else None),
            emission_filters=[ome.FilterRef(id=ome_id("Filter", i)) for i in path.emission_filter_ids
                              if i in parts["Filter"]])
    filter_set_ref = None
    if channel.filter_set_id in parts["FilterSet"]:
        filter_set_ref = ome.FilterSetRef(id=ome_id("FilterSet", channel.filter_set_id))

    return _build(
        ome.Channel, id=ome_id("Channel", channel.id), name=clean_text(channel.name), color=_color(channel.color),
        samples_per_pixel=channel.samples_per_pixel,
        illumination_type=_enum_value(ome.Channel_IlluminationType, channel.illumination),
        contrast_method=_enum_value(ome.Channel_ContrastMethod, channel.contrast_method),
        acquisition_mode=_enum_value(ome.Channel_AcquisitionMode, channel.acquisition_mode),
        **_quantity("pinhole_size", channel.pinhole_size),
        **_quantity("excitation_wavelength", channel.excitation_wavelength),
        **_quantity("emission_wavelength", channel.emission_wavelength),
        fluor=clean_text(channel.fluor), nd_filter=channel.nd_filter,
        pockel_cell_setting=channel.pockel_cell_setting, light_source_settings=light_source_settings,
        detector_settings=detector_settings, filter_set_ref=filter_set_ref, light_path=light_path,
        annotation_refs=_annotation_refs(channel.annotation_ids, known_annotation))


def _plane(plane: mr.Plane):
    if min(plane.the_z, plane.the_c, plane.the_t) < 0:
        log.debug("leaving out a plane at negative index z=%d c=%d t=%d", plane.the_z, plane.the_c, plane.the_t)
        return None
    return _build(ome.Plane, the_z=plane.the_z, the_c=plane.the_c, the_t=plane.the_t,
                  **_quantity("delta_t", plane.delta_t), **_quantity("exposure_time", plane.exposure_time),
                  **_quantity("position_x", plane.position_x), **_quantity("position_y", plane.position_y),
                  **_quantity("position_z", plane.position_z))


def _pixels(image: mr.ImageMetadata, parts: dict[str, set[int]], known_annotation: Callable[[int], bool]):
    pixels = image.pixels
    channels = [_channel(c, parts, known_annotation) for c in sorted(image.channels, key=lambda c: c.index)]
    planes = [p for p in (_plane(p) for p in image.planes) if p is not None]
    if pixels is None:
        # Limitation: OME-XML requires Pixels; an OMERO image without
        # them (a failed import) gets a placeholder of one uint8 pixel.
        return _build(ome.Pixels, id=ome_id("Pixels", image.id), dimension_order="XYZCT", type="uint8",
                      size_x=1, size_y=1, size_z=1, size_c=1, size_t=1, metadata_only=ome.MetadataOnly(),
                      channels=channels, planes=planes)
    return _build(
        ome.Pixels, id=ome_id("Pixels", pixels.id),
        dimension_order=_enum_value(ome.Pixels_DimensionOrder, pixels.dimension_order) or "XYZCT",
        type=_enum_value(ome.PixelType, pixels.type) or "uint8",
        size_x=max(pixels.size_x, 1), size_y=max(pixels.size_y, 1), size_z=max(pixels.size_z, 1),
        size_c=max(pixels.size_c, 1), size_t=max(pixels.size_t, 1), significant_bits=pixels.significant_bits,
        **_quantity("physical_size_x", pixels.physical_size_x),
        **_quantity("physical_size_y", pixels.physical_size_y),
        **_quantity("physical_size_z", pixels.physical_size_z),
        **_quantity("time_increment", pixels.time_increment),
        channels=channels, planes=planes, metadata_only=ome.MetadataOnly())


def _image(image: mr.ImageMetadata, known_annotation: Callable[[int], bool], known_roi: Callable[[int], bool]):
    parts = _instrument_ids(image.instrument)
    objective_settings = None
    settings = image.objective_settings
    if settings is not None and settings.objective_id in parts["Objective"]:
        objective_settings = _build(ome.ObjectiveSettings, id=ome_id("Objective", settings.objective_id),
                                    correction_collar=settings.correction_collar,
                                    medium=_enum_value(ome.ObjectiveSettings_Medium, settings.medium),
                                    refractive_index=settings.refractive_index)
    environment = None
    if image.imaging_environment is not None:
        e = image.imaging_environment
        environment = _build(ome.ImagingEnvironment, **_quantity("temperature", e.temperature),
                             **_quantity("air_pressure", e.air_pressure), humidity=e.humidity,
                             co2_percent=e.co2_percent, map=_map(e.map) if e.map else None)
    stage_label = None
    if image.stage_label is not None:
        s = image.stage_label
        stage_label = _build(ome.StageLabel, name=clean_text(s.name) or "", **_quantity("x", s.x),
                             **_quantity("y", s.y), **_quantity("z", s.z))

    return _build(
        ome.Image, id=ome_id("Image", image.id), name=clean_text(image.name),
        description=clean_text(image.description), acquisition_date=_time(image.acquisition_date),
        experimenter_ref=(ome.ExperimenterRef(id=ome_id("Experimenter", image.owner_id))
                          if image.owner_id is not None else None),
        experimenter_group_ref=(ome.ExperimenterGroupRef(id=ome_id("ExperimenterGroup", image.group_id))
                                if image.group_id is not None else None),
        instrument_ref=(ome.InstrumentRef(id=ome_id("Instrument", image.instrument.id))
                        if image.instrument is not None else None),
        objective_settings=objective_settings, imaging_environment=environment, stage_label=stage_label,
        pixels=_pixels(image, parts, known_annotation),
        roi_refs=[ome.ROIRef(id=ome_id("ROI", i)) for i in image.roi_ids if known_roi(i)],
        annotation_refs=_annotation_refs(image.annotation_ids, known_annotation))


# Annotations

# OMERO annotation class -> (ome-types class, StructuredAnnotations field).
_ANNOTATION_MODELS = {
    "TagAnnotation": (ome.TagAnnotation, "tag_annotations"),
    "CommentAnnotation": (ome.CommentAnnotation, "comment_annotations"),
    "MapAnnotation": (ome.MapAnnotation, "map_annotations"),
    "FileAnnotation": (ome.FileAnnotation, "file_annotations"),
    "LongAnnotation": (ome.LongAnnotation, "long_annotations"),
    "DoubleAnnotation": (ome.DoubleAnnotation, "double_annotations"),
    "BooleanAnnotation": (ome.BooleanAnnotation, "boolean_annotations"),
    "TimestampAnnotation": (ome.TimestampAnnotation, "timestamp_annotations"),
    "TermAnnotation": (ome.TermAnnotation, "term_annotations"),
    "XmlAnnotation": (ome.XMLAnnotation, "xml_annotations"),
    "ListAnnotation": (ome.ListAnnotation, "list_annotations"),
}


def default_file_href(annotation: mr.Annotation) -> str:
    """Return the reference written for a file attachment's bytes when the caller gives none: its name."""
    return annotation.file.name if annotation.file is not None else ""


def _binary_file(annotation: mr.Annotation, file_href: Callable[[mr.Annotation], str]):
    """Describe an attached file: a reference to its bytes when its SHA-1 is known.

    OME-XML's BinaryFile needs either the bytes (BinData) or an External
    reference with the file's SHA-1. A file whose server checksum is not a
    SHA-1 gets an empty BinData instead; its Size still gives the length.
    """
    file = annotation.file
    if file is None:
        return ome.BinaryFile(file_name="", size=0, bin_data=ome.BinData(value=b"", length=0, big_endian=False))
    common = {"file_name": clean_text(file.name) or "", "size": max(file.size, 0),
              "mime_type": clean_text(file.mimetype)}
    if file.hash and _SHA1_HEX.fullmatch(file.hash) and file.hasher in (None, "SHA1-160"):
        href = quote(clean_text(file_href(annotation)) or "", safe="/:")
        return _build(ome.BinaryFile, **common, external=ome.External(href=href, sha1=bytes.fromhex(file.hash)))
    return _build(ome.BinaryFile, **common, bin_data=ome.BinData(value=b"", length=0, big_endian=False))


def _annotation(annotation: mr.Annotation, known_annotation: Callable[[int], bool],
                known_experimenter: Callable[[int], bool], file_href: Callable[[mr.Annotation], str]):
    model_class, _ = _ANNOTATION_MODELS[annotation.kind]
    fields = {
        "id": ome_id("Annotation", annotation.id),
        "namespace": clean_text(annotation.namespace),
        "description": clean_text(annotation.description),
        "annotator": (ome_id("Experimenter", annotation.owner_id)
                      if annotation.owner_id is not None and known_experimenter(annotation.owner_id) else None),
        "annotation_refs": _annotation_refs(annotation.annotation_ids, known_annotation),
    }
    kind = annotation.kind
    value = annotation.value
    if kind in ("TagAnnotation", "CommentAnnotation", "TermAnnotation"):
        fields["value"] = clean_text(str(value)) if value is not None else ""
    elif kind == "LongAnnotation":
        fields["value"] = int(value) if value is not None else 0
    elif kind == "DoubleAnnotation":
        fields["value"] = float(value) if value is not None else 0.0
    elif kind == "BooleanAnnotation":
        fields["value"] = bool(value)
    elif kind == "TimestampAnnotation":
        # OME-XML requires a value; a time out of range reads as the epoch.
        fields["value"] = _time(float(value) if value is not None else 0.0) or _time(0.0)
    elif kind == "MapAnnotation":
        fields["value"] = _map(annotation.map_value)
    elif kind == "FileAnnotation":
        fields["binary_file"] = _binary_file(annotation, file_href)
    elif kind == "XmlAnnotation":
        # The content goes into the element tree after ome-types has
        # written the document; see _insert_xml_values.
        fields["value"] = ome.XMLAnnotation.Value()
    return _build(model_class, **fields)


def _xml_value_elements(text: str | None) -> list[ET.Element]:
    """Parse an XmlAnnotation's text into the elements its Value holds.

    Elements without a namespace prefix land in the OME namespace, as they
    do when OME-XML files carry such content. Text that is not well-formed
    XML, or has text outside its elements, which OME-XML's Value does not
    allow, is kept as the content of one ``<Text>`` element instead.
    """
    text = clean_text(text) or ""
    try:
        wrapper = ET.fromstring(f'<Value xmlns="{OME_NAMESPACE}">{text}</Value>')
    except ET.ParseError:
        wrapper = None
    if wrapper is not None and not (wrapper.text or "").strip() and all(
            not (child.tail or "").strip() for child in wrapper):
        return list(wrapper)
    element = ET.Element(_O + "Text")
    element.text = text
    return [element]


# ROIs


def _shape(shape: mr.Shape, known_annotation: Callable[[int], bool]):
    fields = {
        "id": ome_id("Shape", shape.id),
        "the_z": shape.the_z, "the_c": shape.the_c, "the_t": shape.the_t,
        "text": clean_text(shape.text),
        "fill_color": _color(shape.fill_color),
        "fill_rule": _enum_value(ome.Shape_FillRule, shape.fill_rule),
        "stroke_color": _color(shape.stroke_color),
        **_quantity("stroke_width", shape.stroke_width),
        "stroke_dash_array": clean_text(shape.stroke_dash_array),
        "font_family": _enum_value(ome.Shape_FontFamily, shape.font_family),
        **_quantity("font_size", shape.font_size),
        "font_style": _enum_value(ome.Shape_FontStyle, shape.font_style),
        "locked": shape.locked,
        "annotation_refs": _annotation_refs(shape.annotation_ids, known_annotation),
    }
    if shape.transform is not None:
        t = shape.transform
        fields["transform"] = ome.AffineTransform(a00=t.a00, a10=t.a10, a01=t.a01, a11=t.a11, a02=t.a02, a12=t.a12)

    kind = shape.kind
    zero = 0.0
    if kind in ("Rectangle", "Mask"):
        fields.update(x=shape.x or zero, y=shape.y or zero, width=shape.width or zero, height=shape.height or zero)
        if kind == "Mask":
            data = shape.mask or b""
            encoded = base64.b64encode(data)
            fields["bin_data"] = ome.BinData(value=data, length=len(encoded), big_endian=False)
            return _build(ome.Mask, **fields)
        return _build(ome.Rectangle, **fields)
    if kind == "Ellipse":
        return _build(ome.Ellipse, **fields, x=shape.x or zero, y=shape.y or zero,
                      radius_x=shape.radius_x or zero, radius_y=shape.radius_y or zero)
    if kind in ("Point", "Label"):
        return _build(ome.Point if kind == "Point" else ome.Label, **fields, x=shape.x or zero, y=shape.y or zero)
    markers = {"marker_start": _enum_value(ome.Marker, shape.marker_start),
               "marker_end": _enum_value(ome.Marker, shape.marker_end)}
    if kind == "Line":
        return _build(ome.Line, **fields, **markers, x1=shape.x1 or zero, y1=shape.y1 or zero,
                      x2=shape.x2 or zero, y2=shape.y2 or zero)
    if kind == "Polyline":
        return _build(ome.Polyline, **fields, **markers, points=clean_text(shape.points) or "")
    if kind == "Polygon":
        return _build(ome.Polygon, **fields, points=clean_text(shape.points) or "")
    raise ValueError(f"unknown shape kind {kind!r}")


def _roi(roi: mr.Roi, known_annotation: Callable[[int], bool]):
    return _build(ome.ROI, id=ome_id("ROI", roi.id), name=clean_text(roi.name),
                  description=clean_text(roi.description),
                  union=[_shape(s, known_annotation) for s in roi.shapes],
                  annotation_refs=_annotation_refs(roi.annotation_ids, known_annotation))


# People and containers


def _experimenter(record: mr.Experimenter):
    return _build(ome.Experimenter, id=ome_id("Experimenter", record.id), user_name=clean_text(record.user_name),
                  first_name=clean_text(record.first_name), middle_name=clean_text(record.middle_name),
                  last_name=clean_text(record.last_name), email=clean_text(record.email),
                  institution=clean_text(record.institution))


def _group(record: mr.ExperimenterGroup):
    return _build(ome.ExperimenterGroup, id=ome_id("ExperimenterGroup", record.id), name=clean_text(record.name),
                  description=clean_text(record.description))


def _dataset(record: mr.Dataset, image_ids: set[int]):
    return _build(ome.Dataset, id=ome_id("Dataset", record.id), name=clean_text(record.name),
                  description=clean_text(record.description),
                  image_refs=[ome.ImageRef(id=ome_id("Image", i)) for i in record.image_ids if i in image_ids])


def _plate(record: mr.Plate, image_ids: set[int]):
    """Return a plate holding only the wells and samples of the given images."""
    wells = []
    kept_samples: dict[int, list[int]] = {}
    for well in record.wells:
        samples = []
        for sample in well.samples:
            if sample.image_id not in image_ids:
                continue
            samples.append(_build(
                ome.WellSample, id=ome_id("WellSample", sample.id), index=sample.index,
                image_ref=ome.ImageRef(id=ome_id("Image", sample.image_id)),
                **_quantity("position_x", sample.position_x), **_quantity("position_y", sample.position_y),
                timepoint=_time(sample.timepoint)))
            if sample.plate_acquisition_id is not None:
                kept_samples.setdefault(sample.plate_acquisition_id, []).append(sample.id)
        if samples:
            wells.append(_build(ome.Well, id=ome_id("Well", well.id), row=max(well.row, 0),
                                column=max(well.column, 0),
                                color=_color(well.color), type=clean_text(well.type),
                                external_description=clean_text(well.external_description),
                                external_identifier=clean_text(well.external_identifier), well_samples=samples))
    acquisitions = [
        _build(ome.PlateAcquisition, id=ome_id("PlateAcquisition", a.id), name=clean_text(a.name),
               description=clean_text(a.description), start_time=_time(a.start_time), end_time=_time(a.end_time),
               maximum_field_count=a.maximum_field_count,
               well_sample_refs=[ome.WellSampleRef(id=ome_id("WellSample", i)) for i in kept_samples[a.id]])
        for a in record.acquisitions if a.id in kept_samples]
    return _build(
        ome.Plate, id=ome_id("Plate", record.id), name=clean_text(record.name),
        description=clean_text(record.description), status=clean_text(record.status),
        external_identifier=clean_text(record.external_identifier),
        column_naming_convention=_enum_value(ome.NamingConvention, record.column_naming_convention),
        row_naming_convention=_enum_value(ome.NamingConvention, record.row_naming_convention),
        **_quantity("well_origin_x", record.well_origin_x), **_quantity("well_origin_y", record.well_origin_y),
        rows=record.rows, columns=record.columns, field_index=record.field_index, wells=wells,
        plate_acquisitions=acquisitions)


# Writing


class _Writer:
    """Writes an ElementTree element as XML text, one line or indented.

    Only default namespace declarations are written for elements (so OME
    elements appear unprefixed, as in files Bio-Formats writes);
    attributes in a namespace get a prefix declared on their element.
    Inside an XML annotation's Value nothing is indented, so its content
    stays as it was.
    """

    _TEXT = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
    _ATTRIBUTE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})

    def __init__(self, indent: str | None):
        self.indent = indent
        self.parts: list[str] = []

    def text(self, value: str) -> str:
        escaped = value.translate(self._TEXT)
        if self.indent is None:
            escaped = escaped.replace("\n", "&#10;")
        return escaped

    def write(self, element: ET.Element, default_namespace: str | None = None, depth: int = 0,
              verbatim: bool = False) -> None:
        namespace, local = _split(element.tag)
        attributes = []
        if namespace != default_namespace:
            attributes.append(("xmlns", namespace or ""))
        prefixes = {XML_NAMESPACE: "xml"}
        for name, value in element.attrib.items():
            attribute_namespace, attribute_local = _split(name)
            if attribute_namespace is None:
                attributes.append((attribute_local, value))
                continue
            prefix = prefixes.get(attribute_namespace)
            if prefix is None:
                prefix = "xsi" if attribute_namespace == XSI_NAMESPACE else f"a{len(prefixes)}"
                prefixes[attribute_namespace] = prefix
                attributes.append((f"xmlns:{prefix}", attribute_namespace))
            attributes.append((f"{prefix}:{attribute_local}", value))

        self.parts.append("<" + local)
        for name, value in attributes:
            self.parts.append(f' {name}="{value.translate(self._ATTRIBUTE)}"')
        children = list(element)
        if not children and not element.text:
            self.parts.append("/>")
            return
        self.parts.append(">")
        if element.text:
            self.parts.append(self.text(element.text))

        indent_children = self.indent is not None and not verbatim and not (element.text or "").strip()
        for child in children:
            if indent_children:
                self.parts.append("\n" + self.indent * (depth + 1))
            self.write(child, namespace, depth + 1, verbatim or _is_xml_value(element, child))
            if child.tail:
                self.parts.append(self.text(child.tail))
        if indent_children and children:
            self.parts.append("\n" + self.indent * depth)
        self.parts.append(f"</{local}>")


def _split(tag: str) -> tuple[str | None, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return None, tag


def _is_xml_value(parent: ET.Element, child: ET.Element) -> bool:
    """Tell whether ``child`` is an XML annotation's Value, whose content is written as it is."""
    return parent.tag == _O + "XMLAnnotation" and child.tag == _O + "Value"


def _document(**fields):
    """Make an OME model. A bare element refers to objects outside it, which ome-types would warn about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Reference to unknown ID")
        return ome.OME(**fields)


def _tree(document) -> ET.Element:
    """Write an ome-types OME model and parse it back into an element tree."""
    # What ome_types.to_xml(document, indent=0, include_schema_location=False)
    # does, but with one serialiser for every document. to_xml makes a new
    # one, whose xsdata context works out the XML bindings of every model
    # class again: about three quarters of the time of each document.
    document._update_set_fields()
    return ET.fromstring(_serializer().render(document, ns_map={None: OME_NAMESPACE}))


@functools.cache
def _serializer() -> XmlSerializer:
    # No indentation and no schema location: the writer below lays out the tree.
    config = SerializerConfig(xml_declaration=False, ignore_unset_attributes=True)
    return XmlSerializer(config=config, context=XmlContext())


def _insert_xml_values(root: ET.Element, annotations: Iterable[mr.Annotation]) -> None:
    texts = {ome_id("Annotation", a.id): a.value for a in annotations if a.kind == "XmlAnnotation"}
    if not texts:
        return
    for element in root.iter(_O + "XMLAnnotation"):
        text = texts.get(element.get("ID"))
        value = element.find(_O + "Value")
        if value is None or element.get("ID") not in texts:
            continue
        value.clear()
        value.extend(_xml_value_elements(text if isinstance(text, str) else None))


def _one_line(element: ET.Element) -> bytes:
    writer = _Writer(indent=None)
    writer.write(element)
    return ("".join(writer.parts) + "\n").encode("utf-8")


def _always(_: int) -> bool:
    return True


# Public API


def image_element(image: mr.ImageMetadata) -> bytes:
    """Return ``Metadata/image-<id>.ome.xml``: the ``<Image>`` element on one line."""
    document = _document(images=[_image(image, _always, _always)])
    return _one_line(_tree(document).find(_O + "Image"))


def annotation_element(annotation: mr.Annotation,
                       file_href: Callable[[mr.Annotation], str] = default_file_href) -> bytes:
    """Return ``Metadata/annotation-<id>.ome.xml``: the annotation's element on one line.

    ``file_href`` gives, for a file attachment, the reference to its bytes
    written into ``External href`` (relative to the document).
    """
    model = _annotation(annotation, _always, _always, file_href)
    _, field_name = _ANNOTATION_MODELS[annotation.kind]
    document = _document(structured_annotations=ome.StructuredAnnotations(**{field_name: [model]}))
    root = _tree(document)
    _insert_xml_values(root, [annotation])
    return _one_line(root.find(_O + "StructuredAnnotations")[0])


def roi_element(roi: mr.Roi) -> bytes:
    """Return ``Metadata/roi-<id>.ome.xml``: the ``<ROI>`` element on one line."""
    document = _document(rois=[_roi(roi, _always)])
    return _one_line(_tree(document).find(_O + "ROI"))


def export_document(image: mr.ImageMetadata, annotations: Mapping[int, mr.Annotation], rois: Sequence[mr.Roi] = (),
                    experimenters: Sequence[mr.Experimenter] = (), groups: Sequence[mr.ExperimenterGroup] = (),
                    datasets: Sequence[mr.Dataset] = (), plates: Sequence[mr.Plate] = (),
                    file_href: Callable[[mr.Annotation], str] = default_file_href) -> bytes:
    """Return ``Export/image-<id>.ome.xml``: one OME document for the image, valid against the schema.

    ``annotations`` should hold every annotation linked to the image, its
    channels, ROIs and shapes, and to those annotations in turn. The schema
    requires every reference to resolve inside the document, so references
    to annotations missing from it, and ROIs without shapes (OME-XML needs
    at least one), are left out. Experimenters and groups that are
    referred to but not given appear with their ID only.
    """
    known_annotation = annotations.__contains__
    kept_rois = [r for r in rois if r.shapes]
    roi_ids = {r.id for r in kept_rois}

    included_annotations = _annotation_closure(image, kept_rois, annotations)
    people = {e.id: e for e in experimenters}
    person_ids = {i for i in [image.owner_id, *(annotations[a].owner_id for a in included_annotations)]
                  if i is not None}
    group_by_id = {g.id: g for g in groups}
    group_ids = {image.group_id} - {None}

    structured: dict[str, list] = {}
    for annotation_id in sorted(included_annotations):
        record = annotations[annotation_id]
        _, field_name = _ANNOTATION_MODELS[record.kind]
        structured.setdefault(field_name, []).append(
            _annotation(record, known_annotation, _always, file_href))

    image_ids = {image.id}
    document = _document(
        creator=CREATOR,
        experimenters=[_experimenter(people[i]) if i in people else ome.Experimenter(id=ome_id("Experimenter", i))
                       for i in sorted(person_ids)],
        experimenter_groups=[_group(group_by_id[i]) if i in group_by_id
                             else ome.ExperimenterGroup(id=ome_id("ExperimenterGroup", i)) for i in sorted(group_ids)],
        instruments=[_instrument(image.instrument)] if image.instrument is not None else [],
        images=[_image(image, known_annotation, roi_ids.__contains__)],
        datasets=[_dataset(d, image_ids) for d in datasets if image.id in d.image_ids],
        plates=[p for p in (_plate(p, image_ids) for p in plates) if p.wells],
        rois=[_roi(r, known_annotation) for r in kept_rois],
        structured_annotations=ome.StructuredAnnotations(**structured) if structured else None,
    )
    root = _tree(document)
    root.set(f"{{{XSI_NAMESPACE}}}schemaLocation", SCHEMA_LOCATION)
    _insert_xml_values(root, (annotations[a] for a in included_annotations))

    writer = _Writer(indent="  ")
    writer.write(root)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + "".join(writer.parts) + "\n").encode("utf-8")


def _annotation_closure(image: mr.ImageMetadata, rois: Sequence[mr.Roi],
                        annotations: Mapping[int, mr.Annotation]) -> set[int]:
    """Return the IDs of the given annotations reachable from the image, its channels, ROIs and shapes."""
    pending = list(image.annotation_ids)
    for channel in image.channels:
        pending.extend(channel.annotation_ids)
    for roi in rois:
        pending.extend(roi.annotation_ids)
        for shape in roi.shapes:
            pending.extend(shape.annotation_ids)
    found: set[int] = set()
    while pending:
        annotation_id = pending.pop()
        if annotation_id in found or annotation_id not in annotations:
            continue
        found.add(annotation_id)
        pending.extend(annotations[annotation_id].annotation_ids)
    return found
