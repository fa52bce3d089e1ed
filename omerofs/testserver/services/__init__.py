"""The Ice servants of the OMERO test server, one module per OMERO service."""

# omero-py loads most Slice modules on demand; the servants subclass classes from
# all of them (omero.api.IAdmin, omero.cmd.Handle, ...).
import omero.all  # noqa: F401
