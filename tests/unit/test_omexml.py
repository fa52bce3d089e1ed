"""OME-XML from metadata records: one-line elements, escaping, schema validity, round trips."""

import datetime
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import ome_types
import pytest
import xmlschema

from omerofs import metarecords as mr
from omerofs import omexml, records

Q = mr.Quantity
NS = "{" + omexml.OME_NAMESPACE + "}"
SPECIAL = "a<b>&c\"d'e"

# OMERO annotation class -> OME-XML element.
ELEMENTS = {
    "TagAnnotation": "TagAnnotation", "CommentAnnotation": "CommentAnnotation", "MapAnnotation": "MapAnnotation",
    "FileAnnotation": "FileAnnotation", "LongAnnotation": "LongAnnotation", "DoubleAnnotation": "DoubleAnnotation",
    "BooleanAnnotation": "BooleanAnnotation", "TimestampAnnotation": "TimestampAnnotation",
    "TermAnnotation": "TermAnnotation", "XmlAnnotation": "XMLAnnotation", "ListAnnotation": "ListAnnotation",
}


@pytest.fixture(scope="module")
def schema():
    # The schema file that ome-types ships. ome_types.validate_xml is not
    # used: with xmlschema 4.3 its light-source work-around raises TypeError.
    return xmlschema.XMLSchema(str(Path(ome_types.__file__).parent / "ome-2016-06.xsd"))


def sha1_file(file_id=77, name="results.csv"):
    return records.OriginalFile(file_id, name, "user_2/x/", 1234, 1.0, "ab" * 20, records.SHA1,
                                mimetype="text/csv")


def every_annotation() -> dict[int, mr.Annotation]:
    annotations = [
        mr.Annotation(100, "TagAnnotation", "openmicroscopy.org/omero/tag", "a tag", value="anaphase", owner_id=2),
        mr.Annotation(101, "CommentAnnotation", value="first line\nsecond line", owner_id=2),
        mr.Annotation(102, "MapAnnotation", "openmicroscopy.org/omero/client/mapAnnotation",
                      map_value=(("gene", "CDK1"), ("gene", "CCNB1"), ("empty", ""))),
        mr.Annotation(103, "FileAnnotation", description="attached table", file=sha1_file()),
        mr.Annotation(104, "LongAnnotation", value=-42),
        mr.Annotation(105, "DoubleAnnotation", value=0.125),
        mr.Annotation(106, "BooleanAnnotation", value=True),
        mr.Annotation(107, "TimestampAnnotation", value=1700000000.25),
        mr.Annotation(108, "TermAnnotation", value="GO:0000070"),
        mr.Annotation(109, "XmlAnnotation", value='<Result xmlns="urn:example" score="1">ok<Note/></Result>'),
        mr.Annotation(110, "ListAnnotation", annotation_ids=(100, 104)),
        # Annotations on annotations: the tag carries a comment.
        mr.Annotation(111, "CommentAnnotation", value="on the list", annotation_ids=(101,)),
    ]
    return {a.id: a for a in annotations}


def every_shape() -> tuple[mr.Shape, ...]:
    transform = mr.AffineTransform(1.0, 0.5, -0.5, 1.0, 10.0, 20.0)
    return (
        mr.Shape(201, "Rectangle", 0, 1, 2, x=1, y=2, width=30, height=40, transform=transform,
                 stroke_color=-16776961, fill_color=0x00FF0080, stroke_width=Q(2, "pixel"), locked=True,
                 annotation_ids=(105,)),
        mr.Shape(202, "Ellipse", x=5, y=6, radius_x=7, radius_y=8, fill_rule="EvenOdd"),
        mr.Shape(203, "Point", the_z=3, x=9, y=10),
        mr.Shape(204, "Line", x1=0, y1=1, x2=2, y2=3, marker_start="Arrow", marker_end="Arrow"),
        mr.Shape(205, "Polyline", points="1,2 3,4 5,6", marker_end="Arrow"),
        mr.Shape(206, "Polygon", points="0,0 10,0 10,10", stroke_dash_array="4 2"),
        mr.Shape(207, "Label", x=1, y=1, text="mitotic cell", font_family="sans-serif", font_size=Q(12, "pt"),
                 font_style="Bold"),
        mr.Shape(208, "Mask", x=0, y=0, width=8, height=2, mask=b"\xff\x0f"),
    )


