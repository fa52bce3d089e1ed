"""The namespace: safe names, fileset layout and link targets."""

import posixpath

import pytest
import trio

from omerofs import records, tree
from omerofs.blocks import BlockCache
from omerofs.catalog import Catalog
from omerofs.errors import ServerUnavailable


def make_file(file_id, name, path, size=10, repo="repo-uuid"):
    return records.OriginalFile(id=file_id, name=name, path=path, size=size, mtime=1.0, repo_uuid=repo)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "nul\x00byte", "/", "x" * 300, "é" * 200,
                                  "long" * 80 + ".ome.tiff"])
def test_safe_name_is_one_valid_component(name):
    safe = tree.safe_name(name)
    assert safe not in ("", ".", "..")
    assert "/" not in safe
    assert "\x00" not in safe
    assert len(safe.encode("utf-8", "surrogateescape")) <= tree.NAME_MAX


def test_safe_name_keeps_ordinary_names():
    assert tree.safe_name("Zellkern Übersicht µm.tif") == "Zellkern Übersicht µm.tif"


def test_safe_name_keeps_long_names_distinct_and_extension():
    first = tree.safe_name("a" * 300 + "1.tif")
    second = tree.safe_name("a" * 300 + "2.tif")
    assert first != second
    assert first.endswith(".tif")
    assert tree.safe_name("a" * 300 + "1.tif") == first


def test_path_components_drop_traversal():
    components = tree.path_components("user_2/../x/./y/")
    assert components == ("user_2", tree.safe_name("..", directory=True), "x", "y")
    assert components[1].startswith("_..")


@pytest.mark.parametrize("changed, unchanged", [("a/b", "a_b"), ("a\x00b.tif", "a_b.tif"), ("..", "_.."),
                                                 (".", "_."), ("", "_")])
def test_safe_name_keeps_cleaned_names_distinct(changed, unchanged):
    assert tree.safe_name(unchanged) == unchanged
    assert tree.safe_name(changed) != unchanged


def test_safe_name_of_directory_differs_from_file():
    assert tree.safe_name("..", directory=True) != tree.safe_name("..")
    assert tree.safe_name("data", directory=True) == tree.safe_name("data") == "data"


def test_safe_name_hashes_names_that_look_changed():
    changed = tree.safe_name("a/b.tif")
    assert changed.endswith(".tif")
    # A server name spelled like another name's safe form must not take its place.
    assert tree.safe_name(changed) != changed


def test_layout_of_flat_fileset_has_no_subdirectories():
    fileset = records.Fileset(
        1, (make_file(10, "a.ics", "u/2026/"), make_file(11, "a.ids", "u/2026/")), (5,),
        records.UsedFiles(frozenset({11}), frozenset({10})))
    layout = tree.fileset_layout(fileset)
    assert [(e.role, e.sub, e.name) for e in layout] == [("Companion", (), "a.ics"), ("Binary", (), "a.ids")]


def test_layout_keeps_subfolders_below_shared_prefix():
    fileset = records.Fileset(
        2, (make_file(20, "x.vsi", "u/f/"), make_file(21, "frame_t_0.ets", "u/f/_x_/stack1/")), (6,),
        records.UsedFiles(frozenset({20, 21}), frozenset()))
    layout = tree.fileset_layout(fileset)
    assert [(e.sub, e.name) for e in layout] == [((), "x.vsi"), (("_x_", "stack1"), "frame_t_0.ets")]


def test_layout_renames_colliding_names():
    fileset = records.Fileset(
        3, (make_file(30, "a/b", "u/"), make_file(31, "a_b", "u/")), (7,),
        records.UsedFiles(frozenset({30, 31}), frozenset()))
    names = [e.name for e in tree.fileset_layout(fileset)]
    assert len(set(names)) == 2


class FakeConnection:
    """Stands in for remote.Connection with a fixed repository."""

    def __init__(self, images, filesets, repositories):
        self._images = images
        self._filesets = filesets
        self._repositories = repositories
        self.calls = []

    def image_ids(self, offset, limit):
        self.calls.append("image_ids")
        return sorted(self._images)[offset:offset + limit]

    def images(self, ids):
        self.calls.append("images")
        return {i: self._images[i] for i in ids if i in self._images}

    def filesets(self, ids):
        self.calls.append("filesets")
        return {i: self._filesets[i] for i in ids if i in self._filesets}

    def repositories(self):
        self.calls.append("repositories")
        return self._repositories

    def original_files(self, ids):
        return {}


