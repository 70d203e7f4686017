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

Each turn also puts the streams in flight first: what is ready on upstream
connections (and everything else that is not a client's) is handled before
what clients bring (request heads and bodies, WebSocket frames, new
connections), and client-side work stops after :data:`CLIENT_SIDE_BUDGET`, or
after as long as the streams took in that turn if that is longer, the rest
handled on the next turn (epoll here is level-triggered, so a socket not read
stays ready). A burst of new requests then delays the events of running
streams by that budget, not by the whole burst, and under a full load clients
still get half of every turn. Between two clients' reads, what became ready
on the streams meanwhile is handled first (one ``epoll_wait`` without
waiting): the head of an answer to a request sent a moment ago goes to its
client before the next request of a burst is read (for bursts of up to
:data:`INTERLEAVE_UP_TO` clients; beyond that each look costs more than it
brings).

It applies only to Twisted's epoll reactor (the default on Linux); any other
reactor is left as it is.
"""

from __future__ import annotations

import errno
import types
from collections.abc import Callable
from select import EPOLLIN
from time import monotonic
from typing import Any

from twisted.internet import tcp
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python import log

#: the transports whose reads take the short way (subclasses may override doRead)
_PLAIN_TCP = (tcp.Client, tcp.Server)
#: what clients bring: their requests (and WebSocket frames) and new connections
_CLIENT_SIDE = (tcp.Server, tcp.Port)
#: seconds one turn of the loop may spend on client-side work once the streams
#: in flight have had theirs; what is left waits for the next turn
CLIENT_SIDE_BUDGET = 0.002
#: the most clients waiting in one turn for which the streams are looked at
#: between two of them: each look lists every ready socket, the clients'
#: too, so with a thousand clients at once the looks would cost more than
#: they save (the turn's own order still puts the streams first)
INTERLEAVE_UP_TO = 64

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
    started = monotonic()
    later = _streams_first(self, ready, selectables)
    if later is None:
        return
    # Clients get at least the budget, and as long as the streams took: under
    # a full load, half of each turn, never starved. Between two of them, what
    # became ready on the streams meanwhile (an answer's head to a request
    # just sent, an event) is handled at once rather than after the rest of
    # the burst; that time counts as the streams'.
    streams = monotonic() - started
    clients = 0.0
    last = len(later) - 1 if len(later) <= INTERLEAVE_UP_TO else -1
    for i, (fd, event) in enumerate(later):
        selectable = selectables.get(fd)
        if selectable is None:
            continue  # closed by what ran before it
        began = monotonic()
        _dispatch(self, selectable, fd, event)
        ended = monotonic()
        clients += ended - began
        if clients > max(CLIENT_SIDE_BUDGET, streams):
            # the rest are still ready (epoll here is level-triggered): they
            # come back on the next turn, after the streams have had theirs
            return
        if i < last:
            # what is ready now, without waiting; the clients' own sockets in
            # it come back on the next turn
            try:
                now_ready = self._poller.poll(0, len(selectables))
            except OSError:
                now_ready = []  # EINTR: the next turn polls again
            _streams_first(self, now_ready, selectables)
            streams += monotonic() - ended


def _streams_first(
    self: Any, ready: list[tuple[int, int]], selectables: dict[int, Any]
) -> list[tuple[int, int]] | None:
    """
    Dispatch what is ready on anything but the client side; return the
    clients' entries (a request, a new connection), in order, for after the
    streams in flight, or None when there are none.
    """
    later: list[tuple[int, int]] | None = None
    for fd, event in ready:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        if type(selectable) in _CLIENT_SIDE:
            if later is None:
                later = []
            later.append((fd, event))
            continue
        _dispatch(self, selectable, fd, event)
    return later


#: whether a read is being handed to its protocol now, and what waits for it
_in_read = False
_after_read: list[tuple[Callable[..., object], tuple[object, ...]]] = []


def after_read(call: Callable[..., object], *args: object) -> bool:
    """
    Have ``call(*args)`` called as soon as the read being handled now has
    been (its protocol's ``dataReceived`` returned), before anything else:
    what that read makes a protocol write to another connection can go out
    in one system call. False, and nothing kept, when no read is being
    handled (another reactor, a test's transport).
    """
    if not _in_read:
        return False
    _after_read.append((call, args))
    return True


def _run_after_read() -> None:
    calls = _after_read[:]
    del _after_read[:]
    for call, args in calls:
        try:
            call(*args)
        except Exception:
            log.err()


def _dispatch(self: Any, selectable: Any, fd: int, event: int) -> None:
    if event == EPOLLIN and type(selectable) in _PLAIN_TCP and not selectable._aborting:
        # the common case, a TCP connection with bytes to read, without the
        # layers of _doReadOrWrite, doRead and _dataReceived (what they would
        # decide is decided the same way here)
        why: Any = None
        try:
            data = selectable.socket.recv(selectable.bufferSize)
        except BlockingIOError:
            return
        except OSError:
            why = CONNECTION_LOST
        else:
            if not data:
                why = CONNECTION_DONE
            else:
                global _in_read
                _in_read = True
                try:
                    selectable.protocol.dataReceived(data)
                    return
                except BaseException as e:
                    # as _doReadOrWrite: logged, and the connection dropped
                    why = e
                    log.err()
                finally:
                    _in_read = False
                    if _after_read:
                        _run_after_read()
        self._disconnectSelectable(selectable, why, True)
        return
    try:
        self._doReadOrWrite(selectable, fd, event)
    except KeyboardInterrupt:
        raise
    except BaseException:
        try:
            prefix = selectable.logPrefix()
        except BaseException:
            prefix = "(buggy logPrefix method)"
        log.err(system=prefix)


#: young-generation collections between two full ones while serving (Python's
#: default is 10): a full collection walks every live object, tens of
#: milliseconds with a thousand streams open, every event waiting behind it
FULL_COLLECTION_EVERY = 100


def settle_collector(reactor: Any) -> None:
    """
    Once the reactor runs, move everything built at start-up (modules,
    classes, services, the account store) out of the cyclic garbage
    collector's sight (``gc.freeze``), and make its full collections rarer
    (:data:`FULL_COLLECTION_EVERY`).

    Python's full collection walks every tracked object and holds the loop
    meanwhile: with 1,000 streams open, 30 to 70 ms twice a minute, which set
    the streams' 99th-percentile event delay. Reference counting still frees
    nearly everything at once; cyclic garbage waits a little longer for a
    full collection. For the daemon's own process only (its entry points call
    this), never where Subrouter is embedded or tested.
    """
    import gc

    def settle() -> None:
        gc.collect()
        gc.freeze()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)

    reactor.callWhenRunning(settle)