def instrument() -> mr.Instrument:
    return mr.Instrument(
        1, mr.Microscope(mr.ManufacturerSpec("Zeiss", "Axio Observer", "SN1", "L1"), "Inverted"),
        objectives=(mr.Objective(2, mr.ManufacturerSpec("Zeiss"), "PlanApo", "Oil", 1.4, 63.0, 62.9,
                                 Q(0.19, "mm"), False),),
        detectors=(mr.Detector(3, type="CCD", gain=1.5, voltage=Q(100, "V"), offset=0.0, zoom=1.0),),
        light_sources=(
            mr.LightSource(4, "Laser", power=Q(10, "mW"), type="Gas", laser_medium="Ar", wavelength=Q(488, "nm"),
                           frequency_multiplication=1, tuneable=False, pulse="CW", pockel_cell=False,
                           repetition_rate=Q(80, "MHz"), pump_id=5),
            mr.LightSource(5, "Arc", type="Hg", power=Q(100, "W")),
            mr.LightSource(6, "Filament", type="Halogen"),
            mr.LightSource(12, "LightEmittingDiode"),
            mr.LightSource(13, "GenericExcitationSource", map=(("kind", "lamp"),)),
        ),
        filters=(mr.Filter(7, type="BandPass", filter_wheel="W1",
                           transmittance_range=mr.TransmittanceRange(Q(500, "nm"), Q(550, "nm"), transmittance=0.9)),
                 mr.Filter(10, type="LongPass")),
        dichroics=(mr.Dichroic(8, mr.ManufacturerSpec("Chroma")),),
        filter_sets=(mr.FilterSet(9, excitation_filter_ids=(7,), dichroic_id=8, emission_filter_ids=(10,)),),
    )


def rich_image(**changes) -> mr.ImageMetadata:
    fields = dict(
        id=12, name="mitosis.dv", description="HeLa, H2B-GFP", acquisition_date=1700000000.5, owner_id=2,
        group_id=3,
        pixels=mr.Pixels(40, "XYZCT", "uint16", 512, 256, 3, 2, 1, 12, Q(0.1, "µm"), Q(0.1, "µm"), Q(0.5, "µm"),
                         Q(1, "s")),
        channels=(
            mr.Channel(50, 0, "GFP", -16776961, 1, "Epifluorescence", "Fluorescence", "WideField", Q(1, "µm"),
                       Q(488, "nm"), Q(510, "nm"), "GFP", 0.5, 1, mr.LightSourceSettings(4, 0.5, Q(488, "nm")),
                       mr.DetectorSettings(3, 1, 2, Q(3, "V"), 1, Q(10, "MHz"), "2x2", 1), 9,
                       mr.LightPath((7,), 8, (10,)), (106,)),
            mr.Channel(51, 1, "DAPI", 0x0000FFFF),
        ),
        planes=(mr.Plane(0, 0, 0, Q(0.5, "s"), Q(10, "ms"), Q(1, "µm"), Q(2, "µm"), Q(3, "µm")),
                mr.Plane(1, 1, 0)),
        instrument=instrument(), objective_settings=mr.ObjectiveSettings(2, 0.5, "Oil", 1.515),
        imaging_environment=mr.ImagingEnvironment(Q(37, "°C"), Q(1013, "mbar"), 0.5, 0.05, (("dish", "35mm"),)),
        stage_label=mr.StageLabel("position 1", Q(1, "µm"), Q(2, "µm"), Q(3, "µm")),
        annotation_ids=(100, 101, 102, 103, 104, 107, 108, 109, 110, 111), roi_ids=(200,), dataset_ids=(300,),
        plate_ids=(400,),
    )
    fields.update(changes)
    return mr.ImageMetadata(**fields)


