"""IQuery: HQL queries and look-ups by ID, served from the repository.

Every call reads the repository as the caller may: the caller's user and the
group from the call's `omero.group` context entry (-1 for all of the user's
groups), or else the session's current group.
"""

from __future__ import annotations

import logging

import omero.api

from .base import Servant, amd

log = logging.getLogger(__name__)


class QueryService(Servant, omero.api.IQuery):
    """IQuery for one service factory."""

    def __init__(self, factory):
        self.factory = factory

    @property
    def _repository(self):
        return self.factory.server.repository

    @amd
    def findAllByQuery_async(self, query, params, current=None):
        log.debug("findAllByQuery %r", query)
        return self._repository.query(query, params, self.factory.viewer(current))

    @amd
    def findByQuery_async(self, query, params, current=None):
        log.debug("findByQuery %r", query)
        return self._repository.query_one(query, params, self.factory.viewer(current))

    @amd
    def projection_async(self, query, params, current=None):
        log.debug("projection %r", query)
        return self._repository.projection(query, params, self.factory.viewer(current))

    @amd
    def get_async(self, kind, object_id, current=None):
        return self._repository.get(kind, object_id, self.factory.viewer(current))

    @amd
    def find_async(self, kind, object_id, current=None):
        return self._repository.find(kind, object_id, self.factory.viewer(current))

    @amd
    def findAll_async(self, kind, filter, current=None):  # noqa: A002 - Slice names it so
        return self._repository.find_all(kind, filter, self.factory.viewer(current))
