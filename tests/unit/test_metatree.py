"""The metadata namespace over a stand-in for the server's queries: links, documents, batching."""

import posixpath
import xml.etree.ElementTree as ET
from collections import Counter

import pytest
import trio

from omerofs import metarecords as mr
from omerofs import omexml, records, tree
from omerofs.blocks import BlockCache
from omerofs.catalog import Catalog
from omerofs.errors import ServerUnavailable
from omerofs.metacatalog import MetaCatalog

NS = "{" + omexml.OME_NAMESPACE + "}"
DATASET_ID = 1
IMAGE_COUNT = 1000


class FakeConnection:
    """The image records that Catalog itself reads."""

    def __init__(self):
        self.image_calls = 0

    def images(self, ids):
        self.image_calls += 1
        return {i: records.Image(i, f"image {i}", None) for i in ids if 1 <= i <= IMAGE_COUNT}


class FakeQueries:
    """Stands in for ``remote.metadata``: a 1,000-image dataset whose images carry two tags each."""

    def __init__(self):
        self.calls = Counter()
        self.tags = {
            10_000 + i: mr.Annotation(10_000 + i, "TagAnnotation", value="anaphase" if i % 2 else "metaphase",
                                      owner_id=2)
            for i in range(1, IMAGE_COUNT + 1)}
        self.tags[5] = mr.Annotation(5, "FileAnnotation", file=records.OriginalFile(
            77, "table.csv", "p/", 12, 1.0, "ab" * 20, records.SHA1), annotation_ids=(6,))
        self.tags[6] = mr.Annotation(6, "CommentAnnotation", value="on the file")
        self.links = {i: (10_000 + i, 5) for i in range(1, IMAGE_COUNT + 1)}

    def linked_annotations(self, connection, kind, parent_ids):
        self.calls["linked_annotations"] += 1
        assert kind == "Image"
        links = {i: self.links[i] for i in parent_ids if i in self.links}
        annotation_ids = {a for ids in links.values() for a in ids}
        return links, {a: self.tags[a] for a in annotation_ids}, {2: mr.Experimenter(2, "user2")}

    def annotations(self, connection, annotation_ids):
        self.calls["annotations"] += 1
        return {a: self.tags[a] for a in annotation_ids if a in self.tags}

    def image_rois(self, connection, image_ids):
        self.calls["image_rois"] += 1
        shape = mr.Shape(300, "Point", x=1, y=2, annotation_ids=(6,))
        return {200: mr.Roi(200, "spot", image_id=1, shapes=(shape,))} if 1 in image_ids else {}

    def rois(self, connection, roi_ids):
        self.calls["rois"] += 1
        return self.image_rois(connection, [1])

    def image_metadata(self, connection, image_ids):
        self.calls["image_metadata"] += 1
        found = {i: mr.ImageMetadata(i, f"image {i}", owner_id=2, group_id=3,
                                     pixels=mr.Pixels(i, "XYZCT", "uint8", 4, 4, 1, 1, 1), dataset_ids=(DATASET_ID,),
                                     roi_ids=(200,) if i == 1 else ())
                 for i in image_ids if 1 <= i <= IMAGE_COUNT}
        return found, {2: mr.Experimenter(2, "user2")}, {3: mr.ExperimenterGroup(3, "group3")}

    def experimenters(self, connection, ids):
        self.calls["experimenters"] += 1
        return {i: mr.Experimenter(i, f"user{i}") for i in ids}

    def groups(self, connection, ids):
        self.calls["groups"] += 1
        return {i: mr.ExperimenterGroup(i, f"group{i}") for i in ids}

    def datasets(self, connection, ids):
        self.calls["datasets"] += 1
        image_ids = tuple(range(1, IMAGE_COUNT + 1))
        return {i: mr.Dataset(i, "big", image_ids=image_ids) for i in ids if i == DATASET_ID}

    def projects(self, connection, ids):
        return {i: mr.Project(i, "p", dataset_ids=(DATASET_ID,)) for i in ids if i == 7}

    def screens(self, connection, ids):
        return {}

    def plates(self, connection, ids):
        self.calls["plates"] += 1
        well = mr.Well(41, 0, 0, samples=(mr.WellSample(42, 0, 3),))
        return {i: mr.Plate(i, "plate", wells=(well,)) for i in ids if i == 40}

    def object_ids(self, connection, kind, offset, limit):
        self.calls["object_ids"] += 1
        return {"Project": [7], "Dataset": [DATASET_ID], "Screen": [], "Plate": [40]}[kind][offset:offset + limit]


