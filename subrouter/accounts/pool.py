# -*- test-case-name: tests.test_accounts -*-
"""
Which accounts can serve a request right now, and why the others cannot.
Which one a request gets is :mod:`subrouter.sessions.placement`'s choice.
"""

from __future__ import annotations

from typing import Any

from subrouter.accounts.refresh import TokenRefresher
from subrouter.accounts.store import Account, AccountStore


class AccountPool:
    """
    The accounts of a store, with their current usability.
    """

    def __init__(self, store: AccountStore, refresher: TokenRefresher) -> None:
        self.store = store
        self.refresher = refresher

    def why_unusable(self, account: Account) -> str | None:
        """
        Why ``account`` cannot take requests now, or None when it can.
        """
        return account.problem or self.refresher.why_unusable(account)

    def unusable(self) -> list[tuple[Account, str]]:
        """
        Every account that cannot take requests, with the reason.
        """
        found = []
        for account in self.store.accounts():
            reason = self.why_unusable(account)
            if reason is not None:
                found.append((account, reason))
        return found

    def describe(self) -> dict[str, Any]:
        """
        The pool as ``/_subrouter/accounts`` shows it. Never holds a secret.
        """
        now = self.refresher.now()
        rows = []
        for account in self.store.accounts():
            reason = self.why_unusable(account)
            rows.append(
                {
                    "id": account.id,
                    "kind": account.kind.value,
                    "provider": account.provider,
                    "email": account.email,
                    "plan": account.plan,
                    "usable": reason is None,
                    "why_not": reason,
                    "access_token_expires_in": (
                        None if account.expires_at is None else int(account.expires_at - now)
                    ),
                    "source": account.source,
                }
            )
        return {
            "accounts": rows,
            "skipped_files": [
                {"file": path, "error": error}
                for path, error in sorted(self.store.skipped_files().items())
            ],
        }
