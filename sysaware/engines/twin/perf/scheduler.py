"""The twin's scheduler: vLLM v1's ``Scheduler.schedule()`` over counted KV blocks, without a clock.

There is no "prefill phase" or "decode phase" (vLLM's own note): every step gives each request the tokens it lacks
(``num_tokens - num_computed_tokens``) within a token budget, so chunked prefill, decode and recompute after
preemption are one rule. Order of one step:

1. Running requests first, in running order: each takes its tokens from the budget and the KV blocks they need.
   When the blocks are not there, preempt by recompute (FCFS: the newest running request; priority: the least
   urgent), until the request fits or it preempted itself.
2. Then waiting requests, in queue order (FCFS, or (priority, arrival) under priority), up to ``max_num_seqs``, as
   long as budget and blocks last; a request is admitted only when the free blocks hold its whole sequence so far
   (vLLM's ``scheduler_reserve_full_isl``, on by default), though it takes only its first chunk's blocks. Skipped entirely in a step that preempted (vLLM does the same, so that a freed
   block goes to the preempted request rather than to a newcomer). Under priority, a waiting request that does not
   fit may preempt running requests of strictly lower priority (vLLM v0's ``_schedule_priority_preemption``;
   v0 compares (priority, arrival), so an older request of equal priority preempts too: we do not, so that
   equal-priority work is never churned by recompute).

The scheduler never reads a clock: ``schedule(now)`` stamps first-scheduled times with the ``now`` it is given and
``update_from_output(out, t_end)`` stamps tokens with ``t_end``.

Decoding requests are advanced without being touched (the ``DecodeBatch``): between steps the running list is the
batch's members first, in running order, then the plain requests (those in prefill: usually none or one). A step whose blocks and budget
suffice for everyone is scheduled from the batch's counters (O(prefills), not O(running)); a step that must preempt,
or anything unusual, takes the general path: the batch is dissolved into plain requests, the loop below runs as
vLLM's does, and the decoders rejoin afterwards. Both paths make the same decisions (tests compare them).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from itertools import accumulate

from sysaware.config import SchedulingPolicy, TwinSettings
from sysaware.engines.twin.perf.kv_cache import BlockPool
from sysaware.engines.twin.protocols import BatchShape
from sysaware.engines.twin.perf.request import RequestStatus, TwinRequest

_RUNNING = RequestStatus.RUNNING  # a module constant: enum member look-ups are slow in Python 3.11


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


class DecodeBatch:
    """The running requests that are decoding, advanced together in O(1) per step.

    A member's computed tokens are ``iteration + batch_offset``: one iteration counter moves every member by one
    token. What a step needs from the members is kept as sums, updated on join and leave:

    - the decode shape: ``num_seqs`` and the summed context ``num_seqs x (iteration + 1) + offset_sum``;
    - new KV blocks: a member needs one when its computed tokens fill their last block, i.e. at the iterations
      ``i`` with ``(i + offset) % block_size == 0``; ``phase_counts[i % block_size]`` counts the members due at
      iteration ``i``. Every member needs exactly one block per ``block_size`` iterations;
    - finishes: a heap of (the iteration count at whose end it emits its last token, running order, request).

        phase_counts   [3, 0, 1, 5, 0, ...]   block_size entries; sums to num_seqs
        iteration i    needs phase_counts[i % block_size] blocks
    """

    __slots__ = ("block_size", "iteration", "num_seqs", "offset_sum", "phase_counts", "finish_heap")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.iteration = 0  # scheduler iterations completed on the replica (the members' shared clock)
        self.num_seqs = 0
        self.offset_sum = 0  # sum of members' batch_offset, tokens
        self.phase_counts = [0] * block_size
        self.finish_heap: list[tuple[int, int, TwinRequest]] = []

    def join(self, req: TwinRequest) -> None:
        offset = req.join_batch(self)
        self.num_seqs += 1
        self.offset_sum += offset
        self.phase_counts[-offset % self.block_size] += 1
        # It emits its last token when computed tokens reach prompt + target - 1.
        finish_iteration = req.num_prompt_tokens + req.num_target_tokens - 1 - offset
        heapq.heappush(self.finish_heap, (finish_iteration, req.running_seq, req))

    def _leave(self, req: TwinRequest) -> None:
        """Out of the sums (the caller handles the heap)."""
        offset = req.batch_offset
        req.leave_batch()
        self.num_seqs -= 1
        self.offset_sum -= offset
        self.phase_counts[-offset % self.block_size] -= 1

    def pop_finished(self) -> list[TwinRequest]:
        """Members whose last token was the current iteration's, in running order, out of the batch."""
        heap = self.finish_heap
        finished = []
        while heap and heap[0][0] == self.iteration:
            req = heapq.heappop(heap)[2]
            self._leave(req)
            finished.append(req)
        assert not heap or heap[0][0] > self.iteration, "a member ran past its last token"
        return finished

    def dissolve(self, running: list[TwinRequest]) -> None:
        """Every member back to plain counts (the general path works on those)."""
        if self.num_seqs:
            for req in running:
                if req.batch is self:
                    self._leave(req)
            assert self.num_seqs == 0 and self.offset_sum == 0
            self.finish_heap.clear()

    def context_tokens(self) -> int:
        """Summed context of the members' next decode (prompt + output so far each), tokens."""
        return self.num_seqs * (self.iteration + 1) + self.offset_sum

    def blocks_for_steps(self, start: int, num_steps: int) -> int:
        """New blocks the members take in the iterations ``start`` .. ``start + num_steps - 1``."""
        size = self.block_size
        cycles, rest = divmod(num_steps, size)
        total = cycles * self.num_seqs
        if rest:
            counts, first = self.phase_counts, start % size
            last = first + rest
            total += sum(counts[first:last]) if last <= size else sum(counts[first:]) + sum(counts[: last - size])
        return total

    def steps_within_blocks(self, free_blocks: int) -> int:
        """How many steps from the current iteration on get their blocks out of ``free_blocks`` (the step after
        them would have to preempt). Each ``block_size`` steps take exactly ``num_seqs`` blocks."""
        size = self.block_size
        cycles, left = divmod(free_blocks, self.num_seqs)
        first = self.iteration % size
        counts = self.phase_counts
        needed = list(accumulate(counts[first:] + counts[:first]))  # cumulative blocks of the next cycle's steps
        return cycles * size + bisect_right(needed, left)

    def steps_hitting_phase(self, offset: int, start: int, stop: int) -> int:
        """Iterations in [start, stop) at which a member with ``offset`` takes a new block."""
        phase = -offset % self.block_size
        return (stop - 1 - phase) // self.block_size - (start - 1 - phase) // self.block_size


