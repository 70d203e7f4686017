# -*- test-case-name: tests.test_loop -*-
"""
The reactor's dispatch of ready sockets, without a logging context per event.

For every ready file descriptor, Twisted's epoll reactor asks the selectable
for its log prefix, pushes a logging context holding it, and pops it again
(``log.callWithLogger``), so that a legacy ``log.msg`` made while handling the
event is tagged with that prefix. With a thousand streams that is tens of
thousands of context pushes a second for nothing: Subrouter logs with
``twisted.logger`` and named fields, which never read that context. This
dispatches each ready descriptor straight to the reactor's own
``_doReadOrWrite``; an error escaping it is still logged (with the
selectable's prefix, looked up then), never raised into the loop. A plain TCP
connection with bytes to read (nearly every event) is read and handed to its
protocol right here, deciding what ``doRead`` would decide: a connection that
ended or failed is disconnected, an error in its protocol logged and the
connection dropped.

It applies only to Twisted's epoll reactor (the default on Linux); any other
reactor is left as it is.
"""

from __future__ import annotations

import errno
import types
from select import EPOLLIN
from typing import Any

from twisted.internet import tcp
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python import log

#: the transports whose reads take the short way (subclasses may override doRead)
_PLAIN_TCP = (tcp.Client, tcp.Server)

_MARK = "_subrouter_direct_dispatch"


def direct_dispatch(reactor: Any) -> bool:
    """
    Make an epoll reactor dispatch ready descriptors directly.

    :return: whether the reactor was changed (False for other reactors, or
        when it already was).
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover - not Linux
        return False
    if not isinstance(reactor, EPollReactor) or getattr(reactor, _MARK, False):
        return False
    poll = types.MethodType(_do_poll, reactor)
    for name in ("doPoll", "doIteration"):
        setattr(reactor, name, poll)
    setattr(reactor, _MARK, True)
    return True


def _do_poll(self: Any, timeout: float | None) -> None:
    # EPollReactor.doPoll, minus log.callWithLogger around each event
    if timeout is None:
        timeout = -1
    try:
        ready = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables
    handle = self._doReadOrWrite
    for fd, event in ready:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        if event == EPOLLIN and type(selectable) in _PLAIN_TCP and not selectable._aborting:
            # the common case, a TCP connection with bytes to read, without
            # the layers of _doReadOrWrite, doRead and _dataReceived (what
            # they would decide is decided the same way here)
            why: Any = None
            try:
                data = selectable.socket.recv(selectable.bufferSize)
            except BlockingIOError:
                continue
            except OSError:
                why = CONNECTION_LOST
            else:
                if not data:
                    why = CONNECTION_DONE
                else:
                    try:
                        selectable.protocol.dataReceived(data)
                        continue
                    except BaseException as e:
                        # as _doReadOrWrite: logged, and the connection dropped
                        why = e
                        log.err()
            self._disconnectSelectable(selectable, why, True)
            continue
        try:
            handle(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            try:
                prefix = selectable.logPrefix()
            except BaseException:
                prefix = "(buggy logPrefix method)"
            log.err(system=prefix)
