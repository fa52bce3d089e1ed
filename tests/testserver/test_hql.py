"""HQL over the sample repository, without an Ice server.

The sample manifest (omerofs/testserver/sample) has 22 images. Images 1-21 are
in group "lab", and image 22 is in alice's private group and has no fileset.
Images 7, 8 and 12 are in a plate. Dataset 1 contains 11 images, dataset 2 six.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import omero
import omero.clients  # noqa: F401  (loads every omero-py module, ParametersI included)
from omero.rtypes import rlist, rlong, robject, rstring, rtime
from omero.sys import ParametersI

from omerofs.testserver import hql_parser
from omerofs.testserver.store import Repository, Viewer

SAMPLE = Path(__file__).resolve().parents[2] / "omerofs" / "testserver" / "sample"

ALICE = Viewer(2, -1)
BOB = Viewer(3, -1)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Repository:
    sidecar = tmp_path_factory.mktemp("hashes") / "hashes.json"
    return Repository.load(SAMPLE, hash_sidecar=sidecar)


def ids(params=None, **named) -> ParametersI:
    params = params or ParametersI()
    for name, values in named.items():
        params.map[name] = rlist([rlong(v) for v in values])
    return params


def values(rows) -> list[list]:
    """Unwrap projection rows into plain Python values (RObject -> the object's id)."""
    unwrapped = []
    for row in rows:
        plain = []
        for cell in row:
            if isinstance(cell, omero.RObject):
                plain.append(("object", cell.getValue().getId().getValue()))
            elif cell is None:
                plain.append(None)
            else:
                plain.append(cell.getValue())
        unwrapped.append(plain)
    return unwrapped


def query_error(repository: Repository, text: str, params=None) -> str:
    with pytest.raises(omero.QueryException) as raised:
        repository.projection(text, params, ALICE)
    return raised.value.message


# The queries the omerofs client sends


def test_client_image_ids_paged(repository):
    params = ParametersI().page(5, 4)
    rows = repository.projection("select i.id from Image i order by i.id", params, ALICE)
    assert values(rows) == [[6], [7], [8], [9]]


def test_client_image_ids_last_page_short(repository):
    params = ParametersI().page(20, 10)
    rows = repository.projection("select i.id from Image i order by i.id", params, ALICE)
    assert values(rows) == [[21], [22]]


def test_client_images_with_fileset_left_join(repository):
    rows = repository.projection(
        "select i.id, i.name, f.id from Image i left outer join i.fileset f where i.id in (:ids)",
        ids(ids=[1, 22]), ALICE,
    )
    assert sorted(values(rows)) == [[1, "chromo3d.ics", 1], [22, "toxo.dv (archived 2012)", None]]


def test_client_dataset_children(repository):
    rows = repository.projection(
        "select i.id from DatasetImageLink l join l.child i where l.parent.id in (:ids)",
        ids(ids=[2]), ALICE,
    )
    assert sorted(v[0] for v in values(rows)) == [6, 9, 10, 13, 20, 21]


def test_client_project_children(repository):
    rows = repository.projection(
        "select d.id from ProjectDatasetLink l join l.child d where l.parent.id in (:ids)",
        ids(ids=[1]), ALICE,
    )
    assert sorted(v[0] for v in values(rows)) == [1, 2]


def test_client_screen_children(repository):
    rows = repository.projection(
        "select l.child.id from ScreenPlateLink l where l.parent.id in (:ids)", ids(ids=[1]), ALICE
    )
    assert values(rows) == [[1]]


def test_client_plate_images(repository):
    rows = repository.projection(
        "select ws.image.id from WellSample ws where ws.well.plate.id in (:ids)", ids(ids=[1]), ALICE
    )
    assert sorted(v[0] for v in values(rows)) == [7, 8, 12]


def test_client_fileset_entries_fetched(repository):
    entries = repository.query(
        "select fse from FilesetEntry fse join fetch fse.originalFile f join fetch fse.fileset "
        "where fse.fileset.id in (:ids)",
        ids(ids=[3]), ALICE,
    )
    assert len(entries) == 2
    names = sorted(entry.getOriginalFile().getName().getValue() for entry in entries)
    assert names == ["frame_t_0.ets", "vsi-ets-test-jpg2k.vsi"]
    for entry in entries:
        assert entry.getOriginalFile().isLoaded()
        assert entry.getFileset().isLoaded()
        assert entry.getFileset().getTemplatePrefix().getValue() == "alice_2/2024-05/01/12-10-00.000/"
        assert not entry.getFileset().isUsedFilesLoaded()


def test_client_image_fileset_ids(repository):
    rows = repository.projection(
        "select i.id, i.fileset.id from Image i where i.fileset.id in (:ids)", ids(ids=[12, 13]), ALICE
    )
    assert sorted(values(rows)) == [[14, 12], [15, 12], [16, 12], [17, 13], [18, 13], [19, 13]]


def test_client_original_files_by_id(repository):
    files = repository.query("select o from OriginalFile o where o.id in (:ids)", ids(ids=[101, 302]), ALICE)
    assert sorted(f.getId().getValue() for f in files) == [101, 302]
    ets = next(f for f in files if f.getId().getValue() == 302)
    assert ets.getPath().getValue() == "alice_2/2024-05/01/12-10-00.000/_vsi-ets-test-jpg2k_/stack1/"
    assert ets.getHasher().getId() is not None
    assert not ets.getHasher().isLoaded()


def test_client_repository_descriptions(repository):
    files = repository.query("select o from OriginalFile o where o.mimetype = 'Repository'", None, ALICE)
    assert sorted(f.getName().getValue() for f in files) == ["ManagedRepository", "OMERO"]


def test_client_count_images(repository):
    assert values(repository.projection("select count(i.id) from Image i", None, ALICE)) == [[22]]
    assert values(repository.projection("select count(i.id) from Image i", None, BOB)) == [[21]]


# What omero-py's BlitzGateway and listFiles send


def test_gateway_object_lookup_loads_owner(repository):
    image = repository.query_one(
        "select obj from Image obj join fetch obj.details.owner as owner "
        "left outer join fetch obj.details.externalInfo join fetch obj.details.creationEvent "
        "where obj.id in (:ids)",
        ids(ids=[10]), ALICE,
    )
    assert image.getName().getValue() == "toxo.dv"
    assert image.getDetails().getOwner().isLoaded()
    assert image.getDetails().getOwner().getOmeName().getValue() == "alice"
    assert image.getDetails().getCreationEvent().isLoaded()
    assert not image.getDetails().getGroup().isLoaded()
    assert image.getDetails().getExternalInfo() is None
    assert not image.getFileset().isLoaded()
    assert image.getFileset().getId().getValue() == 8
    assert not image.isPixelsLoaded()


def test_list_files_query_returns_entries(repository):
    params = ParametersI().addId(4)
    entries = repository.query(
        "select fse from FilesetEntry as fse join fetch fse.originalFile where fse.fileset.id=:id", params, ALICE
    )
    assert sorted(e.getOriginalFile().getName().getValue() for e in entries) == [
        "toxo.companion.ome", "toxo_C0.ome.tif", "toxo_C1.ome.tif",
    ]
    assert all(not e.getFileset().isLoaded() for e in entries)


def test_unfetched_collections_come_back_unloaded(repository):
    fileset = repository.query_one("select f from Fileset f where f.id = :id", ParametersI().addId(1), ALICE)
    assert fileset.isLoaded()
    assert not fileset.isUsedFilesLoaded()
    assert not fileset.isImagesLoaded()


def test_fetched_collection_holds_matching_elements(repository):
    dataset = repository.query_one(
        "select d from Dataset d left outer join fetch d.imageLinks l left outer join fetch l.child "
        "where d.id = :id",
        ParametersI().addId(2), ALICE,
    )
    assert dataset.isImageLinksLoaded()
    children = sorted(link.getChild().getId().getValue() for link in dataset.copyImageLinks())
    assert children == [6, 9, 10, 13, 20, 21]
    assert all(link.getChild().isLoaded() for link in dataset.copyImageLinks())
    assert all(link.getParent() is dataset for link in dataset.copyImageLinks())


def test_fetch_join_repeats_owner_per_row(repository):
    datasets = repository.query(
        "select d from Dataset d join fetch d.imageLinks where d.id = :id", ParametersI().addId(2), ALICE
    )
    assert len(datasets) == 6
    assert len({id(d) for d in datasets}) == 1


def test_distinct_collapses_fetch_rows(repository):
    datasets = repository.query(
        "select distinct d from Dataset d join fetch d.imageLinks where d.id = :id", ParametersI().addId(2), ALICE
    )
    assert len(datasets) == 1


def test_left_join_fetch_of_empty_collection_is_loaded(repository):
    image = repository.query_one(
        "select i from Image i left outer join fetch i.rois where i.id = :id", ParametersI().addId(2), ALICE
    )
    assert image.isRoisLoaded()
    assert image.sizeOfRois() == 0


def test_annotation_links_with_fetched_children(repository):
    links = repository.query(
        "select l from ImageAnnotationLink l join fetch l.child a join fetch l.details.owner "
        "left outer join fetch a.file where l.parent.id in (:ids) order by a.id",
        ids(ids=[10]), ALICE,
    )
    kinds = [type(link.getChild()).__name__ for link in links]
    assert kinds == ["TagAnnotationI", "CommentAnnotationI", "MapAnnotationI", "FileAnnotationI"]
    attachment = links[3].getChild()
    assert attachment.getFile().isLoaded()
    assert attachment.getFile().getName().getValue() == "measurements.csv"


# Syntax and names


def test_keywords_are_case_insensitive(repository):
    rows = repository.projection(
        "SELECT i.id FROM Image AS i WHERE i.id IN (:ids) AND NOT i.name LIKE 'x%' ORDER BY i.id DESC",
        ids(ids=[1, 2]), ALICE,
    )
    assert values(rows) == [[2], [1]]


def test_server_class_name_accepted(repository):
    rows = repository.projection("select i.id from ome.model.core.Image i where i.id = 1", None, ALICE)
    assert values(rows) == [[1]]


@pytest.mark.parametrize("name", ["ImageI", "omero.model.Image", "image", "Imagee"])
def test_client_class_names_rejected(repository, name):
    message = query_error(repository, f"select i.id from {name} i")
    assert name in message


def test_unknown_property_named(repository):
    message = query_error(repository, "select i.nam from Image i")
    assert "nam" in message
    assert "ome.model.core.Image" in message


def test_unknown_alias_named(repository):
    assert "'x'" in query_error(repository, "select x.id from Image i")


def test_syntax_error_names_token(repository):
    message = query_error(repository, "select i.id from Image i where i.id == 3")
    assert "'='" in message
    assert "column" in message


def test_unterminated_string_named(repository):
    assert "column" in query_error(repository, "select i.id from Image i where i.name = 'abc")


def test_missing_parameter_named(repository):
    assert ":ids" in query_error(repository, "select i.id from Image i where i.id in (:ids)")


def test_empty_in_list_rejected(repository):
    assert "empty" in query_error(repository, "select i.id from Image i where i.id in (:ids)", ids(ids=[]))


def test_collection_dereference_rejected(repository):
    message = query_error(repository, "select d.id from Dataset d where d.imageLinks.child.id = 1")
    assert "imageLinks" in message


def test_unknown_function_named(repository):
    assert "soundex" in query_error(repository, "select soundex(i.name) from Image i")


def test_fetch_without_owner_rejected(repository):
    message = query_error(repository, "select i.id from Image i join fetch i.fileset")
    assert "fetch" in message


def test_positional_parameter_rejected(repository):
    assert "named parameter" in query_error(repository, "select i.id from Image i where i.id = ?")


def test_parse_error_is_query_exception():
    with pytest.raises(omero.QueryException):
        hql_parser.parse("from")


# Conditions


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("i.id = 3", [3]),
        ("i.id <> 3 and i.id < 5", [1, 2, 4]),
        ("i.id != 3 and i.id < 5", [1, 2, 4]),
        ("i.id > 20", [21, 22]),
        ("i.id >= 21", [21, 22]),
        ("i.id <= 2", [1, 2]),
        ("i.id in (1, 3, 5)", [1, 3, 5]),
        ("i.id not in (1, 2) and i.id < 5", [3, 4]),
        ("i.id between 4 and 6", [4, 5, 6]),
        ("i.id not between 2 and 21", [1, 22]),
        ("i.fileset is null", [22]),
        ("i.fileset.id is null", [22]),
        ("i.acquisitionDate is not null and i.id < 7", [3, 6]),
        ("(i.id = 1 or i.id = 2) and not i.id = 2", [1]),
        ("i.id = 1 or i.id = 2 and i.id = 3", [1]),
        ("i.name like 'Leica%'", [14, 15, 16]),
        ("i.name like '%[macro image]'", [4]),
        ("i.name not like '%.%' ", []),
        ("lower(i.name) = 'toxo.dv'", [10]),
        ("i.name = 'Zellkern Übersicht µm.tif'", [21]),
        ("i.description = 'it''s not there'", []),
        ("i.series = 2", [16, 19]),
        ("i.fileset.templatePrefix like '%13-05%'", [21]),
        ("i.details.owner.omeName = 'bob'", [11]),
        ("i.details.group.name = 'alice-private'", [22]),
    ],
)
def test_where_conditions(repository, condition, expected):
    rows = repository.projection(f"select i.id from Image i where {condition} order by i.id", None, ALICE)
    assert [v[0] for v in values(rows)] == expected


