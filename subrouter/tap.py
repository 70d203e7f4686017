# -*- test-case-name: tests.test_options,tests.test_daemon_process -*-
"""
The twistd plugin's options and service: ``twistd -n subrouter --addr ...``.

:class:`Options` parses the serve options (``subrouter serve`` uses the same
class) into a typed :class:`Config`; :func:`build_service` assembles the
daemon from a config and a reactor: the account store and its rescans, the
HTTP connection pool, and the listening Site.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import IO, TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService, Service
from twisted.python import usage

from subrouter import config as parse
from subrouter.accounts.refresh import codex_auth_path
from subrouter.config import (
    DEFAULT_ACCOUNTS_DIR,
    DEFAULT_ADDR,
    DEFAULT_ANTHROPIC_TOKEN_URL,
    DEFAULT_ANTHROPIC_UPSTREAM,
    DEFAULT_ANTHROPIC_USAGE_URL,
    DEFAULT_CODEX_UPSTREAM,
    DEFAULT_CX_SWITCH_INTERVAL,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_OPENAI_UPSTREAM,
    DEFAULT_OVERLOAD_WAIT,
    DEFAULT_SESSION_IDLE_TTL,
    DEFAULT_SESSION_RETENTION,
    DEFAULT_STATE_DIR,
    DEFAULT_TOKEN_URL,
    DEFAULT_TRANSCRIPT_MAX_BODY,
    DEFAULT_TRANSCRIPT_SYNC_INTERVAL,
    DEFAULT_TRANSCRIPT_SYNC_TIMEOUT,
    DEFAULT_USAGE_INTERVAL,
    DEFAULT_USAGE_SCORE_TTL,
    DEFAULT_USAGE_URL,
    Config,
)
from subrouter.files import ensure_private_directory, not_a_folder

if TYPE_CHECKING:
    from subrouter.jobs.workers import Supervisor
    from subrouter.lifecycle import Daemon


class Options(usage.Options):
    """
    The serve options, shared by ``twistd subrouter`` and ``subrouter serve``.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the Subrouter proxy: point Codex at http://127.0.0.1:31415/v1 and every "
        "request goes upstream with the credentials of an account from the cx store."
    )

    optFlags = [
        ["expose", None, "Allow --addr on a non-loopback interface; needs --client-tokens, "
         "so only holders of a token can use your accounts."],
    ]
    optParameters = [
        ["addr", None, DEFAULT_ADDR, "HOST:PORT to listen on (loopback unless --expose)."],
        ["listen", None, None, "A Twisted server endpoint string to listen on instead of "
         "--addr, e.g. systemd:domain=INET:index=0 for socket activation."],
        ["accounts-dir", None, DEFAULT_ACCOUNTS_DIR, "The cx account store."],
        ["codex-upstream", None, DEFAULT_CODEX_UPSTREAM,
         "Base URL for ChatGPT (OAuth) logins."],
        ["openai-upstream", None, DEFAULT_OPENAI_UPSTREAM, "Base URL for API-key accounts."],
        ["anthropic-upstream", None, DEFAULT_ANTHROPIC_UPSTREAM,
         "Base URL for Claude profiles and Anthropic API keys."],
        ["token-url", None, DEFAULT_TOKEN_URL, "OAuth token endpoint for refreshes."],
        ["anthropic-token-url", None, DEFAULT_ANTHROPIC_TOKEN_URL,
         "OAuth token endpoint for Claude profiles' refreshes."],
        ["anthropic-usage-url", None, DEFAULT_ANTHROPIC_USAGE_URL,
         "The Anthropic OAuth usage endpoint (Claude profiles' 5-hour and weekly windows)."],
        ["overload-wait", None, DEFAULT_OVERLOAD_WAIT,
         "How long one request may wait out an overloaded upstream (Anthropic 529, Codex "
         "'at capacity') on its own account before the error is passed on (0: never wait)."],
        ["idle-timeout", None, DEFAULT_IDLE_TIMEOUT,
         "Give up on an upstream that sends nothing for this long (e.g. 90s, 5m)."],
        ["header-timeout", None, DEFAULT_HEADER_TIMEOUT,
         "Drop a client that takes longer than this to send a request's line and headers."],
        ["codex-home", None, None,
         "Codex's home, whose auth.json follows refreshes (default $CODEX_HOME or ~/.codex)."],
        ["state-dir", None, DEFAULT_STATE_DIR,
         "Where sticky sessions and exhaustion marks are kept across restarts."],
        ["session-idle-ttl", None, DEFAULT_SESSION_IDLE_TTL,
         "A conversation unseen this long no longer counts as live on its account."],
        ["session-retention", None, DEFAULT_SESSION_RETENTION,
         "Forget the account of a conversation unseen this long (e.g. 90d; 0 keeps them)."],
        ["usage-url", None, DEFAULT_USAGE_URL, "The ChatGPT usage endpoint."],
        ["usage-interval", None, DEFAULT_USAGE_INTERVAL,
         "How often every login's usage is polled."],
        ["usage-score-ttl", None, DEFAULT_USAGE_SCORE_TTL,
         "Refresh usage older than this before placing a new conversation (0: never)."],
        ["fetch-usage", None, "true", "Poll usage at all: true or false."],
        ["transcripts", None, None, "Record every exchange as JSONL under this folder (off)."],
        ["transcript-max-body", None, DEFAULT_TRANSCRIPT_MAX_BODY,
         "Bytes of one body recorded (e.g. 512K, 16M)."],
        ["transcript-retention", None, "0",
         "Delete session transcripts idle this long (e.g. 30d; 0 keeps them)."],
        ["transcript-gcs-uri", None, None,
         "Mirror the transcripts to gs://bucket/prefix with gsutil rsync."],
        ["transcript-sync-interval", None, DEFAULT_TRANSCRIPT_SYNC_INTERVAL,
         "How often the mirror runs."],
        ["transcript-sync-timeout", None, DEFAULT_TRANSCRIPT_SYNC_TIMEOUT,
         "How long one mirror run may take."],
        ["cx-switch-interval", None, DEFAULT_CX_SWITCH_INTERVAL,
         "Make the best login active for local agents this often (0: never)."],
        ["drain-timeout", None, DEFAULT_DRAIN_TIMEOUT,
         "At SIGTERM/SIGINT, how long requests and WebSockets in flight may take to end "
         "before they are cut."],
        ["account-rescan-interval", None, "2s",
         "How often the account store is checked for changes (0: only at start and on "
         "SIGHUP)."],
        ["state", None, "embedded",
         "Where sticky sessions, limits and token sets are shared: embedded (under "
         "--state-dir) or redis://[:password@]host:port/db for several workers/instances."],
        ["state-key-file", None, None,
         "With --state redis://: the file holding the key that encrypts token sets in "
         "Redis (the same on every instance)."],
        ["workers", None, "1",
         "Serve the port with this many worker processes (needs --state redis://)."],
        ["client-tokens", None, None,
         "Require a client token from this file (NAME TOKEN per line; see `cx client-token`) "
         "on every request."],
        ["usage-raw-days", None, "7",
         "Days of per-response token records kept before they are rolled up into hours."],
        ["usage-retention", None, "90d", "How long token accounting keeps its hourly rollups."],
    ]

    #: where messages for the person at the terminal go; swapped in tests
    stderr: IO[str] = sys.stderr

    def __init__(self) -> None:
        super().__init__()
        self["ca-bundle"] = []
        self["transcript-exclude"] = []
        self["allow-host"] = []

    def opt_allow_host(self, name: str) -> None:
        """
        A host name (or address) clients may use in Host besides loopback and
        the listening address, e.g. a tailnet name (repeatable).
        """
        self["allow-host"].append(name)

    def parseOptions(self, options: Any = None) -> None:
        # kept for --workers: each worker is started with the same options
        self.raw_args = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_version(self) -> None:
        print(f"subrouter {_version()}")
        raise SystemExit(0)

    def opt_transcript_exclude(self, path: str) -> None:
        """
        A path (or path ending) not to record (repeatable; default /models).
        """
        self["transcript-exclude"].append(path)

    def opt_ca_bundle(self, path: str) -> None:
        """
        A PEM file of extra CA certificates to trust for upstream TLS (repeatable).
        """
        self["ca-bundle"].append(path)

    @property
    def subCommands(self) -> list[tuple[str, None, type[usage.Options], str]]:
        from subrouter.cli.cx import CxOptions

        return [("cx", None, CxOptions, "Manage Codex accounts, then exit (no daemon).")]

    def postOptions(self) -> None:
        if self.subCommand == "cx":
            # a one-shot command: run it now and leave before twistd checks a
            # pidfile, daemonizes or starts a reactor
            from subrouter.cli.cx import cx_process
            from subrouter.cli.entry import guarded

            options: Any = self.subOptions
            options.prog = "twistd subrouter cx"
            guarded("cx", lambda: cx_process(options))
        self.config = config_from_options(self, self.stderr)