def plate() -> mr.Plate:
    return mr.Plate(
        400, "plate 1", "a screen plate", "done", "EXT-1", "number", "letter", Q(1, "mm"), Q(2, "mm"), 8, 12, 0,
        wells=(mr.Well(410, 0, 0, color=-1, type="control", samples=(
                   mr.WellSample(411, 0, 12, Q(5, "µm"), Q(6, "µm"), 1700000000.0, plate_acquisition_id=420),
                   mr.WellSample(412, 1, 13))),
               mr.Well(430, 1, 0, samples=(mr.WellSample(431, 0, 14),))),
        acquisitions=(mr.PlateAcquisition(420, "run 1", start_time=1700000000.0, end_time=1700000100.0,
                                          maximum_field_count=2),),
    )


def export(image=None, annotations=None, rois=None, **kwargs) -> bytes:
    image = image or rich_image()
    annotations = every_annotation() if annotations is None else annotations
    rois = [mr.Roi(200, "nucleus", "the nucleus", 12, every_shape(), (108,), owner_id=2)] if rois is None else rois
    kwargs.setdefault("experimenters", [mr.Experimenter(2, "alice", "Alice", None, "Liddell", "a@example.org", "Lab")])
    kwargs.setdefault("groups", [mr.ExperimenterGroup(3, "lab", "the lab")])
    kwargs.setdefault("datasets", [mr.Dataset(300, "mitosis", image_ids=(12, 13))])
    kwargs.setdefault("plates", [plate()])
    return omexml.export_document(image, annotations, rois, **kwargs)


def errors(schema, data: bytes) -> list[str]:
    return [str(error.reason) for error in schema.iter_errors(data.decode("utf-8"))]


def assert_one_line(data: bytes) -> None:
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1


# Bare elements


@pytest.mark.parametrize("kind", mr.ANNOTATION_KINDS)
def test_annotation_element_is_one_line(kind):
    annotation = next(a for a in every_annotation().values() if a.kind == kind)
    data = omexml.annotation_element(annotation)
    assert_one_line(data)
    assert data.startswith(f'<{ELEMENTS[kind]} xmlns="{omexml.OME_NAMESPACE}" '.encode())
    element = ET.fromstring(data)
    assert element.tag == NS + ELEMENTS[kind]
    assert element.get("ID") == f"Annotation:{annotation.id}"


def test_tag_element_matches_readme_grep():
    data = omexml.annotation_element(every_annotation()[100]).decode()
    assert re.search(r"^<Tag.*<Value>anaphase<", data, re.MULTILINE)


def test_annotation_element_refers_to_linked_annotations():
    element = ET.fromstring(omexml.annotation_element(every_annotation()[110]))
    assert [r.get("ID") for r in element.iter(NS + "AnnotationRef")] == ["Annotation:100", "Annotation:104"]


def test_annotation_values_in_elements():
    annotations = every_annotation()

    def value(annotation_id):
        return ET.fromstring(omexml.annotation_element(annotations[annotation_id])).find(NS + "Value")

    assert value(100).text == "anaphase"
    assert value(101).text == "first line\nsecond line"
    assert [(m.get("K"), m.text or "") for m in value(102)] == [("gene", "CDK1"), ("gene", "CCNB1"), ("empty", "")]
    assert value(104).text == "-42"
    assert float(value(105).text) == 0.125
    assert value(106).text == "true"
    assert value(107).text == "2023-11-14T22:13:20.250Z"
    assert value(108).text == "GO:0000070"
    result = value(109)[0]
    assert result.tag == "{urn:example}Result"
    assert result.get("score") == "1"
    assert result.text == "ok"


def test_file_annotation_refers_to_file_by_sha1():
    annotation = every_annotation()[103]
    data = omexml.annotation_element(annotation, file_href=lambda a: f"../File/{a.file.name}")
    binary = ET.fromstring(data).find(NS + "BinaryFile")
    assert binary.get("FileName") == "results.csv"
    assert binary.get("Size") == "1234"
    assert binary.get("MIMEType") == "text/csv"
    external = binary.find(NS + "External")
    assert external.get("href") == "../File/results.csv"
    assert external.get("SHA1").lower() == "ab" * 20


