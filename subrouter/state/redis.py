# -*- test-case-name: tests.test_state_redis -*-
"""
The state several Subrouter instances share through Redis.

- Sticky assignments and live conversation counts (:class:`SharedSessions`):
  one Lua script per request of a known conversation (it reads the
  assignment and counts the conversation live on its account), one more when
  a conversation is placed or moved.
- The rate-limit book and exhaustion marks (:class:`UsageSync`): pushed and
  pulled in one script four times a second, never from the per-event path.
- Token sets and the refresh lock (:class:`SharedTokenSets`): sets encrypted
  with the ``--state-key-file`` key, newest (latest expiry) wins; every
  instance takes newer sets into its own account files once a second.
- Who is serving (:class:`Registry`), for ``/_subrouter/health``.

Every key starts with ``subrouter:``. Every call degrades: while Redis is
unreachable each instance serves from its own view (see :mod:`.link`), and
when it is back each pushes that view again, first writer winning for
assignments and newest stamp for everything else.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
from collections.abc import Iterable
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from subrouter.accounts.refresh import TokenRefresher, token_set_of
from subrouter.accounts.shared import Lease, TokenSet
from subrouter.accounts.store import AccountStore
from subrouter.state.link import RedisLink, Unavailable

_log = Logger()

PREFIX = "subrouter:"
#: how long an assignment is kept after its conversation was last seen, unless
#: the daemon says otherwise (``--session-retention``; 0 keeps every one)
ASSIGNMENT_KEEP = 30 * 86400
#: how long a refresh may hold an account's lock (the token call times out at 30 s)
LOCK_TTL = 45.0
#: how often a waiting refresh looks at the lock again
LOCK_POLL = 0.05
#: how often the rate-limit book is pushed and pulled
USAGE_SYNC_INTERVAL = 0.25
#: how often token sets and the instance registry are synchronised
TOKEN_SYNC_INTERVAL = 1.0
#: an instance not heard from for this long is no longer listed
INSTANCE_STALE = 5.0


def _member(agent: str, key: str) -> str:
    return f"{agent}\n{key}"


def _assignment_key(agent: str, key: str) -> str:
    return f"{PREFIX}a:{agent}:{key}"


# -- sticky assignments and live counts ---------------------------------------

_LOOKUP = """
local raw = redis.call('GET', KEYS[1])
local now = tonumber(ARGV[1])
local horizon = now - tonumber(ARGV[2])
if raw then
  local a = cjson.decode(raw)
  a.last_seen = now
  a.requests = (a.requests or 0) + 1
  if ARGV[4] ~= '' then a.user_email = ARGV[4] end
  raw = cjson.encode(a)
  redis.call('SET', KEYS[1], raw)
  if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
  if not a.fallback then
    local live = ARGV[6] .. 'live:' .. a.account_id
    redis.call('ZADD', live, now, ARGV[3])
    redis.call('ZREMRANGEBYSCORE', live, '-inf', horizon)
  end
  return {raw}
