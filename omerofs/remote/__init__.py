"""The only package that imports omero-py or Ice.

``connection`` holds the session, retries, error translation and file
reads; ``metadata`` the queries for OME-XML. Both hand out plain records.
"""

from .connection import Connection, Credentials, ServerAddress, stored_session_key

__all__ = ["Connection", "Credentials", "ServerAddress", "stored_session_key"]
