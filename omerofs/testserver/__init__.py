"""An OMERO test server: a real Ice server speaking OMERO's protocol to omero-py."""