def _checked(option: str, parser: Any, value: str) -> Any:
    try:
        return parser(value)
    except ValueError as e:
        raise usage.UsageError(f"--{option}: {e}") from None


def config_from_options(opts: usage.Options, stderr: IO[str]) -> Config:
    """
    Check every serve option and build the :class:`Config`.

    :raises usage.UsageError: naming the first bad option.
    """
    host, port = _checked("addr", parse.parse_addr, opts["addr"])
    listen = opts["listen"]
    expose = bool(opts["expose"])
    if listen is None:
        if not parse.is_loopback(host):
            if not expose:
                raise usage.UsageError(
                    f"--addr: {opts['addr']} is not a loopback address; anyone who can reach "
                    "it could use your accounts. Add --expose if that is what you want."
                )
            stderr.write(
                f"note: listening on {opts['addr']}, which is not loopback: clients need a "
                "token from --client-tokens\n"
            )
        endpoint = parse.listen_endpoint(host, port)
    else:
        endpoint = listen
    idle = _checked("idle-timeout", parse.parse_duration, opts["idle-timeout"])
    if idle <= 0:
        raise usage.UsageError("--idle-timeout: must be more than zero")
    header_timeout = _checked("header-timeout", parse.parse_duration, opts["header-timeout"])
    if header_timeout <= 0:
        raise usage.UsageError("--header-timeout: must be more than zero")
    accounts_dir = parse.expand_path(opts["accounts-dir"])
    problem = not_a_folder(accounts_dir)
    if problem:
        raise usage.UsageError(f"--accounts-dir: {problem}")
    codex_home = opts["codex-home"]
    fetch = str(opts["fetch-usage"]).strip().lower()
    if fetch not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise usage.UsageError("--fetch-usage: must be true or false")
    durations = {}
    for name in ("session-idle-ttl", "usage-interval", "usage-score-ttl", "overload-wait"):
        durations[name] = _checked(name, parse.parse_duration, opts[name])
    for name in ("session-idle-ttl", "usage-interval"):
        if durations[name] <= 0:
            raise usage.UsageError(f"--{name}: must be more than zero")
    transcripts = opts["transcripts"]
    gcs_uri = opts["transcript-gcs-uri"]
    gsutil = None
    if gcs_uri is not None:
        from twisted.python.procutils import which

        from subrouter.jobs.transcript_sync import normalise_gcs_uri

        if not transcripts:
            raise usage.UsageError("--transcript-gcs-uri: needs --transcripts DIR")
        gcs_uri = _checked("transcript-gcs-uri", normalise_gcs_uri, gcs_uri)
        found = which("gsutil")
        if not found:
            raise usage.UsageError(
                "--transcript-gcs-uri: gsutil is not on PATH (install the Google Cloud SDK)"
            )
        gsutil = found[0]
    for name in ("transcript-retention", "transcript-sync-interval", "transcript-sync-timeout",
                 "cx-switch-interval", "drain-timeout", "account-rescan-interval",
                 "usage-retention", "session-retention"):
        durations[name] = _checked(name, parse.parse_duration, opts[name])
    if 0 < durations["session-retention"] < durations["session-idle-ttl"]:
        # a conversation in use must never lose its account
        raise usage.UsageError("--session-retention: must be 0 or at least --session-idle-ttl")
    shared = _shared_state_options(opts, listen)
    client_tokens = _client_tokens(opts["client-tokens"], expose)
    raw_days = _checked("usage-raw-days", int, opts["usage-raw-days"])
    if raw_days < 1:
        raise usage.UsageError("--usage-raw-days: must be 1 or more")
    if durations["usage-retention"] < (raw_days + 1) * 86400:
        raise usage.UsageError("--usage-retention: must be longer than --usage-raw-days")
    return Config(
        endpoint=endpoint,
        addr=opts["addr"] if listen is None else listen,
        expose=expose,
        accounts_dir=accounts_dir,
        codex_upstream=_checked("codex-upstream", parse.parse_http_url, opts["codex-upstream"]),
        openai_upstream=_checked(
            "openai-upstream", parse.parse_http_url, opts["openai-upstream"]
        ),
        token_url=_checked("token-url", parse.parse_http_url, opts["token-url"]),
        ca_bundles=tuple(
            _checked("ca-bundle", parse.parse_pem_bundle, p) for p in opts["ca-bundle"]
        ),
        idle_timeout=idle,
        header_timeout=header_timeout,
        codex_auth=(
            os.path.join(parse.expand_path(codex_home), "auth.json")
            if codex_home
            else codex_auth_path()
        ),
        state_dir=parse.expand_path(opts["state-dir"]),
        session_idle_ttl=durations["session-idle-ttl"],
        session_retention=durations["session-retention"],
        usage_url=_checked("usage-url", parse.parse_http_url, opts["usage-url"]),
        usage_interval=durations["usage-interval"],
        usage_score_ttl=durations["usage-score-ttl"],
        fetch_usage=fetch in ("true", "1", "yes", "on"),
        transcripts=parse.expand_path(transcripts) if transcripts else None,
        transcript_max_body=_checked("transcript-max-body", parse.parse_size,
                                     opts["transcript-max-body"]),
        transcript_exclude=tuple(opts["transcript-exclude"]) or ("/models",),
        transcript_retention=durations["transcript-retention"],
        transcript_gcs_uri=gcs_uri,
        transcript_sync_interval=durations["transcript-sync-interval"],
        transcript_sync_timeout=durations["transcript-sync-timeout"],
        gsutil=gsutil,
        cx_switch_interval=durations["cx-switch-interval"],
        allow_hosts=tuple(opts["allow-host"]) + ((host,) if listen is None and host else ()),
        client_tokens=client_tokens,
        usage_raw_days=raw_days,
        usage_retention=durations["usage-retention"],
        anthropic_upstream=_checked(
            "anthropic-upstream", parse.parse_http_url, opts["anthropic-upstream"]
        ),
        anthropic_token_url=_checked(
            "anthropic-token-url", parse.parse_http_url, opts["anthropic-token-url"]
        ),
        anthropic_usage_url=_checked(
            "anthropic-usage-url", parse.parse_http_url, opts["anthropic-usage-url"]
        ),
        overload_wait=durations["overload-wait"],
        account_rescan_interval=durations["account-rescan-interval"],
        drain_timeout=durations["drain-timeout"],
        serve_args=tuple(getattr(opts, "raw_args", ())),
        **shared,
    )