class SchedulerOutput:
    """What one ``schedule()`` decided. Plain requests are keyed by identity; the dict keeps scheduling order. The
    batch's members are not listed: ``num_batch_decodes`` of them decode one token each, ahead of the listed ones."""

    __slots__ = (
        "num_scheduled_tokens",
        "preempted",
        "num_admitted",
        "num_batch_decodes",
        "general_path",
        "prefill_tokens",
        "prefill_attended",
        "decode_seqs",
        "decode_context",
    )

    def __init__(self) -> None:
        self.num_scheduled_tokens: dict[TwinRequest, int] = {}  # tokens computed this step, plain requests
        self.preempted: list[TwinRequest] = []  # preempted during this schedule, in order
        self.num_admitted = 0  # waiting requests that joined the running batch
        self.num_batch_decodes = 0  # members of the decode batch decoding this step
        self.general_path = False  # the batch was dissolved for this step
        # The batch's shape, summed while scheduling (see protocols.BatchShape for the meaning of each sum).
        self.prefill_tokens = 0  # tokens
        self.prefill_attended = 0  # token pairs
        self.decode_seqs = 0
        self.decode_context = 0  # tokens

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
    def num_tokens(self) -> int:
        """Tokens computed this step (0: nothing runs)."""
        return self.prefill_tokens + self.decode_seqs

    @property
    def shape(self) -> BatchShape:
        return BatchShape(self.prefill_tokens, self.prefill_attended, self.decode_seqs, self.decode_context)


