"""The twin's scheduler: vLLM v1's ``Scheduler.schedule()`` over counted KV blocks, without a clock.

There is no "prefill phase" or "decode phase" (vLLM's own note): every step gives each request the tokens it lacks
(``num_tokens - num_computed_tokens``) within a token budget, so chunked prefill, decode and recompute after
preemption are one rule. Order of one step:

1. Running requests first, in running order: each takes its tokens from the budget and the KV blocks they need.
   When the blocks are not there, preempt by recompute (FCFS: the newest running request; priority: the least
   urgent), until the request fits or it preempted itself.
2. Then waiting requests, in queue order (FCFS, or (priority, arrival) under priority), up to ``max_num_seqs``, as
   long as budget and blocks last. Skipped entirely in a step that preempted (vLLM does the same, so that a freed
   block goes to the preempted request rather than to a newcomer). Under priority, a waiting request that does not
   fit may preempt running requests of strictly lower priority (vLLM v0's ``_schedule_priority_preemption``;
   v0 compares (priority, arrival), so an older request of equal priority preempts too: we do not, so that
   equal-priority work is never churned by recompute).

The scheduler never reads a clock: ``schedule(now)`` stamps first-scheduled times with the ``now`` it is given and
``update_from_output(out, t_end)`` stamps tokens with ``t_end``.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from sysaware.config import SchedulingPolicy, TwinSettings
from sysaware.engines.twin.kv_cache import BlockPool
from sysaware.engines.twin.protocols import BatchShape
from sysaware.engines.twin.request import RequestStatus, TwinRequest


class FCFSQueue:
    """Waiting requests in arrival order; preempted ones go back to the front."""

    __slots__ = ("_q",)

    def __init__(self) -> None:
        self._q: deque[TwinRequest] = deque()

    def add(self, req: TwinRequest) -> None:
        self._q.append(req)

    def prepend(self, req: TwinRequest) -> None:
        self._q.appendleft(req)

    def peek(self) -> TwinRequest:
        return self._q[0]

    def pop(self) -> TwinRequest:
        return self._q.popleft()

    def remove(self, req: TwinRequest) -> None:
        self._q.remove(req)

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self):
        return iter(self._q)


class PriorityQueue:
    """Waiting requests by (priority, arrival): a preempted request simply re-enters at its rank."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[float, float, int, TwinRequest]] = []

    def add(self, req: TwinRequest) -> None:
        heapq.heappush(self._heap, (req.priority, req.arrival_s, req.arrival_seq, req))

    prepend = add

    def peek(self) -> TwinRequest:
        return self._heap[0][3]

    def pop(self) -> TwinRequest:
        return heapq.heappop(self._heap)[3]

    def remove(self, req: TwinRequest) -> None:
        self._heap = [e for e in self._heap if e[3] is not req]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self):
        return (e[3] for e in sorted(self._heap))


@dataclass(slots=True)
class SchedulerOutput:
    """What one ``schedule()`` decided. Requests are keyed by identity; the dict keeps scheduling order."""

    num_scheduled_tokens: dict[TwinRequest, int] = field(default_factory=dict)  # tokens computed this step, tokens
    preempted: list[TwinRequest] = field(default_factory=list)  # preempted during this schedule, in order
    num_admitted: int = 0  # waiting requests that joined the running batch
    # The batch's shape, summed while scheduling (see protocols.BatchShape for the meaning of each sum).
    prefill_tokens: int = 0  # tokens
    prefill_attended: int = 0  # token pairs
    decode_seqs: int = 0
    decode_context: int = 0  # tokens

    def add(self, req: TwinRequest, num_new: int) -> None:
        self.num_scheduled_tokens[req] = num_new
        if _is_decode(req, num_new):
            self.decode_seqs += 1
            self.decode_context += req.num_tokens
        else:
            self.prefill_tokens += num_new
            self.prefill_attended += num_new * (req.num_computed_tokens + num_new)

    def remove(self, req: TwinRequest) -> int:
        """Take back a request scheduled earlier in this step (a victim of priority preemption): its tokens."""
        num_new = self.num_scheduled_tokens.pop(req)
        if _is_decode(req, num_new):
            self.decode_seqs -= 1
            self.decode_context -= req.num_tokens
        else:
            self.prefill_tokens -= num_new
            self.prefill_attended -= num_new * (req.num_computed_tokens + num_new)
        return num_new

    @property
    def shape(self) -> BatchShape:
        return BatchShape(self.prefill_tokens, self.prefill_attended, self.decode_seqs, self.decode_context)