def _shared_state_options(opts: usage.Options, listen: str | None) -> dict[str, Any]:
    """
    ``--state``, ``--state-key-file`` and ``--workers``, and whether this
    process is a worker its parent started.
    """
    from subrouter.jobs import workers as w
    from subrouter.state.settings import parse_state, read_key_file

    url = _checked("state", parse_state, opts["state"])
    key = None
    if url is not None:
        if not opts["state-key-file"]:
            raise usage.UsageError(
                "--state redis://...: needs --state-key-file FILE, the key that encrypts "
                "token sets in Redis (make one with: (umask 077; openssl rand -base64 32 | "
                "tr '+/' '-_' > FILE))"
            )
        key = _checked("state-key-file", read_key_file, parse.expand_path(opts["state-key-file"]))
    elif opts["state-key-file"]:
        raise usage.UsageError("--state-key-file: only used with --state redis://...")
    text = str(opts["workers"]).strip()
    if not text.isdigit() or int(text) < 1:
        raise usage.UsageError("--workers: must be a whole number, 1 or more")
    count = int(text)
    if count > 1 and url is None:
        raise usage.UsageError(
            f"--workers {count}: workers share sticky sessions, limits and token refreshes "
            "through Redis; add --state redis://host:port/db (and --state-key-file)"
        )
    if count > 1 and listen is not None:
        raise usage.UsageError("--workers: listens on --addr only, not on --listen")
    env = os.environ
    index = env.get(w.WORKER_ENV)
    if index is None or count == 1:
        return {"state_url": url, "state_key": key, "workers": count}
    return {
        "state_url": url, "state_key": key, "workers": count, "worker_index": int(index),
        "listen_fd": int(env.get(w.LISTEN_FD_ENV, str(w.LISTEN_FD))),
        "worker_parent": int(env[w.PARENT_ENV]) if env.get(w.PARENT_ENV) else None,
    }