end
local counts = {''}
for i = 7, #ARGV do
  local live = ARGV[6] .. 'live:' .. ARGV[i]
  redis.call('ZREMRANGEBYSCORE', live, '-inf', horizon)
  counts[#counts + 1] = redis.call('ZCARD', live)
end
return counts
"""

_ASSIGN = """
local raw = redis.call('GET', KEYS[1])
local now = tonumber(ARGV[1])
local a
if raw then
  a = cjson.decode(raw)
  if ARGV[8] == '1' and a.account_id ~= ARGV[4] then
    return raw
  end
  if a.account_id ~= ARGV[4] then
    redis.call('ZREM', ARGV[7] .. 'live:' .. a.account_id, ARGV[3])
  end
  a.account_id = ARGV[4]
  a.requests = (a.requests or 0) + 1
else
  a = {account_id = ARGV[4], first_seen = now, requests = 1, fallback = (ARGV[5] == '1')}
end
a.last_seen = now
if ARGV[6] ~= '' then a.user_email = ARGV[6] end
raw = cjson.encode(a)
redis.call('SET', KEYS[1], raw)
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if not a.fallback then
  redis.call('ZADD', ARGV[7] .. 'live:' .. a.account_id, now, ARGV[3])
end
return raw
"""

# restore assignments after Redis lost them: first writer wins, nothing is overwritten
_RESTORE = """
local n = 0
for i = 1, #ARGV, 4 do
  local key = ARGV[i]
  if redis.call('SET', key, ARGV[i + 1], 'NX') then
    if tonumber(ARGV[i + 2]) > 0 then redis.call('EXPIRE', key, ARGV[i + 2]) end
    n = n + 1
    local a = cjson.decode(ARGV[i + 1])
    if ARGV[i + 3] ~= '' and not a.fallback then
      redis.call('ZADD', KEYS[1] .. 'live:' .. a.account_id, a.last_seen, ARGV[i + 3])
    end
  end
end
return n
"""


@attrs.frozen
class SharedAssignment:
    account_id: str
    first_seen: float
    last_seen: float
    requests: int
    fallback: bool
    user_email: str | None


def _parse_assignment(raw: object) -> SharedAssignment | None:
    if not isinstance(raw, (str, bytes)) or not raw:
        return None
    try:
        doc = json.loads(raw)
        email = doc.get("user_email")
        return SharedAssignment(
            account_id=str(doc["account_id"]),
            first_seen=float(doc.get("first_seen", 0)),
            last_seen=float(doc.get("last_seen", 0)),
            requests=int(doc.get("requests", 0)),
            fallback=bool(doc.get("fallback", False)),
            user_email=email if isinstance(email, str) and email else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@attrs.frozen
class Lookup:
    """
    What Redis knows of a conversation: its assignment, or (when it has
    none) the live conversations per account.
    """

    assignment: SharedAssignment | None
    counts: dict[str, int] | None


class SharedSessions:
    """
    Sticky assignments and live counts in Redis.

    :param idle_ttl: a conversation unseen this long is no longer live.
    :param keep: seconds an assignment is kept after its conversation was
        last seen (``--session-retention``, as the local table forgets it);
        0 keeps every one.
    """

    def __init__(self, link: RedisLink, idle_ttl: float, keep: float = ASSIGNMENT_KEEP) -> None:
        self._link = link
        self.idle_ttl = idle_ttl
        # Redis counts expiry in whole seconds: a fraction rounds up
        self.keep = max(0, math.ceil(keep))

    @property
    def up(self) -> bool:
        return self._link.up

    def lookup(
        self, agent: str, key: str, now: float, email: str | None, accounts: Iterable[str]
    ) -> Deferred[Lookup]:
        """
        One round trip: the conversation's assignment (counted live and
        touched), or the live counts of ``accounts`` when it has none.

        :raises Unavailable: as a failed Deferred.
        """
        ids = list(accounts)
        d = self._link.eval(
            _LOOKUP, [_assignment_key(agent, key)],
            [repr(now), repr(self.idle_ttl), _member(agent, key), email or "",
             str(self.keep), PREFIX, *ids],
        )

        def parse(reply: Any) -> Lookup:
            if not isinstance(reply, list) or not reply:
                return Lookup(None, None)
            if reply[0]:
                return Lookup(_parse_assignment(reply[0]), None)
            counts = {}
            for account_id, n in zip(ids, reply[1:], strict=False):
                value = int(n)
                if value:
                    counts[account_id] = value
            return Lookup(None, counts)

        return d.addCallback(parse)

    def assign(
        self, agent: str, key: str, account_id: str, now: float, *, fallback: bool,
        email: str | None, only_if_new: bool,
    ) -> Deferred[SharedAssignment | None]:
        """
        Pin a conversation to an account. With ``only_if_new``, an
        assignment another instance made first is kept and returned instead.

        :raises Unavailable: as a failed Deferred.
        """
        d = self._link.eval(
            _ASSIGN, [_assignment_key(agent, key)],
            [repr(now), str(self.keep), _member(agent, key), account_id,
             "1" if fallback else "0", email or "", PREFIX, "1" if only_if_new else "0"],
        )
        return d.addCallback(_parse_assignment)

    def restore(self, rows: Iterable[dict[str, Any]], now: float) -> Deferred[int]:
        """
        Put locally known assignments back into Redis (after it lost them),
        never replacing one it has.
        """
        args: list[str] = []
        horizon = now - self.idle_ttl
        for row in rows:
            doc = {
                "account_id": row["account_id"], "first_seen": row["first_seen"],
                "last_seen": row["last_seen"], "requests": row.get("requests", 0),
                "fallback": bool(row.get("fallback")),
            }
            if row.get("user_email"):
                doc["user_email"] = row["user_email"]
            live = not doc["fallback"] and float(row["last_seen"]) > horizon
            args += [_assignment_key(row["agent"], row["key"]), json.dumps(doc),
                     str(self.keep), _member(row["agent"], row["key"]) if live else ""]
        if not args:
            return succeed(0)
        d: Deferred[int] = self._link.eval(_RESTORE, [PREFIX], args, timeout=5.0)
        return d


# -- the rate-limit book -------------------------------------------------------


class UsageBook(Protocol):
    """
    What is synchronised of :class:`subrouter.sessions.usage.UsageBook`
    (a sibling layer, so named by its shape here).
    """

    dirty: set[str]

    def ids(self) -> Iterable[str]: ...

    def export(self, account_id: str) -> dict[str, dict[str, Any]]: ...

    def merge(self, account_id: str, kind: str, doc: dict[str, Any]) -> bool: ...

_SYNC_USAGE = """
local changed = false
for i = 2, #ARGV, 3 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if (not old) or (tonumber(cjson.decode(old).at) or 0) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    changed = true
  end