@dataclass(slots=True)
class DecodeRun:
    """A fast-forwarded run of identical decode steps, kept so that a driver can cut it short."""

    requests: list[TwinRequest]  # the batch, every one advanced by len(times_s) tokens
    times_s: np.ndarray  # end of each step, engine clock, s
    finished: list[TwinRequest]  # finished at the last step
    running_before: list[TwinRequest]  # the running list before they were removed, in order


class Scheduler:
    """Running list, waiting queue and KV blocks of one replica; decides each step's batch."""

    def __init__(self, settings: TwinSettings, pool: BlockPool) -> None:
        self.max_num_seqs = settings.max_num_seqs
        self.max_num_batched_tokens = settings.max_num_batched_tokens
        self.is_priority = settings.scheduling_policy == SchedulingPolicy.PRIORITY
        self.pool = pool
        self.waiting: FCFSQueue | PriorityQueue = PriorityQueue() if self.is_priority else FCFSQueue()
        self.running: list[TwinRequest] = []
        self.num_preemptions_total = 0

    def add_request(self, req: TwinRequest) -> None:
        assert req.status is RequestStatus.WAITING, req.status
        self.waiting.add(req)

    def has_work(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    # ---- one step ------------------------------------------------------------------------------------------

    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens

        # Running requests first.
        budget = self._schedule_running(out, budget)

        # Then waiting requests, unless this step already had to preempt.
        if not out.preempted:
            budget = self._schedule_waiting(out, budget, now)

        assert budget >= 0
        assert len(self.running) <= self.max_num_seqs
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        # The hottest loop of the twin (every running request, every step): locals, integer arithmetic, the pool's
        # counter updated in place, and the decode case (one token, usually no new block) kept straight.
        running = self.running
        pool = self.pool
        block_size = pool.block_size
        scheduled = out.num_scheduled_tokens
        decode_seqs = decode_context = 0
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            computed = req.num_computed_tokens
            num_new = req.num_tokens - computed
            if num_new > budget:
                num_new = budget
            need = -(-(computed + num_new) // block_size) - req.num_blocks

            if need > pool.num_free_blocks:
                # Not enough free blocks: preempt until it fits, or until it was the one preempted.
                fits = True
                while need > pool.num_free_blocks:
                    if self.is_priority:
                        victim = max(running, key=_priority_key)
                        running.remove(victim)
                        if victim in scheduled:  # it was scheduled earlier in this loop: undo that
                            if _is_decode(victim, scheduled[victim]):
                                decode_seqs -= 1
                                decode_context -= victim.num_tokens
                                budget += scheduled.pop(victim)
                            else:
                                budget += out.remove(victim)
                            i -= 1
                    else:
                        victim = running.pop()
                    self._preempt(victim)
                    out.preempted.append(victim)
                    if victim is req:
                        fits = False
                        break
                if not fits:
                    break

            if need:
                pool.num_free_blocks -= need
                req.num_blocks += need
            budget -= num_new
            if num_new == 1 and req.num_output_tokens and computed + 1 == req.num_tokens:
                scheduled[req] = 1
                decode_seqs += 1
                decode_context += computed + 1
            else:
                out.add(req, num_new)  # a prefill chunk (first, continued, or recompute after preemption)
            i += 1
        out.decode_seqs += decode_seqs
        out.decode_context += decode_context
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int, now: float) -> int:
        waiting = self.waiting
        running = self.running
        pool = self.pool
        while len(waiting) and budget > 0:
            req = waiting.peek()
            assert req.num_computed_tokens == 0 and req.num_blocks == 0, req

            if len(running) >= self.max_num_seqs:
                refund = self._preempt_less_urgent(req, out, blocks_short=0) if self.is_priority else None
                if refund is None:
                    break
                budget += refund
                continue

            num_new = min(req.num_tokens, budget)  # chunked prefill: what the budget allows
            need = pool.blocks_needed(num_new)
            if need > pool.num_free_blocks:
                short = need - pool.num_free_blocks
                refund = self._preempt_less_urgent(req, out, blocks_short=short) if self.is_priority else None
                if refund is None:
                    break
                budget += refund
                continue

            waiting.pop()
            pool.allocate(need)
            req.num_blocks = need
            req.start_running(now)
            running.append(req)
            out.add(req, num_new)
            out.num_admitted += 1
            budget -= num_new
        return budget

    def _preempt_less_urgent(self, urgent: TwinRequest, out: SchedulerOutput, blocks_short: int) -> int | None:
        """Preempt the least urgent running requests of strictly lower priority than ``urgent``, enough to free
        one batch slot and ``blocks_short`` blocks. Returns the budget tokens given back (their scheduled tokens
        this step), or None, preempting nobody, when even all of them would not make room."""
        candidates = sorted(
            (r for r in self.running if r.priority > urgent.priority), key=_priority_key, reverse=True
        )
        chosen: list[TwinRequest] = []
        freed = 0
        for victim in candidates:
            if chosen and freed >= blocks_short:
                break
            chosen.append(victim)
            freed += victim.num_blocks
        if not chosen or freed < blocks_short:
            return None
        refund = 0
        for victim in chosen:
            self.running.remove(victim)
            if victim in out.num_scheduled_tokens:
                refund += out.remove(victim)
            self._preempt(victim)
            out.preempted.append(victim)
        return refund

    def update_from_output(
        self, out: SchedulerOutput, t_end: float
    ) -> tuple[int, list[TwinRequest], list[TwinRequest]]:
        """Advance every scheduled request by its tokens; a request that caught up samples one token at ``t_end``.
        Returns (tokens sampled, requests that emitted their first token, requests that finished)."""
        num_sampled = 0
        first_tokens: list[TwinRequest] = []
        finished: list[TwinRequest] = []
        for req, num_new in out.num_scheduled_tokens.items():
            req.num_computed_tokens += num_new
            if req.num_computed_tokens == req.num_tokens:  # a partial prefill chunk samples nothing
                num_sampled += 1
                if req.emit_token(t_end):
                    first_tokens.append(req)
                if req.num_output_tokens >= req.num_target_tokens:
                    finished.append(req)
        if finished:
            self._finish_all(finished, t_end)
        return num_sampled, first_tokens, finished

    # ---- fast-forward over identical decode steps -----------------------------------------------------------

    def steady_decode_steps(self, out: SchedulerOutput) -> int:
        """How many decode steps, this one included, would repeat exactly this batch (1 if it is not such a step).

        A decode-only step that scheduled every running request, admitted nobody and preempted nobody repeats
        unchanged until a request finishes or a block allocation would fail: admission stays blocked because the
        running set, the budget left over and the head of the queue do not change, and free blocks only shrink.
        (No arrival can intervene: the caller bounds the run by the next external event.)
        """
        scheduled = out.num_scheduled_tokens
        num_seqs = len(scheduled)
        if out.preempted or out.num_admitted or out.decode_seqs != num_seqs or num_seqs != len(self.running):
            return 1
        steps_to_finish = min([req.num_target_tokens - req.num_output_tokens for req in scheduled])
        if steps_to_finish <= 1:
            return 1
        # The step (1-based, this one is 1) at which each request first needs one more block. Blocks for step 1 are
        # already held, so every offset lies in [2, block_size + 1].
        block_size = self.pool.block_size
        first_block_steps = [req.num_blocks * block_size - req.num_computed_tokens + 1 for req in scheduled]
        # Every request needs a block each block_size steps, at its offset; offsets span less than block_size, so
        # crossings come in rounds and the (free+1)-th crossing, 0-based index `free`, is the first that fails.
        first_block_steps.sort()
        free = self.pool.num_free_blocks
        n = len(first_block_steps)
        steps_before_full = first_block_steps[free % n] + block_size * (free // n) - 1
        return min(steps_to_finish, steps_before_full)

    def advance_decode_run(self, out: SchedulerOutput, times_s: np.ndarray) -> DecodeRun:
        """Apply ``len(times_s)`` steps of a steady decode batch (see ``steady_decode_steps``) in one go.
        ``times_s`` holds the end of each step; every request keeps a reference to the same array."""
        block_size = self.pool.block_size
        running_before = list(self.running)
        new_blocks = 0
        finished: list[TwinRequest] = []
        for req in out.num_scheduled_tokens:
            req.emit_decode_run(times_s)
            grow = -(-req.num_computed_tokens // block_size) - req.num_blocks
            req.num_blocks += grow
            new_blocks += grow
            if req.num_output_tokens >= req.num_target_tokens:
                finished.append(req)
        self.pool.allocate(new_blocks)
        if finished:
            self._finish_all(finished, float(times_s[-1]))
        return DecodeRun(list(out.num_scheduled_tokens), times_s, finished, running_before)

    def truncate_decode_run(self, run: DecodeRun, keep_steps: int) -> DecodeRun:
        """Undo the steps of ``run`` after the first ``keep_steps``, as if it had stopped there: a driver learnt of
        an arrival inside the run. Only valid while nothing else happened since the run (arrivals may have been
        queued: they do not touch running requests or blocks). The requests the run finished are running again."""
        num_steps = len(run.times_s)
        assert 1 <= keep_steps < num_steps, (keep_steps, num_steps)
        kept = run.times_s[:keep_steps]
        for req in run.finished:
            req.reopen()
        self.running[:] = run.running_before
        block_size = self.pool.block_size
        surplus_blocks = 0
        for req in run.requests:
            req.undo_decode_steps(num_steps - keep_steps, kept)
            held = -(-req.num_computed_tokens // block_size)
            surplus_blocks += req.num_blocks - held  # negative for the reopened requests, which had freed theirs
            req.num_blocks = held
        if surplus_blocks >= 0:
            self.pool.free(surplus_blocks)
        else:
            self.pool.allocate(-surplus_blocks)
        return DecodeRun(run.requests, kept, [], run.running_before)

    # ---- transitions that touch the queues and the pool ---------------------------------------------------

    def _preempt(self, req: TwinRequest) -> None:
        """Recompute-preemption of a request already taken out of ``running``: free its blocks, requeue it first."""
        self.pool.free(req.num_blocks)
        req.num_blocks = 0
        req.preempt()
        self.waiting.prepend(req)
        self.num_preemptions_total += 1

    def _finish_all(self, finished: list[TwinRequest], t: float) -> None:
        for req in finished:
            self.pool.free(req.num_blocks)
            req.num_blocks = 0
            req.finish(req.stop_status, t)
        self.running[:] = [r for r in self.running if r.status is RequestStatus.RUNNING]

    def abort(self, req: TwinRequest, now: float) -> None:
        """Any unfinished request -> FINISHED_ABORTED, its blocks freed."""
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        else:
            self.waiting.remove(req)
        self.pool.free(req.num_blocks)
        req.num_blocks = 0
        req.finish(RequestStatus.FINISHED_ABORTED, now)


def _is_decode(req: TwinRequest, num_new: int) -> bool:
    """One token and only the last sampled one lacks KV (a recompute's last chunk of one token counts too: same
    work)."""
    return num_new == 1 and req.num_output_tokens > 0 and req.num_computed_tokens == req.num_tokens - 1


def _priority_key(req: TwinRequest) -> tuple[float, float, int]:
    return (req.priority, req.arrival_s, req.arrival_seq)