def test_null_comparison_is_unknown(repository):
    rows = repository.projection("select i.id from Image i where not (i.description = 'x')", None, ALICE)
    described = {v[0] for v in values(rows)}
    assert 1 in described
    assert 22 not in described  # NULL description: neither equal nor not equal


def test_parameters_of_every_rtype(repository):
    params = ParametersI()
    params.map["name"] = rstring("toxo.dv")
    params.map["fileset"] = robject(omero.model.FilesetI(8, False))
    params.map["after"] = rtime(0)
    params.map["id"] = rlong(10)
    rows = repository.projection(
        "select i.id from Image i where i.name = :name and i.fileset = :fileset "
        "and i.details.creationEvent.time > :after and i.id = :id",
        params, ALICE,
    )
    assert values(rows) == [[10]]


def test_in_without_parentheses(repository):
    rows = repository.projection("select i.id from Image i where i.id in :ids order by i.id", ids(ids=[2, 1]), ALICE)
    assert values(rows) == [[1], [2]]


def test_implicit_join_drops_null_association(repository):
    rows = repository.projection("select i.id, i.fileset.templatePrefix from Image i", None, ALICE)
    assert 22 not in {v[0] for v in values(rows)}
    assert len(rows) == 21


def test_selected_association_is_inner_join(repository):
    rows = repository.projection("select i.fileset from Image i where i.id in (:ids)", ids(ids=[1, 22]), ALICE)
    assert values(rows) == [[("object", 1)]]


