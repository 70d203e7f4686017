# -*- test-case-name: tests.test_workers -*-
"""
``--workers N``: one listening port served by N worker processes.

The parent opens the port itself and hands the listening socket to each
worker as file descriptor 3; a worker adopts it (``adoptStreamPort``), so
all of them accept from the one queue the kernel keeps for the port, and an
idle worker picks up the next connection. (SO_REUSEPORT would give each
worker its own queue and spread connections by hash, whether or not that
worker is busy, and lets any process of the same user join the port.)

The parent runs nothing else: it restarts a worker that dies (waiting
longer each time one dies soon after it started), and on SIGTERM passes
the signal to every worker, which drains as a single daemon does, and waits
for them all. Each worker is the whole daemon; the workers share sticky
sessions, limits and token refreshes through ``--state redis://``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import error, protocol
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()

#: the environment variables that make a process a worker
WORKER_ENV = "SUBROUTER_WORKER"
LISTEN_FD_ENV = "SUBROUTER_LISTEN_FD"
PARENT_ENV = "SUBROUTER_WORKER_PARENT"
LOG_FORMAT_ENV = "SUBROUTER_LOG_FORMAT"
#: the descriptor the listening socket has in a worker
LISTEN_FD = 3
#: a worker that dies sooner than this after starting is restarted after a growing delay
QUICK_DEATH = 10.0
MAX_RESTART_DELAY = 30.0
#: how long the parent waits at shutdown for workers to drain before killing them
STOP_TIMEOUT = 120.0


def open_listener(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """
    The listening socket the workers share. Blocking; for start-up.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Worker(protocol.ProcessProtocol):
    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.pid: int | None = None
        self.started = 0.0
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.pid = self.transport.pid if self.transport is not None else None

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.ended(self, reason)
        self.ended.callback(None)