def test_file_annotation_without_sha1_has_empty_bindata(schema):
    md5_file = records.OriginalFile(78, "x.bin", "p/", 99, 1.0, "0" * 32, records.MD5)
    annotation = mr.Annotation(103, "FileAnnotation", file=md5_file)
    binary = ET.fromstring(omexml.annotation_element(annotation)).find(NS + "BinaryFile")
    assert binary.get("Size") == "99"
    assert binary.find(NS + "BinData").get("Length") == "0"
    assert errors(schema, export(annotations={**every_annotation(), 103: annotation})) == []


def test_image_element_is_one_line_with_refs():
    data = omexml.image_element(rich_image())
    assert_one_line(data)
    image = ET.fromstring(data)
    assert image.tag == NS + "Image"
    assert image.get("ID") == "Image:12"
    assert image.find(NS + "Pixels").find(NS + "MetadataOnly") is not None
    assert [r.get("ID") for r in image.findall(NS + "ROIRef")] == ["ROI:200"]
    assert "Annotation:100" in [r.get("ID") for r in image.findall(NS + "AnnotationRef")]
    assert image.find(NS + "InstrumentRef").get("ID") == "Instrument:1"
    assert image.find(NS + "ExperimenterRef").get("ID") == "Experimenter:2"


@pytest.mark.parametrize("shape", every_shape(), ids=lambda s: s.kind)
def test_roi_element_holds_every_shape_kind(shape):
    data = omexml.roi_element(mr.Roi(200, "r", shapes=(shape,)))
    assert_one_line(data)
    union = ET.fromstring(data).find(NS + "Union")
    assert [child.tag for child in union] == [NS + shape.kind]
    assert union[0].get("ID") == f"Shape:{shape.id}"


def test_shape_transform_and_colours():
    rectangle = ET.fromstring(omexml.roi_element(mr.Roi(200, shapes=every_shape()[:1]))).find(
        f"{NS}Union/{NS}Rectangle")
    assert rectangle.get("StrokeColor") == "-16776961"
    assert rectangle.get("Locked") == "true"
    assert (rectangle.get("TheZ"), rectangle.get("TheC"), rectangle.get("TheT")) == ("0", "1", "2")
    transform = rectangle.find(NS + "Transform")
    assert float(transform.get("A02")) == 10.0
    assert float(transform.get("A10")) == 0.5


# Escaping


def test_special_characters_round_trip_in_elements():
    annotation = mr.Annotation(5, "TagAnnotation", SPECIAL, SPECIAL, value=SPECIAL)
    data = omexml.annotation_element(annotation)
    assert_one_line(data)
    element = ET.fromstring(data)
    assert element.get("Namespace") == SPECIAL
    assert element.find(NS + "Description").text == SPECIAL
    assert element.find(NS + "Value").text == SPECIAL

    image = ET.fromstring(omexml.image_element(rich_image(name=SPECIAL)))
    assert image.get("Name") == SPECIAL


def test_special_characters_are_escaped_in_text():
    data = omexml.annotation_element(mr.Annotation(5, "CommentAnnotation", value="<b>&amp;</b>")).decode()
    assert "<Value>&lt;b&gt;&amp;amp;&lt;/b&gt;</Value>" in data


def test_control_characters_become_replacement_character():
    value = "a\x00b\x01c\x1fd\x7fe\ufffef\udc80g\th"
    element = ET.fromstring(omexml.annotation_element(mr.Annotation(5, "TagAnnotation", value=value)))
    assert element.find(NS + "Value").text == "a\ufffdb\ufffdc\ufffdd\x7fe\ufffdf\ufffdg\th"


def test_line_ends_become_line_feeds():
    annotation = mr.Annotation(5, "CommentAnnotation", namespace="x\ny", value="one\r\ntwo\rthree\n")
    data = omexml.annotation_element(annotation)
    assert_one_line(data)
    element = ET.fromstring(data)
    assert element.find(NS + "Value").text == "one\ntwo\nthree\n"
    assert element.get("Namespace") == "x\ny"


