"""The omerofs exception tree and its one errno table.

Every failure that crosses a layer boundary is one of these classes. The
``remote`` module translates omero-py and Ice exceptions into them (chained
with ``from``), so no other module needs to know what Ice raises.

    OmerofsError                  base class; ``exit_code`` for the command line
    ├── UsageError                invalid command-line input (a target, a size, a path)
    ├── AuthenticationError       login failed: bad password, unknown user or expired key
    ├── RemoteError               the server could not complete a request
    │   ├── ServerUnavailable     no connection, refused, timed out; temporary
    │   ├── SessionExpired        the session is gone; a new one may fix it
    │   ├── NotFound              the object does not exist or is not visible to the user
    │   ├── AccessDenied          the server forbids this, e.g. binary_access restrictions
    │   └── ServerFailure         the server raised an error while handling the request
    ├── OfflineError              the data is not in the cache and the mount is offline
    ├── IntegrityError            bytes do not match the server's checksum
    └── CacheError                the local cache is unusable (full disk, bad directory)
"""

import errno


class OmerofsError(Exception):
    """Base class of every error omerofs raises on purpose."""

    exit_code = 1


class UsageError(OmerofsError):
    """Invalid input on the command line."""

    exit_code = 2


class AuthenticationError(OmerofsError):
    """The server rejected the credentials or the session key."""

    exit_code = 3


class RemoteError(OmerofsError):
    """The server could not complete a request."""

    exit_code = 4
    temporary = False


class ServerUnavailable(RemoteError):
    """The server cannot be reached, refused the connection or timed out."""

    temporary = True


class SessionExpired(RemoteError):
    """The session ended on the server (idle time-out, closed, server restart)."""

    temporary = True


class NotFound(RemoteError):
    """The object does not exist or the user cannot see it."""

    exit_code = 5


class AccessDenied(RemoteError):
    """The server forbids the operation for this user."""

    exit_code = 6


class ServerFailure(RemoteError):
    """The server raised an error while handling the request."""


class OfflineError(OmerofsError):
    """The data is not in the cache and the server is not used."""

    exit_code = 7


class IntegrityError(OmerofsError):
    """Downloaded bytes do not match the server's checksum."""

    exit_code = 8


class CacheError(OmerofsError):
    """The local cache cannot be read or written."""

    exit_code = 9


# Errno for each class, most specific first. Anything else that reaches a
# FUSE handler is a bug and becomes EIO with a logged traceback.
ERRNO_BY_CLASS = (
    (NotFound, errno.ENOENT),
    (AccessDenied, errno.EACCES),
    (UsageError, errno.EINVAL),
    (OfflineError, errno.EIO),
    (IntegrityError, errno.EIO),
    (CacheError, errno.EIO),
    (RemoteError, errno.EIO),
)


def first_error(group: BaseExceptionGroup) -> BaseException:
    """Return the first exception of a trio nursery's exception group, looking inside nested groups.

    Callers use it in ``except* OmerofsError`` to raise one omerofs error
    as itself, since handlers and the command line treat any group as a bug.
    """
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def errno_for(error: BaseException) -> int:
    """Return the errno that a FUSE request failing with ``error`` reports."""
    for cls, number in ERRNO_BY_CLASS:
        if isinstance(error, cls):
            return number
    return errno.EIO