@dataclass(slots=True)
class DecodeRun:
    """A fast-forwarded run of identical decode steps, kept so that a driver can cut it short."""

    start_iteration: int  # the batch's iteration counter at the run's first step
    num_steps: int
    num_seqs: int  # the batch, every member advanced by num_steps tokens
    finished: list[TwinRequest]  # finished at the last step, out of the batch
    running_before: list[TwinRequest] | None  # the running order before they were removed (None: none finished)


class Scheduler:
    """Running list, waiting queue and KV blocks of one replica; decides each step's batch."""

    def __init__(self, settings: TwinSettings, pool: BlockPool) -> None:
        self.max_num_seqs = settings.max_num_seqs
        self.max_num_batched_tokens = settings.max_num_batched_tokens
        self.is_priority = settings.scheduling_policy == SchedulingPolicy.PRIORITY
        self.reserve_full_sequence = settings.reserve_full_sequence
        self.pool = pool
        self.waiting: FCFSQueue | PriorityQueue = PriorityQueue() if self.is_priority else FCFSQueue()
        self.running: list[TwinRequest] = []
        self.batch = DecodeBatch(pool.block_size)
        self.num_preemptions_total = 0
        self._num_admissions = 0  # running order: every admission appends at the end
        # Take the general path every step (the batch never forms): for tests, which compare the two paths.
        self.general_path_only = False

    def add_request(self, req: TwinRequest) -> None:
        assert req.status is RequestStatus.WAITING, req.status
        self.waiting.add(req)

    def has_work(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    @property
    def iteration(self) -> int:
        """Scheduler iterations run so far (the index of the next one)."""
        return self.batch.iteration

    # ---- one step ------------------------------------------------------------------------------------------

    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()

        # Running requests first: from the batch's counters when everything fits, else one by one.
        budget = self._schedule_running_batched(out)
        if budget is None:
            out.general_path = True
            self.batch.dissolve(self.running)
            budget = self._schedule_running(out, self.max_num_batched_tokens)

        # Then waiting requests, unless this step already had to preempt.
        if not out.preempted:
            budget = self._schedule_waiting(out, budget, now)

        assert budget >= 0
        assert len(self.running) <= self.max_num_seqs
        return out

    def _schedule_running_batched(self, out: SchedulerOutput) -> int | None:
        """The running phase when nobody has to be preempted: every member decodes, then the plain requests at the
        end of the running order take their tokens. Returns the budget left, or None (nothing changed) when the
        general path must decide: blocks or budget short, or a waiting request could preempt (priority)."""
        if self.general_path_only or (self.is_priority and len(self.waiting)):
            return None
        batch, pool, running = self.batch, self.pool, self.running
        n = batch.num_seqs
        budget = self.max_num_batched_tokens - n
        if budget < 0:
            return None
        tail = running[n:]
        for req in tail:
            if req.batch is not None:  # the members are not all at the front of the running order
                return None
        free = pool.num_free_blocks
        if n:
            free -= batch.phase_counts[batch.iteration % batch.block_size]
            if free < 0:
                return None
        block_size = pool.block_size
        plan = []
        for req in tail:
            if budget <= 0:
                break
            computed = req.num_computed_tokens
            num_new = req.num_tokens - computed
            if num_new > budget:
                num_new = budget
            need = -(-(computed + num_new) // block_size) - req.num_blocks
            if need > free:
                return None
            free -= need
            budget -= num_new
            plan.append((req, num_new, need))

        pool.num_free_blocks = free
        if n:
            out.num_batch_decodes = n
            out.decode_seqs = n
            out.decode_context = batch.context_tokens()
        for req, num_new, need in plan:
            if need:
                req.num_blocks += need
            out.add(req, num_new)
        return budget

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        # The general path, every running request a plain one: vLLM's loop, preempting where blocks run out.
        running = self.running
        pool = self.pool
        block_size = pool.block_size
        scheduled = out.num_scheduled_tokens
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
            out.add(req, num_new)  # a decode, or a prefill chunk (first, continued, or recompute after preemption)
            i += 1
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int, now: float) -> int:
        waiting = self.waiting
        running = self.running
        pool = self.pool
        block_size = pool.block_size
        while len(waiting) and budget > 0:
            req = waiting.peek()

            if len(running) >= self.max_num_seqs:
                refund = self._preempt_less_urgent(req, out, blocks_short=0) if self.is_priority else None
                if refund is None:
                    break
                budget += refund
                continue

            num_new = req.num_tokens  # a waiting request has no KV: all of it, or what the budget allows (chunks)
            if num_new > budget:
                num_new = budget
            need = -(-num_new // block_size)
            # vLLM's admission gate (scheduler_reserve_full_isl): the whole sequence so far must fit, else a request
            # admitted on its first chunk preempts the others chunk after chunk (twin-check: 68 preemptions
            # against vLLM's 7 on the same trace without it).
            gate = -(-req.num_tokens // block_size) if self.reserve_full_sequence else need
            if gate > pool.num_free_blocks:
                short = gate - pool.num_free_blocks
                refund = self._preempt_less_urgent(req, out, blocks_short=short) if self.is_priority else None
                if refund is None:
                    break
                budget += refund
                continue

            waiting.pop()
            pool.num_free_blocks -= need
            req.start_running(now, self._num_admissions, need)
            self._num_admissions += 1
            running.append(req)
            # A first chunk is never a decode: nothing of it is computed yet.
            out.num_scheduled_tokens[req] = num_new
            out.prefill_tokens += num_new
            out.prefill_attended += num_new * num_new
            out.num_admitted += 1
            budget -= num_new
        return budget

    def _preempt_less_urgent(self, urgent: TwinRequest, out: SchedulerOutput, blocks_short: int) -> int | None:
        """Preempt the least urgent running requests of strictly lower priority than ``urgent``, enough to free
        one batch slot and ``blocks_short`` blocks. Returns the budget tokens given back (their scheduled tokens
        this step), or None, preempting nobody, when even all of them would not make room. (Only on the general
        path, where no request is batched.)"""
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
        """Advance every scheduled request by its tokens; a request that caught up samples one token at ``t_end``
        (iteration index ``self.iteration`` before the call). Returns (tokens sampled, requests that emitted their
        first token, requests that finished), each list in running order."""
        batch = self.batch
        iteration = batch.iteration
        batch.iteration = iteration + 1  # every member decoded one token
        num_sampled = out.num_batch_decodes
        finished = batch.pop_finished() if num_sampled else []
        first_tokens: list[TwinRequest] = []
        decoding: list[TwinRequest] = []
        for req, num_new in out.num_scheduled_tokens.items():
            sampled = req.compute(num_new, iteration, t_end)
            if sampled:  # a partial prefill chunk samples nothing
                num_sampled += 1
                if sampled == 2:
                    first_tokens.append(req)
                if req.reached_target:
                    finished.append(req)
                else:
                    decoding.append(req)
        if finished:
            self._finish_all(finished, t_end)
        if out.general_path:
            # Every running request that decodes joins, also those the budget left out of this step.
            decoding = [r for r in self.running if r.is_decoding]
        for req in decoding:
            batch.join(req)
        return num_sampled, first_tokens, finished

    # ---- fast-forward over identical decode steps -----------------------------------------------------------

    def next_step_is_steady(self) -> bool:
        """Whether the next step is a decode of every running request (all batched) that admits and preempts
        nobody. Such a step repeats unchanged until a request finishes or a block allocation would fail: admission
        stays blocked because the running set, the budget left over and the head of the queue do not change, and
        free blocks only shrink. (No arrival can intervene: the caller bounds the run by the next external event.)
        """
        batch = self.batch
        n = batch.num_seqs
        if n == 0 or n != len(self.running) or self.general_path_only:
            return False
        budget = self.max_num_batched_tokens - n
        if budget < 0:
            return False
        free = self.pool.num_free_blocks - batch.phase_counts[batch.iteration % batch.block_size]
        if free < 0:
            return False  # someone must be preempted
        waiting = self.waiting
        if not len(waiting):
            return True
        head = waiting.peek()
        admit_tokens = head.num_tokens if self.reserve_full_sequence else min(head.num_tokens, budget)
        if budget > 0 and n < self.max_num_seqs and self.pool.blocks_needed(admit_tokens) <= free:
            return False  # the head of the queue would be admitted
        # The head is blocked; under priority it could still preempt a less urgent request to get in.
        return not self.is_priority or all(r.priority <= head.priority for r in self.running)

    def steady_run_steps(self) -> int:
        """Steps the steady batch runs (call when ``next_step_is_steady()``): up to and including the first step
        that finishes a request, and never a step whose blocks are not free."""
        batch = self.batch
        steps_to_finish = batch.finish_heap[0][0] - batch.iteration
        free = self.pool.num_free_blocks
        # k steps take at most num_seqs x (k // block_size + 1) blocks: usually plenty are free, skip the walk.
        if free >= batch.num_seqs * (steps_to_finish // batch.block_size + 1):
            return steps_to_finish
        return min(steps_to_finish, batch.steps_within_blocks(free))

    def advance_decode_run(self, num_steps: int, t_end: float) -> DecodeRun:
        """Apply ``num_steps`` steps of the steady batch (see ``steady_run_steps``) in one go; the last one ends at
        ``t_end``."""
        batch = self.batch
        start = batch.iteration
        self.pool.allocate(batch.blocks_for_steps(start, num_steps))
        batch.iteration = start + num_steps
        run = DecodeRun(start, num_steps, batch.num_seqs, [], None)
        if batch.finish_heap[0][0] == batch.iteration:
            run.running_before = list(self.running)
            run.finished = batch.pop_finished()
            self._finish_all(run.finished, t_end)
        return run

    def blocks_returned_by_cut(self, run: DecodeRun, keep_steps: int) -> int:
        """Net KV blocks that cutting ``run`` to its first ``keep_steps`` steps gives back to the pool: the blocks
        the members took in the undone steps, less those the finished requests freed and must take again."""
        batch = self.batch
        end = run.start_iteration + run.num_steps
        cut = run.start_iteration + keep_steps
        returned = batch.blocks_for_steps(cut, run.num_steps - keep_steps)
        block_size = batch.block_size
        for req in run.finished:  # out of the batch's sums: count their share by hand
            computed = req.num_computed_tokens
            returned += batch.steps_hitting_phase(computed - end, cut, end) - (-(-computed // block_size))
        return returned

    def truncate_decode_run(self, run: DecodeRun, keep_steps: int) -> DecodeRun:
        """Undo the steps of ``run`` after the first ``keep_steps`` (0 and up), as if it had stopped there: a driver
        learnt of an arrival inside the run. Only valid while nothing else happened since the run (arrivals may
        have been queued: they do not touch running requests or blocks). The requests the run finished are running
        again, at their places in the running order."""
        batch = self.batch
        assert 0 <= keep_steps < run.num_steps and batch.iteration == run.start_iteration + run.num_steps
        returned = self.blocks_returned_by_cut(run, keep_steps)
        if run.finished:
            block_size = batch.block_size
            for req in run.finished:
                req.reopen()
                req.num_blocks = -(-req.num_computed_tokens // block_size)  # as held at the run's end
                batch.join(req)
            self.running[:] = run.running_before
        batch.iteration = run.start_iteration + keep_steps
        if returned >= 0:
            self.pool.free(returned)
        else:
            self.pool.allocate(-returned)
        return DecodeRun(run.start_iteration, keep_steps, run.num_seqs, [], None)

    # ---- transitions that touch the queues and the pool ---------------------------------------------------

    def _preempt(self, req: TwinRequest) -> None:
        """Recompute-preemption of a request already taken out of ``running``: free its blocks, requeue it first."""
        self.pool.free(req.num_blocks)
        req.num_blocks = 0
        req.preempt()
        self.waiting.prepend(req)
        self.num_preemptions_total += 1

    def _finish_all(self, finished: list[TwinRequest], t: float) -> None:
        """Finish requests out of the batch that reached their target, and drop them from the running order."""
        freed = 0
        for req in finished:
            freed += req.num_blocks
            req.num_blocks = 0
            req.finish(req.stop_status, t)
        self.pool.free(freed)
        running = self.running
        if len(finished) <= 4:
            for req in finished:
                running.remove(req)  # identity comparison, in C
        else:
            running[:] = [r for r in running if r.status is _RUNNING]

    def abort(self, req: TwinRequest, now: float) -> None:
        """Any unfinished request -> FINISHED_ABORTED, its blocks freed."""
        if req.status is RequestStatus.RUNNING:
            self.batch.dissolve(self.running)  # the next step re-forms it
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