def test_non_ascii_is_written_as_utf8():
    name = "Zelle µm 細胞 😀 é"
    data = omexml.image_element(rich_image(name=name))
    assert name.encode("utf-8") in data
    assert ET.fromstring(data).get("Name") == name


def test_export_with_hostile_text_is_valid(schema):
    hostile = SPECIAL + "\x00\x0b\r\n😀\ufffe"
    annotations = {
        1: mr.Annotation(1, "TagAnnotation", hostile, hostile, value=hostile),
        2: mr.Annotation(2, "MapAnnotation", map_value=((hostile, hostile),)),
        3: mr.Annotation(3, "XmlAnnotation", value=hostile),
        4: mr.Annotation(4, "FileAnnotation", file=sha1_file(name=hostile)),
    }
    image = rich_image(name=hostile, description=hostile, annotation_ids=(1, 2, 3, 4))
    rois = [mr.Roi(200, hostile, hostile, 12, (mr.Shape(201, "Label", x=0, y=0, text=hostile),))]
    data = export(image, annotations, rois)
    assert errors(schema, data) == []
    parsed = ome_types.from_xml(data.decode("utf-8"))
    assert parsed.images[0].name == SPECIAL + "\ufffd\ufffd\n😀\ufffd"


# XML annotations


def test_malformed_xml_annotation_kept_as_text(schema):
    for text in ["just text", "<open>", "<a/>trailing", "a & b"]:
        annotation = mr.Annotation(109, "XmlAnnotation", value=text)
        value = ET.fromstring(omexml.annotation_element(annotation)).find(NS + "Value")
        assert [child.tag for child in value] == [NS + "Text"]
        assert value[0].text == text
        assert errors(schema, export(annotations={**every_annotation(), 109: annotation})) == []


def test_xml_annotation_without_namespace_lands_in_ome_namespace():
    annotation = mr.Annotation(109, "XmlAnnotation", value="<OriginalMetadata><Key>k</Key></OriginalMetadata>")
    data = omexml.annotation_element(annotation).decode()
    assert "<Value><OriginalMetadata><Key>k</Key></OriginalMetadata></Value>" in data


# Export


def test_export_is_valid_against_schema(schema):
    assert errors(schema, export()) == []


def test_export_starts_with_declaration_and_schema_location():
    data = export()
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<OME ')
    root = ET.fromstring(data)
    assert root.get("{http://www.w3.org/2001/XMLSchema-instance}schemaLocation") == omexml.SCHEMA_LOCATION


def test_export_parses_back_to_same_values():
    parsed = ome_types.from_xml(export().decode("utf-8"))

    image = parsed.images[0]
    assert (image.id, image.name, image.description) == ("Image:12", "mitosis.dv", "HeLa, H2B-GFP")
    assert image.acquisition_date == datetime.datetime(2023, 11, 14, 22, 13, 20, 500000, datetime.timezone.utc)
    pixels = image.pixels
    assert (pixels.size_x, pixels.size_y, pixels.size_z, pixels.size_c, pixels.size_t) == (512, 256, 3, 2, 1)
    assert pixels.type.value == "uint16"
    assert pixels.metadata_only is not None
    assert (pixels.physical_size_z, pixels.physical_size_z_unit.value) == (0.5, "µm")
    assert pixels.time_increment_unit.value == "s"
    gfp = pixels.channels[0]
    assert (gfp.id, gfp.name, gfp.fluor) == ("Channel:50", "GFP", "GFP")
    assert gfp.color.as_rgb_tuple() == (255, 0, 0)
    assert (gfp.emission_wavelength, gfp.emission_wavelength_unit.value) == (510.0, "nm")
    assert gfp.illumination_type.value == "Epifluorescence"
    assert gfp.light_source_settings.id == "LightSource:4"
    assert gfp.detector_settings.binning.value == "2x2"
    assert gfp.filter_set_ref.id == "FilterSet:9"
    assert [f.id for f in gfp.light_path.emission_filters] == ["Filter:10"]
    assert [(p.the_z, p.the_c, p.the_t) for p in pixels.planes] == [(0, 0, 0), (1, 1, 0)]
    assert (pixels.planes[0].exposure_time, pixels.planes[0].exposure_time_unit.value) == (10.0, "ms")
    assert image.objective_settings.id == "Objective:2"
    assert image.stage_label.name == "position 1"
    assert image.imaging_environment.temperature_unit.value == "°C"

    inst = parsed.instruments[0]
    assert inst.microscope.manufacturer == "Zeiss"
    assert inst.objectives[0].lens_na == 1.4
    assert inst.lasers[0].pump.id == "LightSource:5"
    assert [len(inst.arcs), len(inst.filaments), len(inst.light_emitting_diodes),
            len(inst.generic_excitation_sources)] == [1, 1, 1, 1]
    assert inst.filters[0].transmittance_range.transmittance == 0.9

    assert [(e.id, e.user_name) for e in parsed.experimenters] == [("Experimenter:2", "alice")]
    assert parsed.experimenter_groups[0].name == "lab"


