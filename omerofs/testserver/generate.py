"""Write a manifest and data for a large synthetic repository.

    python -m omerofs.testserver.generate OUT_DIR --images 5000 --files-per-image 3 \\
        --big-files 1 --big-file-gib 6

writes `OUT_DIR/manifest.yaml`, the big files under `OUT_DIR/data/`, and
`OUT_DIR/markers.json`, then prints the manifest's path. Serve it with
`python -m omerofs.testserver --data OUT_DIR`.

What it makes:
- `--images` images in one dataset of one project, each in its own fileset of
  `--files-per-image` small files, each image with its own comment and one of ten
  shared tags ("batch-0" ... "batch-9").
- `--big-files` images whose single file is `--big-file-gib` GiB, stored sparse
  on disk. The files are zeros except for marker bytes at known offsets. Some
  markers straddle 2 GiB and 4 GiB and one lies past 4 GiB, so a client that
  mixes up offsets reads the wrong bytes. `markers.json` lists the markers of
  each file ID.
- Small files are synthetic by default: no disk space, and each file starts with
  its own ID so no two files are equal. `--shared-content` makes them all read
  one small file on disk instead.

Every checksum is computed here and written into the manifest, so loading it
hashes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from omerofs.testserver import content

log = logging.getLogger(__name__)

GIB = 1 << 30
MIB = 1 << 20

# IDs of the generated objects start here, clear of anything a person would type.
FIRST_IMAGE_ID = 1
FIRST_FILE_ID = 1000
TAG_COUNT = 10


def big_file_markers(index: int, size: int) -> list[tuple[int, bytes]]:
    """Return the (offset, bytes) markers of big file `index`, keeping those that fit in `size`.

    Offsets sit at block-unfriendly places: across 1 MiB, across 2 GiB (signed
    32-bit overflow) and across 4 GiB (unsigned 32-bit overflow), just past
    4 GiB, and at the very end.
    """
    candidates = [
        (0, f"OMEROFS BIG FILE {index} START".encode()),
        (MIB - 3, b"\x01\x02\x03\x04\x05\x06"),
        (2 * GIB - 4, b"\x7f\xff\xff\xff\x80\x00\x00\x00"),
        (4 * GIB - 4, b"\xff\xff\xff\xff\x00\x00\x00\x01"),
        (4 * GIB + 4096, f"PAST 4 GIB {index}".encode()),
        (size - 16, f"END OF FILE {index:03d}".encode()[:16]),
    ]
    markers = []
    for offset, data in candidates:
        if 0 <= offset and offset + len(data) <= size and all(
            offset >= other + len(other_data) or offset + len(data) <= other
            for other, other_data in markers
        ):
            markers.append((offset, data))
    return sorted(markers)


def write_sparse_file(path: Path, size: int, markers: list[tuple[int, bytes]]) -> None:
    """Create a sparse file of `size` bytes: holes, and the markers written in place."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in markers:
            os.pwrite(handle.fileno(), data, offset)


