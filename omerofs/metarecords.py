"""Plain records of the metadata that OME-XML describes.

``remote.metadata`` builds them from OMERO's model objects and ``omexml``
turns them into OME-XML. Like ``records``, they are frozen dataclasses of
built-in types (and records), so they pickle into the persistent catalog
and compare by value, and none of them refers to omero-py.

Conventions shared by every record here:

- ``id`` is the OMERO ID of the object the record came from.
- A field the server left unset is None (or an empty tuple).
- Enumerations (illumination, immersion, laser type, ...) keep the value
  string OMERO stores, which for OMERO's built-in enumerations is the
  OME-XML enumeration value.
- Times are seconds since the Unix epoch (OMERO stores milliseconds).
- Colours are OME-XML's signed 32-bit RGBA integers.
"""

from dataclasses import dataclass

from .records import OriginalFile

# OMERO annotation classes, as OMERO names them, in the order the
# documentation lists them.
ANNOTATION_KINDS = (
    "TagAnnotation", "CommentAnnotation", "MapAnnotation", "FileAnnotation", "LongAnnotation",
    "DoubleAnnotation", "BooleanAnnotation", "TimestampAnnotation", "TermAnnotation", "XmlAnnotation",
    "ListAnnotation",
)

# OMERO shape classes; each is also the OME-XML element name.
SHAPE_KINDS = ("Rectangle", "Ellipse", "Point", "Line", "Polyline", "Polygon", "Label", "Mask")

# OMERO light source classes; each is also the OME-XML element name.
LIGHT_SOURCE_KINDS = ("Laser", "Arc", "Filament", "LightEmittingDiode", "GenericExcitationSource")


@dataclass(frozen=True)
class Quantity:
    """A value with its unit, as OMERO's unit types (Length, Time, ...) carry it.

    ``unit`` is the unit's symbol as OMERO and OME-XML write it: "µm", "s", "nm".
    """

    value: float
    unit: str


# People


@dataclass(frozen=True)
class Experimenter:
    id: int
    user_name: str
    first_name: str | None = None
    middle_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    institution: str | None = None


@dataclass(frozen=True)
class ExperimenterGroup:
    id: int
    name: str
    description: str | None = None


# Instrument


@dataclass(frozen=True)
class ManufacturerSpec:
    """The fields that every piece of OME hardware shares."""

    manufacturer: str | None = None
    model: str | None = None
    serial_number: str | None = None
    lot_number: str | None = None


@dataclass(frozen=True)
class Microscope:
    spec: ManufacturerSpec = ManufacturerSpec()
    type: str | None = None


@dataclass(frozen=True)
class Objective:
    id: int
    spec: ManufacturerSpec = ManufacturerSpec()
    correction: str | None = None
    immersion: str | None = None
    lens_na: float | None = None
    nominal_magnification: float | None = None
    calibrated_magnification: float | None = None
    working_distance: Quantity | None = None
    iris: bool | None = None


@dataclass(frozen=True)
class Detector:
    id: int
    spec: ManufacturerSpec = ManufacturerSpec()
    type: str | None = None
    gain: float | None = None
    voltage: Quantity | None = None
    offset: float | None = None
    zoom: float | None = None
    amplification_gain: float | None = None


@dataclass(frozen=True)
class LightSource:
    """A laser, arc, filament, LED or generic source; ``kind`` says which.

    Fields that belong to one kind only (``laser_medium``, ``pulse``, ...)
    stay None for the others.
    """

    id: int
    kind: str
    spec: ManufacturerSpec = ManufacturerSpec()
    power: Quantity | None = None
    type: str | None = None
    laser_medium: str | None = None
    wavelength: Quantity | None = None
    frequency_multiplication: int | None = None
    tuneable: bool | None = None
    pulse: str | None = None
    pockel_cell: bool | None = None
    repetition_rate: Quantity | None = None
    pump_id: int | None = None
    map: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TransmittanceRange:
    cut_in: Quantity | None = None
    cut_out: Quantity | None = None
    cut_in_tolerance: Quantity | None = None
    cut_out_tolerance: Quantity | None = None
    # A fraction from 0 to 1.
    transmittance: float | None = None


@dataclass(frozen=True)
class Filter:
    id: int
    spec: ManufacturerSpec = ManufacturerSpec()
    type: str | None = None
    filter_wheel: str | None = None
    transmittance_range: TransmittanceRange | None = None


@dataclass(frozen=True)
class Dichroic:
    id: int
    spec: ManufacturerSpec = ManufacturerSpec()