def setup(tmp_path, queries=None):
    catalog = Catalog(FakeConnection(), BlockCache(tmp_path), "server-uuid")
    queries = queries or FakeQueries()
    MetaCatalog.of(catalog, queries)
    return tree.Root(catalog), queries


async def walk(root, path: str):
    node = root
    for name in path.split("/"):
        node = await node.lookup(name)
        assert node is not None, f"{path}: {name} not found"
    return node


def resolve(link_path: str, target: str) -> str:
    return posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))


def test_dataset_annotation_listing_is_batched(tmp_path):
    root, queries = setup(tmp_path)

    async def main():
        images = await walk(root, f"Dataset/{DATASET_ID}/Image")
        image_links = await images.children()
        assert len(image_links) == IMAGE_COUNT
        tagged = []
        for name, link in image_links.items():
            image_path = resolve(f"Dataset/{DATASET_ID}/Image/{name}", link.target)
            annotations = await (await walk(root, image_path)).lookup("Annotation")
            for annotation_name, annotation_link in (await annotations.children()).items():
                target = resolve(f"{image_path}/Annotation/{annotation_name}", annotation_link.target)
                metadata = await walk(root, f"{target}/Metadata")
                for document in (await metadata.children()).values():
                    line = document.content.decode()
                    if line.startswith("<Tag") and "<Value>anaphase<" in line:
                        tagged.append(int(image_path.split("/")[1]))
        assert tagged == [i for i in range(1, IMAGE_COUNT + 1) if i % 2]

    trio.run(main)
    assert queries.calls["linked_annotations"] == 1
    assert queries.calls["annotations"] == 0
    assert root.catalog.connection.image_calls == 1


def test_dataset_exports_cost_one_batch_per_kind(tmp_path):
    root, queries = setup(tmp_path)

    async def main():
        images = await walk(root, f"Dataset/{DATASET_ID}/Image")
        for name in await images.children():
            export = await walk(root, f"Image/{name}/Export/image-{name}.ome.xml")
            assert f'<Image ID="Image:{name}"'.encode() in export.content

    trio.run(main)
    assert queries.calls["image_metadata"] == 1
    assert queries.calls["linked_annotations"] == 1
    assert queries.calls["image_rois"] == 1
    assert queries.calls["datasets"] == 1
    # Owners and groups came with the images and annotations.
    assert queries.calls["experimenters"] == 0
    assert queries.calls["groups"] == 0


def test_annotation_listing_in_reverse_is_batched(tmp_path):
    # bash expands Image/*/Annotation/* from the last directory to the first.
    root, queries = setup(tmp_path)

    async def main():
        images = await walk(root, f"Dataset/{DATASET_ID}/Image")
        image_links = await images.children()
        for name in reversed(list(image_links)):
            image_path = resolve(f"Dataset/{DATASET_ID}/Image/{name}", image_links[name].target)
            annotations = await (await walk(root, image_path)).lookup("Annotation")
            assert len(await annotations.children()) == 2

    trio.run(main)
    assert queries.calls["linked_annotations"] == 1


def test_links_resolve_to_object_directories(tmp_path):
    root, _ = setup(tmp_path)

    async def main():
        link = await walk(root, "Image/1/Annotation/5")
        assert resolve("Image/1/Annotation/5", link.target) == "Annotation/5"
        link = await walk(root, "Annotation/5/Annotation/6")
        assert resolve("Annotation/5/Annotation/6", link.target) == "Annotation/6"
        link = await walk(root, "Image/1/Roi/200")
        assert resolve("Image/1/Roi/200", link.target) == "Roi/200"
        link = await walk(root, "Roi/200/Annotation")
        assert await link.children() == {}
        link = await walk(root, "Project/7/Dataset/1")
        assert resolve("Project/7/Dataset/1", link.target) == "Dataset/1"
        link = await walk(root, "Plate/40/Well/41/Image/3")
        assert resolve("Plate/40/Well/41/Image/3", link.target) == "Image/3"

    trio.run(main)


def test_container_lists_show_readable_objects(tmp_path):
    root, _ = setup(tmp_path)

    async def main():
        assert list(await (await root.lookup("Project")).children()) == ["7"]
        assert list(await (await root.lookup("Plate")).children()) == ["40"]
        assert await (await root.lookup("Screen")).children() == {}

    trio.run(main)


def test_document_size_matches_content(tmp_path):
    root, _ = setup(tmp_path)

    async def main():
        document = await walk(root, "Image/1/Metadata/image-1.ome.xml")
        assert isinstance(document, tree.Document)
        assert document.attributes().size == len(document.content)
        assert document.attributes().kind == "file"
        assert document.content.count(b"\n") == 1
        assert ET.fromstring(document.content).get("ID") == "Image:1"

    trio.run(main)