def resolve(root_dir, link_path, target):
    """Resolve a relative link target against the link's directory, inside the mount."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))


def test_image_links_resolve_into_one_repository_directory(tmp_path):
    files = (make_file(10, "a.ics", "user_2/2026/"), make_file(11, "a.ids", "user_2/2026/"),
             make_file(12, "deep.ets", "user_2/2026/_a_/stack1/"))
    fileset = records.Fileset(4, files, (5,), records.UsedFiles(frozenset({11, 12}), frozenset({10})))
    connection = FakeConnection({5: records.Image(5, "a", 4)}, {4: fileset},
                                [records.Repository(99, "ManagedRepository", "repo-uuid")])

    async def walk():
        catalog = Catalog(connection, BlockCache(tmp_path), "server-uuid")
        root = tree.Root(catalog)
        image = await (await root.lookup("Image")).lookup("5")
        binary = await image.lookup("Binary")
        link = await binary.lookup("a.ids")
        first_hop = resolve("", "Image/5/Binary/a.ids", link.target)
        assert first_hop == "Fileset/4/Binary/a.ids"

        fileset_binary = await (await (await root.lookup("Fileset")).lookup("4")).lookup("Binary")
        second = await fileset_binary.lookup("a.ids")
        final = resolve("", first_hop, second.target)
        assert final == "Repository/99/user_2/2026/a.ids"

        deep = await (await (await binary.lookup("_a_")).lookup("stack1")).lookup("deep.ets")
        deep_hop = resolve("", "Image/5/Binary/_a_/stack1/deep.ets", deep.target)
        assert deep_hop == "Fileset/4/Binary/_a_/stack1/deep.ets"

        repository = await (await root.lookup("Repository")).lookup("99")
        directory = await (await repository.lookup("user_2")).lookup("2026")
        assert set((await directory.children()).keys()) == {"a.ics", "a.ids", "_a_"}

        companion = await image.lookup("Companion")
        assert set((await companion.children()).keys()) == {"a.ics"}

    trio.run(walk)


def test_unknown_and_malformed_ids_are_not_found(tmp_path):
    connection = FakeConnection({}, {}, [])

    async def walk():
        root = tree.Root(Catalog(connection, BlockCache(tmp_path), "server-uuid"))
        images = await root.lookup("Image")
        assert await images.lookup("7") is None
        assert await images.lookup("007") is None
        assert await images.lookup("x") is None
        # Unicode digits: "²" is a digit to str.isdigit but not to int().
        assert await images.lookup("²") is None
        assert await images.lookup("١") is None
        # Beyond a Java long, omero-py cannot even send the ID.
        assert await images.lookup("9223372036854775808") is None

    trio.run(walk)


def test_image_without_fileset_has_empty_file_directories(tmp_path):
    connection = FakeConnection({8: records.Image(8, "old", None)}, {}, [])

    async def walk():
        root = tree.Root(Catalog(connection, BlockCache(tmp_path), "server-uuid"))
        image = await (await root.lookup("Image")).lookup("8")
        children = await image.children()
        assert "Fileset" not in children
        assert await children["Binary"].children() == {}
        assert await children["Companion"].children() == {}

    trio.run(walk)


def test_listing_order_accepts_unicode_digit_names():
    from omerofs.fs import _listing_order

    names = ["²", "10", "9", "١٢", "a"]
    assert sorted(names, key=_listing_order) == ["9", "10", "a", "²", "١٢"]


def test_links_of_names_that_clean_up_alike_reach_their_own_files(tmp_path):
    names = {40: "a\x00b", 41: "a_b", 42: "..", 43: "_.."}
    files = tuple(make_file(file_id, name, "user_2/x/") for file_id, name in names.items())
    fileset = records.Fileset(9, files, (5,), records.UsedFiles(frozenset(names), frozenset()))
    connection = FakeConnection({5: records.Image(5, "a", 9)}, {9: fileset},
                                [records.Repository(99, "ManagedRepository", "repo-uuid")])

    async def walk():
        root = tree.Root(Catalog(connection, BlockCache(tmp_path), "server-uuid"))
        binary = await (await (await root.lookup("Fileset")).lookup("9")).lookup("Binary")
        reached = {}
        for name, link in (await binary.children()).items():
            node = root
            for part in resolve("", f"Fileset/9/Binary/{name}", link.target).split("/"):
                node = await node.lookup(part)
            reached[name] = node.file.id
        return reached

    reached = trio.run(walk)
    assert sorted(reached.values()) == sorted(names)
    for name, file_id in reached.items():
        assert name == tree.safe_name(names[file_id])


class UnreachableConnection(FakeConnection):
    def images(self, ids):
        raise ServerUnavailable("Reading images: cannot reach the server (ConnectTimeoutException)")


def test_unreachable_server_is_an_error_not_a_missing_image(tmp_path):
    connection = UnreachableConnection({5: records.Image(5, "a", None)}, {}, [])

    async def walk():
        root = tree.Root(Catalog(connection, BlockCache(tmp_path), "server-uuid"))
        with pytest.raises(ServerUnavailable):
            await (await root.lookup("Image")).lookup("5")

    trio.run(walk)


def test_unreachable_server_serves_persisted_image(tmp_path):
    image = records.Image(5, "a", None)

    async def walk(connection):
        root = tree.Root(Catalog(connection, BlockCache(tmp_path), "server-uuid"))
        return await (await root.lookup("Image")).lookup("5")

    assert trio.run(walk, FakeConnection({5: image}, {}, [])) is not None
    found = trio.run(walk, UnreachableConnection({}, {}, []))
    assert found.image == image


def test_link_too_long_for_the_kernel_is_the_file_itself(tmp_path):
    deep = "/".join(f"{i:03d}" + "d" * 150 for i in range(30)) + "/"
    files = (make_file(50, "a.tif", "u/" + deep), make_file(51, "b.tif", "u/" + deep))
    fileset = records.Fileset(10, files, (5,), records.UsedFiles(frozenset({50, 51}), frozenset()))
    connection = FakeConnection({5: records.Image(5, "a", 10)}, {10: fileset},
                                [records.Repository(99, "ManagedRepository", "repo-uuid")])

    async def walk():
        root = tree.Root(Catalog(connection, BlockCache(tmp_path), "server-uuid"))
        image_binary = await (await (await root.lookup("Image")).lookup("5")).lookup("Binary")
        fileset_binary = await (await (await root.lookup("Fileset")).lookup("10")).lookup("Binary")
        return await image_binary.children(), await fileset_binary.children()

    image_links, fileset_entries = trio.run(walk)
    assert isinstance(image_links["a.tif"], tree.Symlink)
    assert isinstance(fileset_entries["a.tif"], tree.File)
    assert fileset_entries["a.tif"].file.id == 50
    for node in [*image_links.values(), *fileset_entries.values()]:
        if isinstance(node, tree.Symlink):
            assert len(node.target.encode()) <= tree.SYMLINK_MAX