@dataclass(frozen=True)
class FilterSet:
    id: int
    spec: ManufacturerSpec = ManufacturerSpec()
    excitation_filter_ids: tuple[int, ...] = ()
    dichroic_id: int | None = None
    emission_filter_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Instrument:
    id: int
    microscope: Microscope | None = None
    objectives: tuple[Objective, ...] = ()
    detectors: tuple[Detector, ...] = ()
    light_sources: tuple[LightSource, ...] = ()
    filters: tuple[Filter, ...] = ()
    dichroics: tuple[Dichroic, ...] = ()
    filter_sets: tuple[FilterSet, ...] = ()


# Image, pixels, channels, planes


@dataclass(frozen=True)
class ObjectiveSettings:
    objective_id: int
    correction_collar: float | None = None
    medium: str | None = None
    refractive_index: float | None = None


@dataclass(frozen=True)
class DetectorSettings:
    detector_id: int
    offset: float | None = None
    gain: float | None = None
    voltage: Quantity | None = None
    zoom: float | None = None
    read_out_rate: Quantity | None = None
    binning: str | None = None
    integration: int | None = None


@dataclass(frozen=True)
class LightSourceSettings:
    light_source_id: int
    # A fraction from 0 to 1.
    attenuation: float | None = None
    wavelength: Quantity | None = None


@dataclass(frozen=True)
class LightPath:
    excitation_filter_ids: tuple[int, ...] = ()
    dichroic_id: int | None = None
    emission_filter_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Channel:
    """One channel of an image: OMERO's Channel with its LogicalChannel."""

    id: int
    index: int
    name: str | None = None
    color: int | None = None
    samples_per_pixel: int | None = None
    illumination: str | None = None
    contrast_method: str | None = None
    acquisition_mode: str | None = None
    pinhole_size: Quantity | None = None
    excitation_wavelength: Quantity | None = None
    emission_wavelength: Quantity | None = None
    fluor: str | None = None
    nd_filter: float | None = None
    pockel_cell_setting: int | None = None
    light_source_settings: LightSourceSettings | None = None
    detector_settings: DetectorSettings | None = None
    filter_set_id: int | None = None
    light_path: LightPath | None = None
    annotation_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Plane:
    the_z: int
    the_c: int
    the_t: int
    delta_t: Quantity | None = None
    exposure_time: Quantity | None = None
    position_x: Quantity | None = None
    position_y: Quantity | None = None
    position_z: Quantity | None = None


@dataclass(frozen=True)
class Pixels:
    id: int
    dimension_order: str
    type: str
    size_x: int
    size_y: int
    size_z: int
    size_c: int
    size_t: int
    significant_bits: int | None = None
    physical_size_x: Quantity | None = None
    physical_size_y: Quantity | None = None
    physical_size_z: Quantity | None = None
    time_increment: Quantity | None = None


@dataclass(frozen=True)
class ImagingEnvironment:
    temperature: Quantity | None = None
    air_pressure: Quantity | None = None
    # Fractions from 0 to 1, as OMERO stores them.
    humidity: float | None = None
    co2_percent: float | None = None
    map: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StageLabel:
    name: str
    x: Quantity | None = None
    y: Quantity | None = None
    z: Quantity | None = None


@dataclass(frozen=True)
class ImageMetadata:
    """An image with everything OME-XML says about it, and the IDs of what links to it.

    ``instrument`` is the whole instrument, since an image's channels refer
    to its parts; two images that share an instrument carry equal copies.
    """

    id: int
    name: str
    description: str | None = None
    acquisition_date: float | None = None
    owner_id: int | None = None
    group_id: int | None = None
    pixels: Pixels | None = None
    channels: tuple[Channel, ...] = ()
    planes: tuple[Plane, ...] = ()
    instrument: Instrument | None = None
    objective_settings: ObjectiveSettings | None = None
    imaging_environment: ImagingEnvironment | None = None
    stage_label: StageLabel | None = None
    annotation_ids: tuple[int, ...] = ()
    roi_ids: tuple[int, ...] = ()
    # Containers that hold the image: datasets by DatasetImageLink, plates
    # through a well sample.
    dataset_ids: tuple[int, ...] = ()
    plate_ids: tuple[int, ...] = ()


# Annotations