def test_rendered_document_is_reused(tmp_path):
    root, _ = setup(tmp_path)

    async def main():
        first = await walk(root, "Annotation/5/Metadata/annotation-5.ome.xml")
        second = await walk(root, "Annotation/5/Metadata/annotation-5.ome.xml")
        assert first.content is second.content

    trio.run(main)


def test_file_annotation_shows_attached_file(tmp_path):
    root, _ = setup(tmp_path)

    async def main():
        node = await walk(root, "Annotation/5/File/table.csv")
        assert isinstance(node, tree.File)
        assert node.file.id == 77
        document = await walk(root, "Annotation/5/Metadata/annotation-5.ome.xml")
        external = ET.fromstring(document.content).find(f"{NS}BinaryFile/{NS}External")
        href = external.get("href")
        assert resolve("Annotation/5/Metadata/annotation-5.ome.xml", href) == "Annotation/5/File/table.csv"

    trio.run(main)


def test_export_gathers_linked_objects(tmp_path):
    root, _ = setup(tmp_path)

    async def main():
        document = await walk(root, "Image/1/Export/image-1.ome.xml")
        assert document.attributes().size == len(document.content)
        export = ET.fromstring(document.content)
        annotation_ids = {e.get("ID") for e in export.find(NS + "StructuredAnnotations")}
        # 10001 and 5 are linked to the image, 6 to the file annotation and to a shape.
        assert annotation_ids == {"Annotation:10001", "Annotation:5", "Annotation:6"}
        assert [r.get("ID") for r in export.iter(NS + "ROI")] == ["ROI:200"]
        assert [d.get("ID") for d in export.iter(NS + "Dataset")] == [f"Dataset:{DATASET_ID}"]
        assert [e.get("UserName") for e in export.iter(NS + "Experimenter")] == ["user2"]

    trio.run(main)


def test_unknown_ids_are_not_found(tmp_path):
    root, _ = setup(tmp_path)

    async def main():
        assert await (await root.lookup("Annotation")).lookup("999999") is None
        assert await (await root.lookup("Annotation")).lookup("0") is None
        assert await (await root.lookup("Roi")).lookup("x") is None
        assert await (await root.lookup("Dataset")).lookup("3") is None
        metadata = await walk(root, "Image/1/Metadata")
        assert await metadata.lookup("image-2.ome.xml") is None

    trio.run(main)


def test_offline_mount_serves_persisted_records(tmp_path):
    root, _ = setup(tmp_path)

    async def load():
        await walk(root, "Image/1/Annotation")
        assert await (await walk(root, "Image/1/Annotation")).children()

    trio.run(load)

    offline_catalog = Catalog(None, BlockCache(tmp_path), "server-uuid")
    offline_root = tree.Root(offline_catalog)

    async def offline():
        annotation = await walk(offline_root, "Annotation/10001")
        assert annotation.annotation.value == "anaphase"
        assert await (await walk(offline_root, "Annotation")).lookup("424242") is None

    trio.run(offline)


def test_zero_ttl_still_serves_loaded_records(tmp_path):
    catalog = Catalog(FakeConnection(), BlockCache(tmp_path), "server-uuid", ttl=0.0)
    MetaCatalog.of(catalog, FakeQueries())
    root = tree.Root(catalog)

    async def main():
        annotations = await (await walk(root, "Image/1/Annotation")).children()
        assert set(annotations) == {"10001", "5"}
        assert await walk(root, "Image/1/Metadata/image-1.ome.xml")
        assert await walk(root, "Annotation/5")

    trio.run(main)


class UnreachableQueries(FakeQueries):
    def linked_annotations(self, connection, kind, parent_ids):
        raise ServerUnavailable("Reading annotations: cannot reach the server (ConnectTimeoutException)")


def test_unreachable_server_is_an_error_not_an_empty_listing(tmp_path):
    root, _ = setup(tmp_path, UnreachableQueries())

    async def main():
        annotations = await walk(root, "Image/1/Annotation")
        with pytest.raises(ServerUnavailable):
            await annotations.children()

    trio.run(main)


def test_unreachable_server_serves_persisted_records(tmp_path):
    root, _ = setup(tmp_path)
    trio.run(lambda: walk(root, "Image/1/Annotation/5"))
    catalog = Catalog(FakeConnection(), BlockCache(tmp_path), "server-uuid", ttl=0.0)
    MetaCatalog.of(catalog, UnreachableQueries())

    async def main():
        annotations = await (await walk(tree.Root(catalog), "Image/1/Annotation")).children()
        assert set(annotations) == {"10001", "5"}

    trio.run(main)