def _client_tokens(path: str | None, expose: bool) -> str | None:
    """
    The client-tokens file, checked now so a bad one stops the daemon with
    its name and line.
    """
    from subrouter.accounts.client_tokens import ClientTokensError, read

    if path is None:
        if expose:
            raise usage.UsageError(
                "--expose: needs --client-tokens FILE, so only holders of a token can use "
                "your accounts (make one with `cx client-token make NAME`)"
            )
        return None
    path = parse.expand_path(path)
    try:
        read(path)
    except ClientTokensError as e:
        raise usage.UsageError(f"--client-tokens: {e}") from None
    return path


class _StartupService(Service):
    """
    Scans the account store before the listener starts; says what the
    daemon serves once it listens.
    """

    def __init__(self, config: Config, store: Any) -> None:
        self._config = config
        self._store = store

    def startService(self) -> None:
        super().startService()
        self._store.scan_now()

    def announce(self) -> None:
        from twisted.logger import Logger

        accounts = self._store.accounts()
        log = Logger()
        if not accounts:
            log.warn(
                "no accounts in {accounts_dir}: add one with `cx add` (a ChatGPT login) or "
                "`cx add-key` (an OpenAI API key); it is picked up within seconds, no restart",
                accounts_dir=self._config.accounts_dir,
            )
        log.info(
            "subrouter {version} listening on {addr}: {count} accounts in {accounts_dir}, "
            "codex upstream {codex}, openai upstream {openai}, anthropic upstream {anthropic}",
            version=_version(),
            addr=self._config.addr,
            count=len(accounts),
            accounts_dir=self._config.accounts_dir,
            codex=self._config.codex_upstream,
            openai=self._config.openai_upstream,
            anthropic=self._config.anthropic_upstream,
        )