def test_export_annotations_parse_back_per_kind():
    parsed = ome_types.from_xml(export().decode("utf-8")).structured_annotations
    assert parsed.tag_annotations[0].value == "anaphase"
    assert parsed.tag_annotations[0].annotator == "Experimenter:2"
    assert {a.id: a.value for a in parsed.comment_annotations} == {
        "Annotation:101": "first line\nsecond line", "Annotation:111": "on the list"}
    assert [(m.k, m.value) for m in parsed.map_annotations[0].value.ms] == [
        ("gene", "CDK1"), ("gene", "CCNB1"), ("empty", "")]
    assert parsed.file_annotations[0].binary_file.file_name == "results.csv"
    assert parsed.long_annotations[0].value == -42
    assert parsed.double_annotations[0].value == 0.125
    assert parsed.boolean_annotations[0].value is True
    assert parsed.timestamp_annotations[0].value.timestamp() == 1700000000.25
    assert parsed.term_annotations[0].value == "GO:0000070"
    assert len(parsed.xml_annotations[0].value.any_elements) == 1
    assert [r.id for r in parsed.list_annotations[0].annotation_refs] == ["Annotation:100", "Annotation:104"]
    assert [r.id for r in next(a for a in parsed.comment_annotations if a.id == "Annotation:111").annotation_refs] \
        == ["Annotation:101"]


def test_export_shapes_parse_back():
    roi = ome_types.from_xml(export().decode("utf-8")).rois[0]
    assert (roi.id, roi.name, roi.description) == ("ROI:200", "nucleus", "the nucleus")
    shapes = {s.id: s for s in roi.union}
    assert len(shapes) == 8
    rectangle = shapes["Shape:201"]
    assert (rectangle.x, rectangle.y, rectangle.width, rectangle.height) == (1, 2, 30, 40)
    assert rectangle.transform.a12 == 20.0
    assert [r.id for r in rectangle.annotation_refs] == ["Annotation:105"]
    assert (shapes["Shape:202"].radius_x, shapes["Shape:202"].radius_y) == (7, 8)
    assert shapes["Shape:204"].marker_end.value == "Arrow"
    assert shapes["Shape:205"].points == "1,2 3,4 5,6"
    assert shapes["Shape:207"].text == "mitotic cell"
    assert shapes["Shape:207"].font_size_unit.value == "pt"
    assert shapes["Shape:208"].bin_data.value == b"\xff\x0f"


def test_export_containers_hold_only_this_image():
    parsed = ome_types.from_xml(export().decode("utf-8"))
    assert [r.id for r in parsed.datasets[0].image_refs] == ["Image:12"]
    wells = parsed.plates[0].wells
    assert [w.id for w in wells] == ["Well:410"]
    assert [(s.id, s.index, s.image_ref.id) for s in wells[0].well_samples] == [("WellSample:411", 0, "Image:12")]
    assert [r.id for r in parsed.plates[0].plate_acquisitions[0].well_sample_refs] == ["WellSample:411"]


def test_export_includes_annotations_reachable_from_image_only():
    annotations = every_annotation()
    annotations[999] = mr.Annotation(999, "TagAnnotation", value="unrelated")
    ids = {a.id for a in ome_types.from_xml(export(annotations=annotations).decode("utf-8")).structured_annotations}
    assert "Annotation:999" not in ids
    # 105 and 106 are linked from a shape and a channel, not from the image.
    assert {"Annotation:105", "Annotation:106"} <= ids