def test_unqualified_properties_of_single_entity(repository):
    rows = repository.projection("select id from Image where fileset is null", None, ALICE)
    assert values(rows) == [[22]]


def test_from_without_select_returns_entities(repository):
    images = repository.query("from Image where id = 3", None, ALICE)
    assert [i.getId().getValue() for i in images] == [3]


def test_class_property(repository):
    rows = repository.projection(
        "select a.id from Annotation a where a.class = TagAnnotation order by a.id", None, ALICE
    )
    assert [v[0] for v in values(rows)] == [1, 2, 3, 18]


def test_exists_subquery(repository):
    rows = repository.projection(
        "select i.id from Image i where not exists "
        "(select l from DatasetImageLink l where l.child = i) order by i.id",
        None, ALICE,
    )
    assert [v[0] for v in values(rows)] == [7, 8, 12]


def test_in_subquery(repository):
    rows = repository.projection(
        "select i.id from Image i where i.id in "
        "(select l.parent.id from ImageAnnotationLink l where l.child.textValue = 'anaphase') order by i.id",
        None, ALICE,
    )
    assert [v[0] for v in values(rows)] == [1, 3, 10]


# Projections, aggregates and ordering


def test_projection_types(repository):
    rows = repository.projection(
        "select i.id, i.name, i.acquisitionDate, i.series, p.sizeX, p.physicalSizeX.value, p.physicalSizeX.unit "
        "from Image i join i.pixels p where i.id = 3",
        None, ALICE,
    )
    row = rows[0]
    assert isinstance(row[0], omero.RLong)
    assert isinstance(row[1], omero.RString)
    assert isinstance(row[2], omero.RTime)
    assert isinstance(row[3], omero.RInt)
    assert isinstance(row[4], omero.RInt)
    assert values(rows) == [[3, "vsi-ets-test-jpg2k.vsi [001 C405, C488]", 1622473135000, 0, 1645,
                             0.10833333333333334, "MICROMETER"]]