class RecorderService(Service):
    """
    Starts the transcript writer thread, and drains and stops it at shutdown.
    """

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder

    def startService(self) -> None:
        super().startService()
        self.recorder.start()

    def stopService(self) -> Any:
        super().stopService()
        self.recorder.stop()


def _version() -> str:
    import subrouter

    return subrouter.__version__


def build_service(config: Config, reactor: Any) -> Daemon | Supervisor:
    """
    Assemble the daemon.

    :param config: the checked settings.
    :param reactor: the reactor everything runs on.
    """
    from autobahn.twisted.resource import WebSocketResource
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.threads import deferToThreadPool

    from subrouter.accounting.ledger import Ledger
    from subrouter.accounting.store import FileUsageStore
    from subrouter.accounts.client_tokens import ClientTokenFile
    from subrouter.accounts.pool import AccountPool
    from subrouter.accounts.refresh import TokenRefresher
    from subrouter.accounts.store import AccountStore
    from subrouter.jobs import every
    from subrouter.jobs.autoswitch import AutoSwitch, environ_for_agents
    from subrouter.jobs.state_file import StateSaver, load_state
    from subrouter.lifecycle import Daemon, Listener
    from subrouter.proxy.resource import ProxyResource
    from subrouter.routing.inflight import InFlight
    from subrouter.routing.usage import UsagePoller
    from subrouter.sessions.placement import Placement
    from subrouter.sessions.table import SessionTable
    from subrouter.sessions.usage import UsageBook
    from subrouter.transcripts.recorder import Recorder
    from subrouter.upstream.client import (
        CONNECT_TIMEOUT,
        PoolService,
        make_agent,
        make_http_client,
        make_pool,
        make_tls_policy,
    )
    from subrouter.upstream.routing import Upstreams
    from subrouter.upstream.stream import DirectEndpoints, StreamAgent
    from subrouter.web.admin import AdminResource
    from subrouter.web.dashboard import add_dashboard
    from subrouter.web.guard import Guard
    from subrouter.web.root import QuietSite, RootResource
    from subrouter.web.transcripts import TranscriptsResource
    from subrouter.web.usage import (
        AccountStatusResource,
        ConversationsResource,
        TokenUsageResource,
    )
    from subrouter.ws.relay import RelayFactory

    def run_blocking(f: Any) -> Any:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f)

    if config.workers > 1 and config.worker_index is None:
        return _supervisor(config, reactor)
    _make_folders(config)
    from subrouter.loop import direct_dispatch

    # every relayed event is a read and a write: no log context around each
    direct_dispatch(reactor)
    inflight = InFlight(reactor)
    pool = make_pool(reactor)
    tls = make_tls_policy(config.ca_bundles)
    agent = make_agent(reactor, pool, tls)
    http = make_http_client(agent)
    # proxied requests take the lean client; Subrouter's own calls take treq
    proxy_agent = StreamAgent(reactor, DirectEndpoints(reactor, tls, CONNECT_TIMEOUT))
    store = AccountStore(config.accounts_dir, run_blocking)
    refresher = TokenRefresher(
        store=store,
        http=http,
        token_url=config.token_url,
        clock=reactor,
        run_blocking=run_blocking,
        codex_auth=config.codex_auth,
        anthropic_token_url=config.anthropic_token_url,
    )
    accounts = AccountPool(store, refresher)
    table = SessionTable(config.session_idle_ttl)
    book = UsageBook()
    shared = None
    if config.state_url is not None and config.state_key is not None:
        from subrouter.state.service import SharedState, shared_state_service

        shared = SharedState.create(
            config.state_url, config.state_key, reactor, book, config.session_idle_ttl,
            {"addr": config.addr, "worker": config.worker_index,
             "parent": config.worker_parent, "workers": config.workers},
            retention=config.session_retention,
        )
        refresher.shared = shared.tokens
    if config.state_dir:
        load_state(config.state_dir, table, book, reactor.seconds())
    placement = Placement(accounts, table, book, reactor)
    shared_placement = None
    if shared is not None:
        from subrouter.routing.shared import SharedPlacement

        shared_placement = SharedPlacement(placement, shared.sessions, reactor)
        # Redis may have lost what it had (or never had it): push this
        # instance's view each time it is reachable again; nothing is replaced
        shared.link.on_reconnect(
            lambda: shared.sessions.restore(table.dump(), reactor.seconds()).addErrback(
                lambda f: None)
        )
    upstreams = Upstreams.from_text(
        config.codex_upstream, config.openai_upstream, config.anthropic_upstream
    )
    poller = UsagePoller(
        store=store, refresher=refresher, http=http, usage_url=config.usage_url, usage=book,
        clock=reactor, score_ttl=config.usage_score_ttl if config.fetch_usage else 0.0,
        anthropic_usage_url=config.anthropic_usage_url,
    )
    usage_store: Any = FileUsageStore(
        os.path.join(config.state_dir, "usage") if config.state_dir else "",
        raw_days=config.usage_raw_days, retention=config.usage_retention,
    )
    if shared is not None:
        # every instance's records in Redis (this one's own files first), so
        # the token usage and the dashboard of any instance show the team's
        from subrouter.accounting.rows import Row, roll_up
        from subrouter.state.usage_rows import RedisUsageStore

        usage_store = RedisUsageStore(
            usage_store, shared.link, reactor,
            encode=Row.as_json, decode=Row.from_json, start=lambda row: row.start,
            roll_up=roll_up, raw_days=config.usage_raw_days, retention=config.usage_retention,
        )
    ledger = Ledger(usage_store, clock=reactor.seconds)

    def spent(rows: list[Any]) -> None:
        # tokens per account feed the forecasts (on the reactor: the book is its)
        for row in rows:
            if row.account and row.total_tokens:
                book.add_tokens(row.account, float(row.total_tokens))

    ledger.subscribe(lambda rows: reactor.callFromThread(spent, rows))
    recorder = (
        Recorder(config.transcripts, clock=reactor.seconds, max_body=config.transcript_max_body,
                 exclude=config.transcript_exclude)
        if config.transcripts else None
    )
    proxy = ProxyResource(
        recorder=recorder,
        placement=placement,
        poller=poller if config.fetch_usage else None,
        refresher=refresher,
        agent=proxy_agent,
        upstreams=upstreams,
        clock=reactor,
        idle_timeout=config.idle_timeout,
        shared=shared_placement,
        ledger=ledger,
        overload_wait=config.overload_wait,
    )
    relay = RelayFactory(
        placement=placement, refresher=refresher, upstreams=upstreams, tls=tls, reactor=reactor,
        recorder=recorder, shared=shared_placement, inflight=inflight, ledger=ledger,
        overload_wait=config.overload_wait,
    )
    admin = AdminResource(accounts, placement, inflight,
                          health_extra=_health_extra(config, shared) if shared else None)
    admin.putChild(b"transcripts", TranscriptsResource(recorder, run_blocking, ledger))
    admin.putChild(b"token-usage", TokenUsageResource(ledger, run_blocking, reactor))
    admin.putChild(b"conversations", ConversationsResource(ledger, placement, recorder,
                                                           run_blocking, reactor))
    admin.putChild(b"account-status", AccountStatusResource(accounts))
    add_dashboard(admin)
    from subrouter.web import why

    admin.putChild(b"sessions", why.SessionsResource(placement))
    admin.putChild(b"placement", why.placement_resource(placement))
    tokens = ClientTokenFile(config.client_tokens) if config.client_tokens else None
    if tokens is not None:
        tokens.load()
    guard = Guard.build(config.allow_hosts, tokens)
    site = QuietSite(RootResource(proxy, admin, WebSocketResource(relay), inflight, guard),
                     reactor=reactor)
    site.header_timeout = config.header_timeout

    async def reread_accounts() -> int:
        await store.rescan()
        return len(store.accounts())

    top = Daemon(
        inflight, reactor, config.drain_timeout,
        first_poll=poller.run_once if config.fetch_usage else None,
        reload=lambda: Deferred.fromCoroutine(reread_accounts()),
    )
    startup = _StartupService(config, store)
    startup.setServiceParent(top)
    endpoint: Any = serverFromString(reactor, config.endpoint)
    if config.listen_fd is not None:
        # a worker: the port its --workers parent opened
        from subrouter.jobs.workers import AdoptedEndpoint, ParentWatch

        endpoint = AdoptedEndpoint(reactor, config.listen_fd)
        if config.worker_parent is not None:
            ParentWatch(reactor, config.worker_parent).setServiceParent(top)
    # bound before any job starts: a daemon that cannot listen does nothing
    Listener(endpoint, site, config.addr, announce=startup.announce).setServiceParent(top)
    if config.account_rescan_interval > 0:
        every("account-rescan", config.account_rescan_interval, store.rescan, reactor
              ).setServiceParent(top)
    PoolService(pool, proxy_agent).setServiceParent(top)
    ledger.service(run_blocking if shared is not None else None).setServiceParent(top)
    every("usage-rollup", 3600.0, ledger.maintain, reactor).setServiceParent(top)
    if tokens is not None:
        every("client-tokens", config.account_rescan_interval,
              lambda: run_blocking(tokens.check), reactor).setServiceParent(top)
    if recorder is not None:
        _recording_services(config, recorder, reactor).setServiceParent(top)
    if config.state_dir:
        StateSaver(config.state_dir, table, book, run_blocking, reactor).service(
        ).setServiceParent(top)
    if config.session_retention > 0:
        every("session-retention", min(3600.0, config.session_retention),
              lambda: _forget_sessions(table, reactor.seconds(), config.session_retention),
              reactor).setServiceParent(top)
    if config.fetch_usage and config.cx_switch_interval > 0:
        switcher = AutoSwitch(placement=placement, poller=poller, codex_auth=config.codex_auth,
                              environ=environ_for_agents(), run_blocking=run_blocking,
                              state_dir=config.state_dir)
        every("cx-switch", config.cx_switch_interval, switcher.run_once, reactor
              ).setServiceParent(top)
    if config.fetch_usage:
        every("usage-poller", config.usage_interval, poller.run_once, reactor
              ).setServiceParent(top)
    if shared is not None:
        shared_state_service(shared, store, refresher, reactor).setServiceParent(top)
    return top


