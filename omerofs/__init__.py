"""omerofs: a read-only FUSE filesystem for the data held in an OMERO server."""

__version__ = "0.1.0"