end
if changed then redis.call('INCR', KEYS[2]) end
local version = redis.call('GET', KEYS[2]) or '0'
if version == ARGV[1] then return {version} end
return {version, redis.call('HGETALL', KEYS[1])}
"""


class UsageSync:
    """
    Pushes this instance's changes to the rate-limit book and pulls the
    others', in one script per tick.
    """

    def __init__(self, link: RedisLink, book: UsageBook) -> None:
        self._link = link
        self._book = book
        self._version = ""
        self._running = False
        link.on_reconnect(self.resync)

    def resync(self) -> None:
        """
        Push everything again: Redis may have lost it.
        """
        self._book.dirty.update(self._book.ids())
        self._version = ""

    def tick(self) -> Deferred[None] | None:
        if self._running or not self._link.up:
            return None
        book = self._book
        dirty, book.dirty = book.dirty, set()
        args: list[str] = [self._version]
        for account_id in sorted(dirty):
            for kind, doc in book.export(account_id).items():
                args += [f"{account_id}\t{kind}", repr(doc["at"]), json.dumps(doc)]
        self._running = True
        d = self._link.eval(_SYNC_USAGE, [PREFIX + "usage", PREFIX + "usage:version"], args)

        def merge(reply: Any) -> None:
            if not isinstance(reply, list) or not reply:
                return
            self._version = str(reply[0])
            if len(reply) < 2 or not isinstance(reply[1], list):
                return
            flat = reply[1]
            for i in range(0, len(flat) - 1, 2):
                field, raw = str(flat[i]), flat[i + 1]
                account_id, _, kind = field.rpartition("\t")
                try:
                    doc = json.loads(raw)
                except ValueError:
                    continue
                book.merge(account_id, kind, doc)

        def failed(failure: Any) -> None:
            book.dirty.update(dirty)  # pushed next time
            failure.trap(Unavailable)

        def done(_: object) -> None:
            self._running = False

        d.addCallbacks(merge, failed)
        d.addErrback(lambda f: _log.failure("synchronising the rate-limit book failed", f))
        d.addBoth(done)
        return d


# -- token sets and the refresh lock -------------------------------------------

_PUBLISH_TOKENS = """
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > old then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _RedisLease:
    def __init__(self, link: RedisLink, key: str, nonce: str) -> None:
        self._link = link
        self._key = key
        self._nonce = nonce

    def release(self) -> Deferred[None]:
        d = self._link.eval(_RELEASE, [self._key], [self._nonce])
        # an unreachable Redis lets the lock expire by itself
        d.addErrback(lambda f: f.trap(Unavailable))
        return d.addCallback(lambda _: None)