def _health_extra(config: Config, shared: Any) -> Any:
    def extra() -> dict[str, Any]:
        import os as _os

        state = shared.describe()
        answer: dict[str, Any] = {"state": state, "pid": _os.getpid()}
        if config.worker_index is not None:
            # the workers of this machine's parent, as they announce themselves
            answer["worker"] = config.worker_index
            answer["workers"] = sorted(
                ({"index": i.get("worker"), "pid": i.get("pid")} for i in state["instances"]
                 if i.get("parent") == config.worker_parent
                 and i.get("host") == shared.registry.info["host"]),
                key=lambda row: row["index"] if row["index"] is not None else -1,
            )
        return answer

    return extra


def _supervisor(config: Config, reactor: Any) -> Supervisor:
    """
    The parent of ``--workers N``: it opens the port and runs the workers.
    """
    from functools import partial

    from subrouter.jobs import workers

    host, port = parse.parse_addr(config.addr)
    if host.lower() == "localhost":
        host = "127.0.0.1"
    supervisor = workers.Supervisor(
        argv=workers.worker_command(config.serve_args), count=config.workers,
        listener=partial(workers.open_listener, host, port), reactor=reactor,
    )
    supervisor.setName("supervisor")
    return supervisor


def _forget_sessions(table: Any, now: float, retention: float) -> None:
    from twisted.logger import Logger

    forgotten = table.forget(now - retention)
    if forgotten:
        Logger(namespace="subrouter.sessions").info(
            "forgot the accounts of {count} conversations unseen for {days:g} days "
            "(--session-retention)", count=forgotten, days=round(retention / 86400, 1))


