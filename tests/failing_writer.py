"""A ledger writer whose disk 'fills up' on its third commit, or the one FAIL_AT names."""

from __future__ import annotations

import os

from runner.ledger import Batch, LedgerError, SqliteLedger, writer

real_commit = SqliteLedger.commit
made = [0]  # commits so far


def failing_commit(self: SqliteLedger, batch: Batch) -> None:
    if not batch:
        return
    made[0] += 1
    if made[0] >= int(os.environ.get("FAIL_AT", "3")):
        raise LedgerError(f"{self.path}: cannot write the ledger: database or disk is full")
    real_commit(self, batch)


if __name__ == "__main__":
    SqliteLedger.commit = failing_commit  # type: ignore[method-assign]
    writer.main()