def test_projection_wraps_entities(repository):
    rows = repository.projection("select i, f from Image i join i.fileset f where i.id = 1", None, ALICE)
    assert values(rows) == [[("object", 1), ("object", 1)]]
    image = rows[0][0].getValue()
    assert image.getFileset().isLoaded()


def test_aggregates(repository):
    rows = repository.projection(
        "select count(*), count(i.acquisitionDate), count(distinct i.fileset.id), min(i.id), max(i.id) from Image i",
        None, ALICE,
    )
    assert values(rows) == [[22, 8, 15, 1, 22]]


def test_count_of_empty_result(repository):
    rows = repository.projection("select count(i.id) from Image i where i.id < 0", None, ALICE)
    assert values(rows) == [[0]]


def test_group_by_having(repository):
    rows = repository.projection(
        "select i.fileset.id, count(i.id) from Image i group by i.fileset.id "
        "having count(i.id) > 1 order by i.fileset.id",
        None, ALICE,
    )
    assert values(rows) == [[3, 2], [6, 2], [12, 3], [13, 3]]


def test_distinct_values(repository):
    rows = repository.projection("select distinct p.pixelsType.value from Pixels p order by p.pixelsType.value", None, ALICE)
    assert values(rows) == [["uint16"], ["uint8"]]