class SharedTokenSets:
    """
    :class:`subrouter.accounts.shared.SharedTokens` on Redis, with token
    sets encrypted by a Fernet key.
    """

    def __init__(self, link: RedisLink, key: bytes, clock: IReactorTime) -> None:
        from cryptography.fernet import Fernet

        self._link = link
        self._fernet = Fernet(key)
        self._clock = clock
        self._undecryptable: set[str] = set()
        self._syncing = False
        #: refreshes that found Redis unreachable and used the local lock only
        self.local_fallbacks = 0

    async def _acquire(self, account_id: str) -> Lease | None:
        key = f"{PREFIX}lock:refresh:{account_id}"
        nonce = secrets.token_hex(16)
        deadline = self._clock.seconds() + LOCK_TTL + 5.0
        while True:
            try:
                got = await self._link.call("set", key, nonce, None, int(LOCK_TTL * 1000), True)
            except Unavailable:
                self.local_fallbacks += 1
                _log.warn("Redis is unreachable: refreshing {account} under this instance's "
                          "lock only", account=account_id)
                return None
            if got:
                return _RedisLease(self._link, key, nonce)
            if self._clock.seconds() > deadline:
                return None  # cannot happen while the lock expires; never wait forever
            await deferLater(self._clock, LOCK_POLL, lambda: None)

    def acquire(self, account_id: str) -> Deferred[Lease | None]:
        return Deferred.fromCoroutine(self._acquire(account_id))

    def _decrypt(self, account_id: str, blob: object) -> TokenSet | None:
        from cryptography.fernet import InvalidToken

        if not isinstance(blob, (str, bytes)) or not blob:
            return None
        try:
            doc = json.loads(self._fernet.decrypt(blob))
            result = TokenSet(
                access_token=doc["access_token"], refresh_token=doc["refresh_token"],
                id_token=doc["id_token"], expires_at=float(doc["expires_at"]),
                last_refresh=float(doc["last_refresh"]),
            )
        except InvalidToken:
            if account_id not in self._undecryptable:
                self._undecryptable.add(account_id)
                _log.error(
                    "the token set of {account} in Redis cannot be decrypted: do all "
                    "instances use the same --state-key-file?", account=account_id,
                )
            return None
        except (ValueError, KeyError, TypeError):
            return None
        self._undecryptable.discard(account_id)
        return result

    def newest(self, account_id: str) -> Deferred[TokenSet | None]:
        d = self._link.call("hget", PREFIX + "tokens", account_id)
        d.addCallback(lambda blob: self._decrypt(account_id, blob))
        d.addErrback(lambda f: f.trap(Unavailable) and None)
        return d

    def publish(self, account_id: str, tokens: TokenSet) -> Deferred[bool]:
        doc = {**tokens.as_tokens(), "expires_at": tokens.expires_at,
               "last_refresh": tokens.last_refresh}
        blob = self._fernet.encrypt(json.dumps(doc).encode()).decode("ascii")
        d = self._link.eval(
            _PUBLISH_TOKENS, [PREFIX + "tokens", PREFIX + "tokens:expiry"],
            [account_id, repr(tokens.expires_at), blob], timeout=2.0,
        )
        d.addCallback(lambda n: bool(int(n)))

        def unreachable(failure: Any) -> bool:
            failure.trap(Unavailable)
            _log.warn("could not store the new tokens of {account} in Redis; other instances "
                      "take them once it is back", account=account_id)
            return False

        return d.addErrback(unreachable)

    async def _sync(self, store: AccountStore, refresher: TokenRefresher) -> None:
        try:
            expiries = await self._link.call("hgetall", PREFIX + "tokens:expiry")
        except Unavailable:
            return
        remote: dict[str, float] = {}
        if isinstance(expiries, dict):
            for account_id, value in expiries.items():
                try:
                    remote[str(account_id)] = float(value)
                except (TypeError, ValueError):
                    continue
        now = self._clock.seconds()
        for account in store.accounts():
            if not account.is_codex_login or account.expires_at is None:
                continue
            theirs = remote.get(account.id)
            if theirs is None or account.expires_at > theirs:
                mine = token_set_of(account, now)
                if mine is not None:
                    await self.publish(account.id, mine)
            elif theirs > account.expires_at:
                newest = await self.newest(account.id)
                if newest is not None:
                    await refresher.adopt_if_newer(account.id, newest)

    def sync(self, store: AccountStore, refresher: TokenRefresher) -> Deferred[None] | None:
        """
        Store every set of ours that is newer than Redis's, take every newer
        one into our files. Never fails.
        """
        if self._syncing or not self._link.up:
            return None
        self._syncing = True
        d = Deferred.fromCoroutine(self._sync(store, refresher))

        def done(result: object) -> None:
            self._syncing = False
            if result is not None and hasattr(result, "getTraceback"):
                _log.failure("synchronising token sets with Redis failed", result)  # type: ignore[arg-type]

        d.addBoth(done)
        return d


# -- who is serving -----------------------------------------------------------


class Registry:
    """
    Every instance (and worker) announces itself once a second; the health
    endpoint lists the ones heard from lately.
    """

    def __init__(self, link: RedisLink, clock: IReactorTime, info: dict[str, Any]) -> None:
        self._link = link
        self._clock = clock
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self.info = dict(info, host=socket.gethostname(), pid=os.getpid(),
                         started=clock.seconds())
        self.seen: dict[str, dict[str, Any]] = {}

    async def _beat(self) -> None:
        now = self._clock.seconds()
        key = PREFIX + "instances"
        try:
            await self._link.call("hset", key, self.id, json.dumps(dict(self.info, seen=now)))
            raw = await self._link.call("hgetall", key)
        except Unavailable:
            return
        seen: dict[str, dict[str, Any]] = {}
        stale: list[str] = []
        for instance, value in (raw or {}).items():
            try:
                doc = json.loads(value)
            except ValueError:
                continue
            if now - float(doc.get("seen", 0)) > INSTANCE_STALE:
                stale.append(str(instance))
            else:
                seen[str(instance)] = doc
        self.seen = seen
        if stale:
            try:
                await self._link.call("hdel", key, stale)
            except Unavailable:
                pass

    def beat(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._beat())
        d.addErrback(lambda f: _log.failure("announcing this instance to Redis failed", f))
        return d

    def leave(self) -> Deferred[Any]:
        return self._link.call("hdel", PREFIX + "instances", [self.id]).addErrback(
            lambda f: None
        )