class Supervisor(Service):
    """
    :param argv: the worker command line (the serve options; the
        environment makes it a worker).
    :param count: how many workers.
    :param listener: the listening socket, opened by the parent.
    :param reactor: spawns processes and keeps time.
    """

    def __init__(
        self, *, argv: Sequence[str], count: int, listener: Callable[[], socket.socket],
        reactor: Any, environ: dict[str, str] | None = None,
    ) -> None:
        self._argv = list(argv)
        self._count = count
        self._open = listener
        self._reactor = reactor
        self._environ = dict(os.environ if environ is None else environ)
        self._socket: socket.socket | None = None
        self.workers: dict[int, _Worker] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._delays: dict[int, float] = {}
        self._stopping = False
        #: how many times a worker was restarted
        self.restarts = 0

    def startService(self) -> None:
        super().startService()
        self._socket = self._open()
        address = self._socket.getsockname()
        _log.info("listening on {host}:{port} with {count} workers", host=address[0],
                  port=address[1], count=self._count)
        for index in range(self._count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping or self._socket is None:
            return
        worker = _Worker(self, index)
        env = dict(self._environ)
        env[WORKER_ENV] = str(index)
        env[LISTEN_FD_ENV] = str(LISTEN_FD)
        env[PARENT_ENV] = str(os.getpid())
        worker.started = self._reactor.seconds()
        self._reactor.spawnProcess(
            worker, self._argv[0], self._argv, env=env,
            childFDs={0: 0, 1: 1, 2: 2, LISTEN_FD: self._socket.fileno()},
        )
        self.workers[index] = worker
        _log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        status = reason.value
        code = getattr(status, "exitCode", None)
        sig = getattr(status, "signal", None)
        if self._stopping:
            _log.info("worker {index} (pid {pid}) stopped", index=worker.index, pid=worker.pid)
            return
        lived = self._reactor.seconds() - worker.started
        delay = 0.0
        if lived < QUICK_DEATH:
            delay = min(max(self._delays.get(worker.index, 0.5) * 2, 1.0), MAX_RESTART_DELAY)
        self._delays[worker.index] = delay
        _log.warn(
            "worker {index} (pid {pid}) died ({how}) after {lived}s; restarting it in {delay}s",
            index=worker.index, pid=worker.pid, lived=round(lived, 1), delay=delay,
            how=f"signal {sig}" if sig else f"exit status {code}",
        )
        self.restarts += 1
        self._restarts[worker.index] = self._reactor.callLater(delay, self._spawn, worker.index)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        workers = list(self.workers.values())
        for worker in workers:
            _signal(worker, signal.SIGTERM)
        if not workers:
            self._close()
            return succeed(None)
        killer = self._reactor.callLater(STOP_TIMEOUT, self._kill, workers)

        def all_ended(_: object) -> None:
            if killer.active():
                killer.cancel()
            self._close()

        d: Deferred[Any] = DeferredList([w.ended for w in workers], consumeErrors=True)
        return d.addCallback(all_ended)

    def _kill(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if not worker.ended.called:
                _log.warn("worker {index} (pid {pid}) did not stop in {seconds}s; killing it",
                          index=worker.index, pid=worker.pid, seconds=STOP_TIMEOUT)
                _signal(worker, signal.SIGKILL)

    def _close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    def install_signal_handlers(self, reactor: Any) -> None:
        """
        SIGTERM/SIGINT stop the parent, which stops (drains) every worker; a
        second one is passed on, so the workers end what is in flight now.
        SIGHUP is passed on (the workers reread their accounts and reopen
        their logs). Call it once the reactor runs.
        """

        def on_stop(number: int, frame: object) -> None:
            reactor.callFromThread(self._stop_signal, reactor, number)

        def on_reload(number: int, frame: object) -> None:
            reactor.callFromThread(self._pass_on, number)

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_reload)

    def _stop_signal(self, reactor: Any, number: int) -> None:
        if self._stopping:
            self._pass_on(signal.SIGTERM)
            return
        _log.info("{signal}: stopping the workers", signal=signal.Signals(number).name)
        reactor.stop()

    def _pass_on(self, number: int) -> None:
        for worker in list(self.workers.values()):
            _signal(worker, number)

    def describe(self) -> list[dict[str, Any]]:
        return [{"index": w.index, "pid": w.pid} for w in
                sorted(self.workers.values(), key=lambda w: w.index)]


def _signal(worker: _Worker, signum: int) -> None:
    transport = worker.transport
    if transport is None:
        return
    try:
        transport.signalProcess(signum)
    except error.ProcessExitedAlready:
        pass


def worker_command(serve_args: Sequence[str]) -> list[str]:
    """
    The command line of a worker: this interpreter running ``subrouter serve``
    with the parent's serve options.
    """
    fmt = os.environ.get(LOG_FORMAT_ENV)
    # a session of its own: a Ctrl-C at the terminal reaches the parent only,
    # which stops each worker once (a second signal would cut its drain short)
    return [sys.executable, "-c", "import os; os.setsid(); from subrouter.main import main; main()",
            *(["--log-format", fmt] if fmt else []), "serve", *serve_args]


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    A worker's listening endpoint: the socket its parent opened, adopted.
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def listen(self, factory: Any) -> Deferred[Any]:
        probe = socket.socket(fileno=os.dup(self._fd))
        family = probe.family
        probe.close()
        try:
            port = self._reactor.adoptStreamPort(self._fd, family, factory)
        except Exception:
            return fail()
        os.close(self._fd)  # the port holds its own duplicate
        return succeed(port)


class ParentWatch(Service):
    """
    Stops a worker whose parent is gone (killed without the chance to stop
    it): a worker must not serve on alone.
    """

    def __init__(self, reactor: Any, parent_pid: int) -> None:
        self._reactor = reactor
        self._parent = parent_pid
        self._watch: Any = None

    def startService(self) -> None:
        from twisted.internet.task import LoopingCall

        super().startService()
        self._watch = LoopingCall(self._check)
        self._watch.clock = self._reactor
        self._watch.start(1.0, now=False)

    def _check(self) -> None:
        if os.getppid() != self._parent:
            _log.warn("the parent process {pid} is gone; stopping this worker", pid=self._parent)
            self._watch.stop()
            self._reactor.stop()

    def stopService(self) -> None:
        super().stopService()
        if self._watch is not None and self._watch.running:
            self._watch.stop()
