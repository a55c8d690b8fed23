"""The run ledger: the one owner of the state of runs and steps (claim, renew, settle, defer,
release, cancel, retry), every write fenced by the run's lease. See ledger/runs.py."""

from mailwright.ledger.batch import BatchLedger, BatchPlan, BatchStep, StepWriter
from mailwright.ledger.lease import Lease
from mailwright.ledger.ranges import BatchRange, RangeLedger
from mailwright.ledger.runs import Attempt, Claim, FailedAttempt, ItemResult, RunLedger

__all__ = [
    "Attempt",
    "BatchLedger",
    "BatchPlan",
    "BatchRange",
    "BatchStep",
    "Claim",
    "FailedAttempt",
    "ItemResult",
    "Lease",
    "RangeLedger",
    "RunLedger",
    "StepWriter",
]
