"""A Job's rules for failed pods: podFailurePolicy, backoff, failed indexes, its deadline.

Read once from the manifest into a frozen `JobPolicy`, so the runner decides
retries the way the Job controller would and a test can check a decision
without running a pod. A local process has no pod conditions, so only
`onExitCodes` rules can match here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadbench.errors import EXIT_OK

MAX_IGNORED = 10  # pods an Ignore rule may discard per index before they count again


def _matches(rule: dict[str, Any], container: str, code: int) -> bool:
    on = rule.get("onExitCodes")
    if not on or on.get("containerName", container) != container:
        return False
    hit = code in on["values"]
    return hit if on["operator"] == "In" else (not hit and code != EXIT_OK)


def failure_action(rules: list[dict[str, Any]], container: str, code: int) -> str:
    """What the Job's podFailurePolicy does with a pod that exited `code`: the first
    matching rule's action, else Count (a local process has no pod conditions)."""
    return next((r["action"] for r in rules if _matches(r, container, code)), "Count")


@dataclass(frozen=True)
class JobPolicy:
    """The parts of a Job's spec that decide how many pods run and when it has failed."""
    name: str
    container: str
    completions: int
    parallelism: int
    indexed: bool
    backoff_limit: int                 # Job-wide failures, when not counted per index
    backoff_per_index: int | None
    max_failed_indexes: int | None
    rules: tuple[dict[str, Any], ...]
    deadline_s: float | None           # activeDeadlineSeconds
    grace_s: float                     # terminationGracePeriodSeconds

    @classmethod
    def of(cls, job: dict[str, Any], completions: int | None = None,
           parallelism: int | None = None) -> JobPolicy:
        """The Job's policy; `completions` caps its indexes and `parallelism` replaces its own."""
        spec = job["spec"]
        pod = spec["template"]["spec"]
        indexed = spec.get("completionMode") == "Indexed"
        total = spec.get("completions", 1)
        return cls(
            name=job["metadata"]["name"],
            container=pod["containers"][0]["name"],
            completions=total if completions is None else min(total, completions),
            parallelism=max(1, parallelism or spec.get("parallelism", 1)),
            indexed=indexed,
            backoff_limit=spec.get("backoffLimit", 6),
            backoff_per_index=spec.get("backoffLimitPerIndex") if indexed else None,
            max_failed_indexes=spec.get("maxFailedIndexes"),
            rules=tuple((spec.get("podFailurePolicy") or {}).get("rules", [])),
            deadline_s=spec.get("activeDeadlineSeconds"),
            grace_s=float(pod.get("terminationGracePeriodSeconds", 30)),
        )

    def action(self, code: int) -> str:
        return failure_action(list(self.rules), self.container, code)

    def index_exhausted(self, attempt: int) -> bool:
        """Whether an index that failed on `attempt` (0 first) has no retry left."""
        return self.backoff_per_index is not None and attempt >= self.backoff_per_index

    def too_many_failures(self, failures: int) -> bool:
        """Whether `failures` counted Job-wide (no per-index limit) exceed backoffLimit."""
        return failures > self.backoff_limit

    def too_many_failed_indexes(self, failed: int) -> bool:
        return self.max_failed_indexes is not None and failed > self.max_failed_indexes