@dataclass(frozen=True)
class Annotation:
    """One annotation of any kind; ``kind`` is the OMERO class name (``ANNOTATION_KINDS``).

    ``value`` holds the kind's own value: text for Tag, Comment, Term and
    Xml annotations, an int for Long, a float for Double, a bool for
    Boolean and seconds since the epoch for Timestamp. Map annotations use
    ``map_value`` (ordered, keys may repeat), File annotations ``file``,
    and List annotations only ``annotation_ids``.
    """

    id: int
    kind: str
    namespace: str | None = None
    description: str | None = None
    # OMERO's Annotation.name, which OME-XML has no place for.
    name: str | None = None
    value: str | int | float | bool | None = None
    map_value: tuple[tuple[str, str], ...] = ()
    file: OriginalFile | None = None
    # Annotations linked to this one (AnnotationAnnotationLink children).
    annotation_ids: tuple[int, ...] = ()
    owner_id: int | None = None


# Regions of interest


@dataclass(frozen=True)
class AffineTransform:
    a00: float = 1.0
    a10: float = 0.0
    a01: float = 0.0
    a11: float = 1.0
    a02: float = 0.0
    a12: float = 0.0


@dataclass(frozen=True)
class Shape:
    """One shape of any kind; ``kind`` is one of ``SHAPE_KINDS``.

    The geometry fields used depend on the kind: x, y, width, height for
    Rectangle and Mask; x, y, radius_x, radius_y for Ellipse; x, y for
    Point and Label; x1, y1, x2, y2 for Line; points (OME-XML's "x,y x,y"
    text) for Polyline and Polygon; ``mask`` holds a Mask's packed bits.
    """

    id: int
    kind: str
    the_z: int | None = None
    the_c: int | None = None
    the_t: int | None = None
    text: str | None = None
    transform: AffineTransform | None = None
    fill_color: int | None = None
    fill_rule: str | None = None
    stroke_color: int | None = None
    stroke_width: Quantity | None = None
    stroke_dash_array: str | None = None
    font_family: str | None = None
    font_size: Quantity | None = None
    font_style: str | None = None
    locked: bool | None = None
    x: float | None = None
    y: float | None = None
    width: float | None = None
    height: float | None = None
    radius_x: float | None = None
    radius_y: float | None = None
    x1: float | None = None
    y1: float | None = None
    x2: float | None = None
    y2: float | None = None
    points: str | None = None
    marker_start: str | None = None
    marker_end: str | None = None
    mask: bytes | None = None
    annotation_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Roi:
    id: int
    name: str | None = None
    description: str | None = None
    image_id: int | None = None
    shapes: tuple[Shape, ...] = ()
    annotation_ids: tuple[int, ...] = ()
    owner_id: int | None = None


# Containers


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    description: str | None = None
    dataset_ids: tuple[int, ...] = ()
    owner_id: int | None = None
    group_id: int | None = None


@dataclass(frozen=True)
class Dataset:
    id: int
    name: str
    description: str | None = None
    image_ids: tuple[int, ...] = ()
    owner_id: int | None = None
    group_id: int | None = None


@dataclass(frozen=True)
class Screen:
    id: int
    name: str
    description: str | None = None
    type: str | None = None
    protocol_identifier: str | None = None
    protocol_description: str | None = None
    reagent_set_identifier: str | None = None
    reagent_set_description: str | None = None
    plate_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class WellSample:
    id: int
    # OMERO has no index; this is the sample's position among its well's
    # samples in ID order, which OME-XML requires.
    index: int
    image_id: int | None = None
    position_x: Quantity | None = None
    position_y: Quantity | None = None
    timepoint: float | None = None
    plate_acquisition_id: int | None = None


@dataclass(frozen=True)
class Well:
    id: int
    row: int
    column: int
    color: int | None = None
    type: str | None = None
    external_description: str | None = None
    external_identifier: str | None = None
    samples: tuple[WellSample, ...] = ()


@dataclass(frozen=True)
class PlateAcquisition:
    id: int
    name: str | None = None
    description: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    maximum_field_count: int | None = None


@dataclass(frozen=True)
class Plate:
    id: int
    name: str
    description: str | None = None
    status: str | None = None
    external_identifier: str | None = None
    column_naming_convention: str | None = None
    row_naming_convention: str | None = None
    well_origin_x: Quantity | None = None
    well_origin_y: Quantity | None = None
    rows: int | None = None
    columns: int | None = None
    # OMERO's Plate.defaultSample: the field shown by default.
    field_index: int | None = None
    wells: tuple[Well, ...] = ()
    acquisitions: tuple[PlateAcquisition, ...] = ()
