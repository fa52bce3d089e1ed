"""Command-line targets and sizes."""

import argparse

import pytest

from omerofs import records
from omerofs.cli import parse_size
from omerofs.errors import UsageError


@pytest.mark.parametrize("text, kind, ids", [
    ("Image:1,2", "Image", (1, 2)),
    ("dataset:3", "Dataset", (3,)),
    ("Project:4", "Project", (4,)),
    ("Screen:5", "Screen", (5,)),
    ("Plate:6", "Plate", (6,)),
    ("Well:7", "Well", (7,)),
    ("Fileset:8", "Fileset", (8,)),
])
def test_target_parses(text, kind, ids):
    target = records.parse_target(text)
    assert target.kind == kind
    assert target.ids == ids


@pytest.mark.parametrize("text", ["Image", "Image:", "Image:x", "Image:0", "Image:-1", "Tag:1", ":1", "Image:1,,2",
                                  "Image:²", "Image:١", "Image:9223372036854775808"])
def test_invalid_target_is_usage_error(text):
    with pytest.raises(UsageError):
        records.parse_target(text)


@pytest.mark.parametrize("text, value", [("4096", 4096), ("1M", 1024 ** 2), ("10G", 10 * 1024 ** 3),
                                         ("2MiB", 2 * 1024 ** 2), ("1.5k", 1536)])
def test_size_parses(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1M", "0", "inf", "nan", "1e999", "nanG"])
def test_invalid_size_is_rejected(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


@pytest.mark.parametrize("server", ["tcp://127.0.0.1:²", "tcp://127.0.0.1:١٢", "tcp://127.0.0.1:x"])
def test_server_address_with_non_ascii_port_is_usage_error(server):
    from omerofs.remote import ServerAddress

    with pytest.raises(UsageError):
        ServerAddress.parse(server)


def test_server_address_forms():
    from omerofs.remote import ServerAddress

    assert ServerAddress.parse("omero.example.org") == ServerAddress("omero.example.org", 4064)
    assert ServerAddress.parse("omero.example.org", 4065) == ServerAddress("omero.example.org", 4065)
    assert ServerAddress.parse("127.0.0.1:14064") == ServerAddress("127.0.0.1", 14064)
    assert ServerAddress.parse("tcp://127.0.0.1:14064") == ServerAddress("tcp://127.0.0.1:14064", 14064)


@pytest.mark.parametrize("text", ["", "host:", "host:abc", "ftp://host:1", "tcp://host", "host:70000"])
def test_invalid_server_address_is_usage_error(text):
    from omerofs.remote import ServerAddress

    with pytest.raises(UsageError):
        ServerAddress.parse(text)