def generate(out_dir: Path, images: int, files_per_image: int, file_bytes: int,
             big_files: int, big_file_gib: float, shared_content: bool) -> Path:
    """Write the manifest and data into `out_dir`; return the manifest's path."""
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)

    document: dict = {
        "version": 1,
        "created": "2024-05-01T12:00:00Z",
        "defaults": {"owner": "alice", "group": "lab"},
        "groups": [{"id": 3, "name": "lab", "permissions": "read-annotate"}],
        "users": [
            {"id": 2, "name": "alice", "password": "omero", "groups": ["lab"]},
            {"id": 3, "name": "bob", "password": "omero", "groups": ["lab"]},
        ],
        "repositories": [
            {"id": 1, "name": "OMERO", "path": "/", "uuid": "6c0a0d1e-0000-4000-8000-000000000001", "legacy": True},
            {"id": 2, "name": "ManagedRepository", "path": "/OMERO/", "uuid": "6c0a0d1e-0000-4000-8000-000000000002"},
        ],
    }

    shared_source = None
    shared_sha1 = None
    if shared_content:
        shared_source = data_dir / "shared.bin"
        shared_source.write_bytes(bytes(index % 251 for index in range(file_bytes)))
        shared_sha1 = content.sha1_hex(content.LocalFile.open(shared_source))

    filesets, image_entries, annotations = [], [], []
    markers_by_file: dict[str, list] = {}
    next_file_id = FIRST_FILE_ID

    for number in range(images):
        image_id = FIRST_IMAGE_ID + number
        files = []
        for part in range(files_per_image):
            name = f"image_{image_id:06d}_{part}.bin"
            if shared_source is not None:
                files.append({"id": next_file_id, "source": os.path.relpath(shared_source, out_dir),
                              "name": name, "sha1": shared_sha1})
            else:
                marker = f"file {next_file_id}\n".encode()
                synthetic = content.SyntheticFile(file_bytes, ((0, marker),) if len(marker) <= file_bytes else ())
                files.append({
                    "id": next_file_id, "name": name, "sha1": content.sha1_hex(synthetic),
                    "synthetic": {"size": file_bytes, "markers": [{"offset": 0, "hex": marker.hex()}]
                                  if len(marker) <= file_bytes else []},
                })
            next_file_id += 1
        filesets.append({"id": image_id, "templatePrefix": f"alice_2/generated/{image_id:06d}/", "files": files})
        image_entries.append(_image(image_id, f"image {image_id:06d}", image_id))
        annotations.append({"id": TAG_COUNT + 1 + number, "kind": "Comment",
                            "value": f"comment on image {image_id}", "links": [f"Image:{image_id}"]})

    for tag in range(TAG_COUNT):
        links = [f"Image:{FIRST_IMAGE_ID + n}" for n in range(tag, images, TAG_COUNT)]
        annotations.append({"id": 1 + tag, "kind": "Tag", "value": f"batch-{tag}", "links": links})

    big_size = int(big_file_gib * GIB)
    for index in range(big_files if big_size > 0 else 0):
        image_id = FIRST_IMAGE_ID + images + index
        file_id = next_file_id
        next_file_id += 1
        path = data_dir / f"big-{index}.raw"
        markers = big_file_markers(index, big_size)
        write_sparse_file(path, big_size, markers)
        log.info("hashing big file %s (%d bytes)", path, big_size)
        sha1 = content.sha1_hex(content.SyntheticFile(big_size, tuple(markers)))
        filesets.append({
            "id": image_id, "templatePrefix": f"alice_2/generated/big-{index}/",
            "files": [{"id": file_id, "source": os.path.relpath(path, out_dir), "sha1": sha1}],
        })
        image_entries.append(_image(image_id, f"big file {index}", image_id))
        markers_by_file[str(file_id)] = [[offset, data.hex()] for offset, data in markers]

    document["filesets"] = filesets
    document["images"] = image_entries
    document["datasets"] = [{"id": 1, "name": "Generated images", "images": [e["id"] for e in image_entries]}]
    document["projects"] = [{"id": 1, "name": "Generated", "datasets": [1]}]
    document["annotations"] = annotations

    # JSON is valid YAML, and the manifest loader parses it with the much faster
    # JSON parser, which matters for manifests of thousands of images.
    manifest_path = out_dir / "manifest.yaml"
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1, ensure_ascii=False)
        handle.write("\n")
    with open(out_dir / "markers.json", "w", encoding="utf-8") as handle:
        json.dump(markers_by_file, handle, indent=1)
    return manifest_path


def _image(image_id: int, name: str, fileset_id: int) -> dict:
    return {
        "id": image_id,
        "name": name,
        "fileset": fileset_id,
        "pixels": {"sizeX": 64, "sizeY": 64, "pixelsType": "uint8", "physicalSizeX": 0.5, "physicalSizeY": 0.5},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m omerofs.testserver.generate",
        description="Write a manifest and data for a large synthetic OMERO test repository.",
    )
    parser.add_argument("out_dir", type=Path, help="directory for manifest.yaml, data/ and markers.json")
    parser.add_argument("--images", type=int, default=1000, help="number of small images (default 1000)")
    parser.add_argument("--files-per-image", type=int, default=1, help="files in each small image's fileset (default 1)")
    parser.add_argument("--file-bytes", type=int, default=4096, help="size of each small file in bytes (default 4096)")
    parser.add_argument("--big-files", type=int, default=1, help="number of big sparse files, one image each (default 1)")
    parser.add_argument("--big-file-gib", type=float, default=5.0,
                        help="size of each big file in GiB; 0 writes none (default 5)")
    parser.add_argument("--shared-content", action="store_true",
                        help="let all small files read one file on disk instead of distinct synthetic content")
    args = parser.parse_args(argv)

    for name in ("images", "files_per_image", "file_bytes", "big_files"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    if args.files_per_image == 0 and args.images > 0:
        parser.error("--files-per-image must be at least 1")
    if args.big_file_gib < 0:
        parser.error("--big-file-gib must not be negative")

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest_path = generate(
        args.out_dir, args.images, args.files_per_image, args.file_bytes,
        args.big_files, args.big_file_gib, args.shared_content,
    )
    print(manifest_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
