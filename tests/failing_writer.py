"""A ledger writer whose disk 'fills up' on its third commit, or the one FAIL_AT names."""

from __future__ import annotations

import os
from typing import Any

from runner import ledgerwriter
from runner.ledger import Ledger, LedgerError

real_commit = Ledger.commit
made = [0]  # commits so far


def failing_commit(self: Ledger, outcomes: Any, marks: Any) -> None:
    if not outcomes and not marks:
        return
    made[0] += 1
    if made[0] >= int(os.environ.get("FAIL_AT", "3")):
        raise LedgerError(f"{self.path}: cannot write the ledger: database or disk is full")
    real_commit(self, outcomes, marks)


if __name__ == "__main__":
    Ledger.commit = failing_commit  # type: ignore[method-assign]
    ledgerwriter.main()
