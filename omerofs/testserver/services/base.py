"""Pieces every servant of the test server shares.

Ice calls an operation that the Slice definition marks `["amd"]` as
`<operation>_async(callback, *arguments, current)` and never calls a plain method
of that name. The `amd` decorator lets a servant write such an operation as an
ordinary method that returns its result or raises, and passes either to the callback.

Exceptions: OMERO's servers report every failure that is not an Ice exception as
an `omero.ServerError` subclass. `as_server_error` turns an unexpected Python
exception (a bug in the test server) into `omero.InternalException`, as OMERO's own
exception mapping does, and logs the traceback so the bug is visible.
"""

from __future__ import annotations

import functools
import logging
import traceback

import Ice
import omero

log = logging.getLogger(__name__)


def as_server_error(exc: BaseException) -> Exception:
    """Return the exception to send to the client for `exc`."""
    if isinstance(exc, (Ice.UserException, Ice.LocalException)):
        return exc

    log.error("unexpected error in the test server", exc_info=exc)
    return omero.InternalException(
        serverStackTrace="".join(traceback.format_exception(exc)),
        serverExceptionClass=type(exc).__name__,
        message=f"{type(exc).__name__}: {exc}",
    )


def amd(method=None, *, void: bool = False):
    """Turn `method(self, *args, current)` into Ice's `<op>_async` form.

    The decorated function is named `<op>_async` in the class body and written
    without the callback argument. With `void=True` the callback gets no result,
    which Ice needs for operations that return nothing.
    """

    def decorate(method):
        @functools.wraps(method)
        def dispatch(self, callback, *args):
            try:
                result = method(self, *args)
            except Exception as exc:  # noqa: BLE001 - every failure goes to the client
                callback.ice_exception(as_server_error(exc))
                return
            if void:
                callback.ice_response()
            else:
                callback.ice_response(result)

        return dispatch

    if method is None:
        return decorate
    return decorate(method)


def sync(method):
    """Send unexpected exceptions of a synchronous operation as `omero.InternalException`."""

    @functools.wraps(method)
    def dispatch(self, *args):
        try:
            return method(self, *args)
        except Exception as exc:  # noqa: BLE001 - every failure goes to the client
            raise as_server_error(exc) from exc

    return dispatch


def interface_name(servant: Ice.Object) -> str:
    """Return the Slice interface of `servant` without its module: `IQuery`, `Router`."""
    return servant.ice_id().rsplit("::", 1)[-1]


class Servant:
    """Mixin for every servant class of the test server.

    slice2py generates a body of `pass` for each operation. An AMD operation left
    like that never replies, so its client waits for ever, and a synchronous one
    returns null. For every operation that a subclass does not implement, this
    mixin installs a method that raises `Ice.OperationNotExistException` (the
    client sees that exception) and logs a warning naming the operation.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for attribute in dir(cls):
            if not attribute.startswith("_op_"):
                continue
            operation = attribute[len("_op_"):]
            if operation.startswith("ice_"):
                # Ice.Object's own operations (ice_ping, ice_isA, ...) always work.
                continue
            method_name = operation + "_async"
            if not hasattr(cls, method_name):
                method_name = operation
            if _implemented_here(cls, method_name):
                continue
            setattr(cls, method_name, _missing_operation(operation, method_name))


def _implemented_here(cls: type, method_name: str) -> bool:
    for klass in cls.__mro__:
        if method_name in klass.__dict__:
            return klass.__module__.startswith("omerofs.")
    return False


def _missing_operation(operation: str, method_name: str):
    is_amd = method_name.endswith("_async")

    def missing(self, *args):
        current = args[-1]
        log.warning(
            "client called %s.%s, which the test server does not implement",
            interface_name(self),
            operation,
        )
        exc = Ice.OperationNotExistException(current.id, current.facet, operation)
        if is_amd:
            args[0].ice_exception(exc)
            return
        raise exc

    missing.__name__ = method_name
    return missing