def test_export_leaves_out_dangling_references(schema):
    image = rich_image(annotation_ids=(100, 555), roi_ids=(200, 201))
    rois = [mr.Roi(200, shapes=every_shape()[:1]), mr.Roi(201, "no shapes")]
    data = export(image, {100: every_annotation()[100]}, rois, experimenters=[], groups=[])
    assert errors(schema, data) == []
    parsed = ome_types.from_xml(data.decode("utf-8"))
    assert [r.id for r in parsed.images[0].annotation_refs] == ["Annotation:100"]
    assert [r.id for r in parsed.images[0].roi_refs] == ["ROI:200"]
    # Referenced people that were not given appear by ID.
    assert [e.id for e in parsed.experimenters] == ["Experimenter:2"]


def test_values_outside_schema_are_left_out(schema):
    channel = mr.Channel(50, 0, "GFP", illumination="Sunlight", light_source_settings=mr.LightSourceSettings(4, 2.0),
                         pinhole_size=Q(1, "furlong"), samples_per_pixel=0)
    pixels = mr.Pixels(40, "XYZCT", "uint8", 0, 4, 1, 1, 1, physical_size_x=Q(-1, "µm"))
    image = rich_image(pixels=pixels, channels=(channel,), planes=(mr.Plane(-1, 0, 0),))
    data = export(image)
    assert errors(schema, data) == []
    parsed = ome_types.from_xml(data.decode("utf-8")).images[0]
    assert parsed.pixels.size_x == 1
    assert parsed.pixels.physical_size_x is None
    assert parsed.pixels.planes == []
    parsed_channel = parsed.pixels.channels[0]
    assert parsed_channel.illumination_type.value == "Other"
    assert parsed_channel.light_source_settings.attenuation is None
    assert parsed_channel.pinhole_size is None
    assert parsed_channel.samples_per_pixel is None


def test_export_without_instrument_or_pixels_is_valid(schema):
    image = mr.ImageMetadata(7, "bare", objective_settings=mr.ObjectiveSettings(2),
                             channels=(mr.Channel(1, 0, detector_settings=mr.DetectorSettings(3)),))
    data = omexml.export_document(image, {})
    assert errors(schema, data) == []
    parsed = ome_types.from_xml(data.decode("utf-8")).images[0]
    assert parsed.objective_settings is None
    assert parsed.pixels.channels[0].detector_settings is None


def test_image_element_equals_export_image():
    def strip(element):
        for node in element.iter():
            if node.text is not None and not node.text.strip() and len(node):
                node.text = None
            if node.tail is not None and not node.tail.strip():
                node.tail = None
        return ET.tostring(element)

    bare = ET.fromstring(omexml.image_element(rich_image()))
    exported = ET.fromstring(export()).find(NS + "Image")
    assert strip(bare) == strip(exported)


def test_extreme_numbers_and_times_stay_valid(schema):
    annotations = {
        1: mr.Annotation(1, "DoubleAnnotation", value=float("nan")),
        2: mr.Annotation(2, "DoubleAnnotation", value=float("-inf")),
        3: mr.Annotation(3, "TimestampAnnotation", value=1e15),
        4: mr.Annotation(4, "LongAnnotation", value=-(2 ** 63)),
    }
    image = mr.ImageMetadata(1, "x", annotation_ids=(1, 2, 3, 4), acquisition_date=-1e13)
    data = omexml.export_document(image, annotations)
    assert errors(schema, data) == []
    root = ET.fromstring(data)
    values = {a.get("ID"): a.find(NS + "Value").text for a in root.find(NS + "StructuredAnnotations")}
    assert values == {"Annotation:1": "NaN", "Annotation:2": "-INF", "Annotation:3": "1970-01-01T00:00:00Z",
                      "Annotation:4": str(-(2 ** 63))}
    assert root.find(f"{NS}Image/{NS}AcquisitionDate") is None
