"""SharedResources: the repository descriptions that omero-py requests."""

from __future__ import annotations

import logging

import omero
import omero.grid

from .base import Servant

log = logging.getLogger(__name__)


class SharedResourcesI(Servant, omero.grid.SharedResources):
    """omero.grid.SharedResources for one service factory."""

    def __init__(self, factory):
        self.factory = factory

    def repositories(self, current=None):
        # The repository services themselves (import, listing) are not offered, so
        # every proxy is null, as OMERO reports a repository that is not reachable.
        descriptions = self.factory.server.repository.repositories(self.factory.viewer(current))
        return omero.grid.RepositoryMap(descriptions=descriptions, proxies=[None] * len(descriptions))

    def areTablesEnabled(self, current=None):
        return False
