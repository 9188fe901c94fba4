"""Delivery statuses: amojo's values and the rule that they only move forward (spec §6).

Pure logic, no IO.
"""

from __future__ import annotations

__all__ = ["DELIVERED", "FAILED", "READ", "SENT", "STATUS_NAMES", "is_forward", "status_rank"]

SENT = 0
"""Set by amoCRM itself when the manager sends; ours until the messenger says more."""
DELIVERED = 1
READ = 2
FAILED = -1

STATUS_NAMES = {SENT: "sent", DELIVERED: "delivered", READ: "read", FAILED: "failed"}

# Order of progress. A failure outranks delivered (a message can fail after the messenger
# accepted it) but not read: once the client has read a message, a late failure is noise.
_RANK = {SENT: 0, DELIVERED: 1, FAILED: 2, READ: 3}


def status_rank(status: int) -> int:
    """Position of ``status`` in the order statuses may move through."""
    try:
        return _RANK[status]
    except KeyError:
        raise ValueError(f"unknown delivery status {status!r}; expected one of {sorted(_RANK)}") from None


def is_forward(old: int, new: int) -> bool:
    """True when moving from ``old`` to ``new`` is progress (a late 'delivered' never overwrites 'read')."""
    return status_rank(new) > status_rank(old)