def test_order_by_several_keys(repository):
    rows = repository.projection(
        "select i.id from Image i where i.fileset.id in (:ids) order by i.fileset.id desc, i.series asc",
        ids(ids=[3, 12]), ALICE,
    )
    assert values(rows) == [[14], [15], [16], [3], [4]]


def test_nulls_sort_last_ascending_first_descending(repository):
    ascending = repository.projection("select i.id from Image i order by i.acquisitionDate, i.id", None, ALICE)
    descending = repository.projection("select i.id from Image i order by i.acquisitionDate desc, i.id", None, ALICE)
    assert values(ascending)[0] == [13]  # 2010, the oldest acquisition date
    assert values(ascending)[-1] == [22]
    assert values(descending)[0] == [1]


def test_paging_after_ordering(repository):
    params = ParametersI().page(1, 2)
    rows = repository.projection("select i.id from Image i order by i.id desc", params, ALICE)
    assert values(rows) == [[21], [20]]


# Permissions inside queries


def test_private_objects_invisible_in_from(repository):
    rows = repository.projection("select a.id from TagAnnotation a order by a.id", None, BOB)
    assert [v[0] for v in values(rows)] == [1, 2, 3]


def test_private_objects_invisible_in_joins(repository):
    rows = repository.projection(
        "select l.id from DatasetImageLink l join l.child i where i.id = 22", None, BOB
    )
    assert rows == []


def test_group_context_limits_query(repository):
    private_only = Viewer(2, 4)
    rows = repository.projection("select i.id from Image i", None, private_only)
    assert values(rows) == [[22]]


def test_enumerations_visible_to_all(repository):
    rows = repository.projection("select count(t.id) from PixelsType t", None, BOB)
    assert values(rows) == [[2]]


def test_functions_reject_objects(repository):
    assert "lower()" in query_error(repository, "select lower(i) from Image i")
    assert "concat()" in query_error(repository, "select concat(i, 'x') from Image i")


@pytest.mark.parametrize(
    "text",
    [
        "select i.details from Image i",
        "select i.pixels from Image i",
        "select p.physicalSizeX from Pixels p",
        "select a.mapValue from MapAnnotation a",
        "select sum(i.name) from Image i",
        "select i.id from Image i where i.name > 5",
        "select i.id from Image i where i.id / 0 = 1",
    ],
)
def test_unusable_expressions_rejected(repository, text):
    query_error(repository, text)