def _recording_services(config: Config, recorder: Any, reactor: Any) -> MultiService:
    """
    The transcript writer, its retention job and its mirror to GCS.
    """
    from subrouter.jobs import every
    from subrouter.jobs.transcript_sync import GsutilSync

    services = MultiService()
    RecorderService(recorder).setServiceParent(services)
    if config.transcript_retention > 0:
        every("transcript-retention", min(3600.0, config.transcript_retention),
              lambda: recorder.expire(config.transcript_retention), reactor
              ).setServiceParent(services)
    if config.transcript_gcs_uri and config.gsutil:
        mirror = GsutilSync(
            directory=config.transcripts or "", uri=config.transcript_gcs_uri,
            gsutil=config.gsutil, spawn=reactor.spawnProcess, clock=reactor,
            timeout=config.transcript_sync_timeout,
        )
        every("transcript-sync", config.transcript_sync_interval, mirror.run_once, reactor
              ).setServiceParent(services)
    return services


def _make_folders(config: Config) -> None:
    """
    Create the folders the daemon writes in (its state, its transcripts)
    before anything starts, so one that cannot be made stops start-up with a
    one-line reason instead of a traceback from a service half started.

    :raises SystemExit: naming the option and why.
    """
    for option, path in (("state-dir", config.state_dir), ("transcripts", config.transcripts)):
        if not path:
            continue
        problem = not_a_folder(path)
        if problem:
            raise SystemExit(f"subrouter: --{option}: {problem}")
        try:
            ensure_private_directory(path)
        except OSError as e:
            raise SystemExit(
                f"subrouter: --{option}: cannot create {path}: {e.strerror or e}"
            ) from None


def makeService(options: Options) -> IService:
    """
    The twistd entry point.
    """
    from twisted.internet import reactor

    from subrouter.loop import settle_collector

    daemon = build_service(options.config, reactor)
    reactor.callWhenRunning(daemon.install_signal_handlers, reactor)
    settle_collector(reactor)
    twistd = getattr(options, "parent", None)
    where = _twistd_text_log(twistd) if twistd is not None else None
    if where is not None:
        from subrouter.logs import text_observer

        return _LogsThrough(daemon, text_observer(where))
    return daemon


def _twistd_text_log(twistd: Any) -> Any:
    """
    Where twistd is about to print its own text log lines, opened the way it
    would open it: stdout (``-n``, or ``--logfile -``), or its log file
    (``--logfile PATH``; ``twistd.log`` for a daemon), rotated as twistd
    rotates it (at 1 MB, and on SIGUSR1). Subrouter's observer writes the
    very same lines there, scrubbed of anything that looks like a credential,
    at a fraction of the cost. None where twistd logs otherwise (``--syslog``,
    ``--logger``), or would refuse the options: its choice stands.

    :raises SystemExit: with a one-line reason when the log file cannot be
        opened.
    """
    try:
        foreground = twistd["nodaemon"] or twistd["debug"]
        name = twistd["logfile"]
        if twistd["syslog"] or twistd["logger"]:
            return None
    except KeyError:
        return None  # not twistd's options as we know them: leave its logging alone
    if name == "-" or (not name and foreground):
        return sys.stdout if foreground else None  # a daemon on stdout: twistd says no
    from twisted.python.logfile import LogFile

    path = name or "twistd.log"
    try:
        log_file = LogFile.fromFullPath(path)
    except OSError as e:
        # what twistd itself would have met a moment later, with a traceback
        raise SystemExit(f"twistd: cannot open the log file {path}: {e.strerror}") from None
    if not signal.getsignal(signal.SIGUSR1):
        # as twistd does: SIGUSR1 rotates the file, unless something else has it

        def rotate(number: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return log_file


class _LogsThrough(MultiService):
    """
    The daemon as twistd runs it, carrying the log observer twistd should use:
    set on the application it joins, which is where twistd looks for one
    (``ILogObserver``, as a ``.tac`` file would set it) before making its own.
    """

    def __init__(self, daemon: IService, observer: Any) -> None:
        super().__init__()
        self._observer = observer
        daemon.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        from twisted.logger import ILogObserver
        from twisted.python.components import Componentized

        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, self._observer)
        super().setServiceParent(parent)
