"""The simulator's event loop: arrivals, first tokens, completions, heartbeats, failures.

Every routing step is the coordinator's own code (``route``, ``drain``,
``FleetState.commit/release/expire``, ``plan_warm_pool``, the hedge
governor) called with the simulated clock. Nodes are modelled, not run:
prefill is serial per node, decode slows with the batch (solo / (1 + 0.39 x
running)), and 10 % of nodes straggle (a first token 10x late, 2 % of the time).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from darkbloom.server.routing.hedging import hedge_delay_s
from darkbloom.server.routing.route import Dispatch, Enqueue, NoNode, Reject, drain, route
from darkbloom.server.routing.state import FleetState, RouteRequest, RoutingConfig
from darkbloom.server.routing.warmpool import load_finished, plan_warm_pool
from darkbloom.sim.cluster import MODELS, SimNode, make_nodes
from darkbloom.sim.report import Outcomes
from darkbloom.sim.trace import Arrival

ARRIVE, FIRST, FINISH, HEDGE, HEARTBEAT, EXPIRE, WARM, LOADED, FAIL, JOIN = range(10)
RTT_S = 0.02
HEARTBEAT_S = 5.0
BUDGET_PER_SLOT = 16_384


@dataclass(slots=True)
class SimRequest:
    arrival: Arrival
    rid: str
    first_at: float = -1.0
    done: bool = False
    flights: list[str] = field(default_factory=list)
    hedged: bool = False
    failovers: int = 0


@dataclass(slots=True)
class Flight:
    rid: str
    request: SimRequest
    node: SimNode
    started: float
    first_at: float
    finish_at: float
    live: bool = True
    hedge: bool = False


@dataclass(frozen=True, slots=True)
class Scenario:
    nodes: int = 100
    join_fraction: float = 0.05
    fail_fraction: float = 0.02
    warm_fraction: float = 0.8
    seed: int = 1


class Simulation:
    """One run of one policy over one arrival list."""

    def __init__(self, arrivals: list[Arrival], scenario: Scenario, config: RoutingConfig) -> None:
        self.rng = random.Random(scenario.seed)
        self.state = FleetState(config, rng=random.Random(scenario.seed + 1))
        self.out = Outcomes(policy=config.policy)
        self.arrivals = arrivals
        self.events: list[tuple[float, int, int, object]] = []
        self._n = 0
        self.nodes: dict[str, SimNode] = {}
        self.requests: dict[str, SimRequest] = {}
        self.flights: dict[str, Flight] = {}
        end = arrivals[-1].at if arrivals else 0.0
        initial = make_nodes(scenario.nodes, self.rng, scenario.warm_fraction)
        for node in initial:
            self._join(node, 0.0)
        joiners = make_nodes(int(scenario.nodes * scenario.join_fraction), self.rng, scenario.warm_fraction, start_id=scenario.nodes)
        for node in joiners:
            self._push(self.rng.uniform(0, end), JOIN, node)
        for node in self.rng.sample(initial, int(scenario.nodes * scenario.fail_fraction)):
            self._push(self.rng.uniform(0, end), FAIL, node)
        for i, a in enumerate(arrivals):
            self._push(a.at, ARRIVE, SimRequest(a, f"r{i}"))
        self._push(1.0, EXPIRE, None)
        self._push(config.warm_tick_s, WARM, None)
        self.end = end

    def _push(self, at: float, kind: int, obj: object) -> None:
        self._n += 1
        heapq.heappush(self.events, (at, self._n, kind, obj))

    def run(self) -> Outcomes:
        """Process every event; returns the outcomes."""
        handlers = {
            ARRIVE: self._arrive, FIRST: self._first, FINISH: self._finish, HEDGE: self._hedge,
            HEARTBEAT: self._heartbeat, EXPIRE: self._expire, WARM: self._warm, LOADED: self._loaded,
            FAIL: self._fail, JOIN: lambda obj, now: self._join(obj, now),  # type: ignore[arg-type]
        }
        pending = len(self.arrivals)
        events = self.events
        while events:
            now, _, kind, obj = heapq.heappop(events)
            handlers[kind](obj, now)  # type: ignore[operator]
            if kind in (EXPIRE, WARM, HEARTBEAT) and self.out.finished >= pending and now > self.end:
                break
        self.out.makespan_s = max(self.out.last_finish, self.end)
        for n in self.nodes.values():
            if n.left_at is None:
                n.account(self.out.makespan_s)
        self.out.slot_seconds = sum(n.slot_s for n in self.nodes.values())
        self.out.busy_seconds = sum(n.busy_s for n in self.nodes.values())
        self.out.hedges, self.out.hedge_wins = self.state.governor.tries, self.state.governor.wins
        return self.out

    # ---- nodes --------------------------------------------------------------------------

    def _join(self, node: SimNode, now: float) -> None:
        node.joined_at = node.slot_since = now
        self.nodes[node.node_id] = node
        self.state.registry.add(node.node_id, node.model_infos(), node.hardware(), now, capacity=node.capacity(now, self.rng, BUDGET_PER_SLOT))
        self._push(now + self.rng.uniform(0, HEARTBEAT_S), HEARTBEAT, node)
        self._drain_all(sorted(node.warm), now)

    def _heartbeat(self, node: SimNode, now: float) -> None:
        if node.left_at is not None:
            return
        self.state.registry.heartbeat(node.node_id, node.capacity(now, self.rng, BUDGET_PER_SLOT), now)
        self._drain_all(sorted(node.warm), now)
        self._push(now + HEARTBEAT_S, HEARTBEAT, node)

    def _fail(self, node: SimNode, now: float) -> None:
        """The node drops off: in-flight work fails; before its first token, it fails over once."""
        if node.left_at is not None:
            return
        node.account(now)
        node.left_at = now
        self.out.node_failures += 1
        orphans = []
        for frid in sorted(node.flights):
            flight = self.flights.pop(frid)
            flight.live = False
            node.busy_s += now - flight.started
            self.state.release(frid, now, ok=False)
            orphans.append(flight.request)
        node.flights.clear()
        self.state.registry.remove(node.node_id)
        for req in orphans:
            if req.done or any(f in self.flights for f in req.flights):
                continue  # a hedge is still running for it
            if req.first_at < 0 and req.failovers == 0:
                req.failovers += 1
                self._route_new(req, now, exclude=frozenset({node.node_id}), queue=False)
                if req.done or any(f in self.flights for f in req.flights):
                    continue
            self._end(req, now, "failed")

    def _warm(self, _: object, now: float) -> None:
        for plan in plan_warm_pool(self.state, now):
            node = self.nodes[plan.node_id]
            self.out.loads += 1
            # Load time: a few seconds of setup plus reading the weights at ~2 GB/s.
            self._push(now + 5.0 + MODELS[plan.model] / 2.0, LOADED, (node, plan.model))
        if now < self.end or self.state.reservations:
            self._push(now + self.state.config.warm_tick_s, WARM, None)

    def _loaded(self, obj: tuple[SimNode, str], now: float) -> None:
        node, model = obj
        if node.left_at is not None:
            return
        node.account(now)
        node.warm.add(model)
        load_finished(self.state, node.node_id, model, True, now)
        self.state.registry.heartbeat(node.node_id, node.capacity(now, self.rng, BUDGET_PER_SLOT), now)
        self._drain_all((model,), now)

    # ---- requests -----------------------------------------------------------------------

    def _arrive(self, req: SimRequest, now: float) -> None:
        self.requests[req.rid] = req
        self.out.arrived += 1
        self._route_new(req, now)

    def _route_new(self, req: SimRequest, now: float, exclude: frozenset[str] = frozenset(), queue: bool = True) -> None:
        a = req.arrival
        rid = req.rid if not req.flights else f"{req.rid}-{len(req.flights)}"
        rr = RouteRequest(rid, a.model, a.prompt_tokens, a.max_tokens, exclude)
        d = route(rr, self.state, now)
        if isinstance(d, Dispatch):
            self.state.commit(rr, d.node_id, now)
            self._start(req, rid, d, now)
        elif isinstance(d, Enqueue) and queue:
            self.state.enqueue(rr, now)
        elif isinstance(d, Reject):
            if d.status == 429:
                self.state.note_refused(a.model)
            self._end(req, now, "rejected_429" if d.status == 429 else "too_large")
        elif isinstance(d, NoNode):
            self._end(req, now, "no_node")

    def _start(self, req: SimRequest, frid: str, d: Dispatch, now: float, hedge: bool = False) -> None:
        node = self.nodes[d.node_id]
        a = req.arrival
        model = a.model
        begin = max(now + RTT_S, node.prefill_free_at)
        prefill = a.prompt_tokens / node.prefill_tps[model]
        node.prefill_free_at = begin + prefill
        first = begin + prefill
        if node.straggle_p and self.rng.random() < node.straggle_p:
            first += 9 * (prefill + 0.5)
        running = self.state.registry.nodes[node.node_id].slots[model].budget.running
        decode = a.output_tokens * (1 + 0.39 * (running - 1)) / node.decode_tps[model]
        flight = Flight(frid, req, node, now, first, first + decode, hedge=hedge)
        self.flights[frid] = flight
        node.flights.add(frid)
        req.flights.append(frid)
        self._push(first, FIRST, flight)
        self._push(first + decode, FINISH, flight)
        cfg = self.state.config.hedge
        if cfg.enabled and not hedge and not req.hedged:
            self._push(now + hedge_delay_s(d.expected_ttft_s, cfg), HEDGE, flight)

    def _hedge(self, flight: Flight, now: float) -> None:
        req = flight.request
        if not flight.live or req.done or req.first_at >= 0 or req.hedged:
            return
        model = req.arrival.model
        if not self.state.governor.allow(self.state.depth(model), len(self.state.registry.available.get(model, ()))):
            return
        req.hedged = True
        a = req.arrival
        rr = RouteRequest(f"{req.rid}-h", model, a.prompt_tokens, a.max_tokens, frozenset({flight.node.node_id}))
        d = route(rr, self.state, now)
        if isinstance(d, Dispatch):
            self.state.commit(rr, d.node_id, now)
            self._start(req, rr.request_id, d, now, hedge=True)

    def _first(self, flight: Flight, now: float) -> None:
        req = flight.request
        if not flight.live or req.first_at >= 0:
            return
        req.first_at = now
        self.out.ttft.append(now - req.arrival.at)
        if req.hedged:
            self.state.governor.record(hedge_won=flight.hedge)
        for frid in req.flights:
            if frid != flight.rid and frid in self.flights:
                self._stop(self.flights[frid], now, None)

    def _finish(self, flight: Flight, now: float) -> None:
        if not flight.live:
            return
        self._stop(flight, now, True)
        self.out.tokens += flight.request.arrival.output_tokens
        self._end(flight.request, now, "completed")

    def _stop(self, flight: Flight, now: float, ok: bool | None) -> None:
        flight.live = False
        self.flights.pop(flight.rid, None)
        flight.node.flights.discard(flight.rid)
        flight.node.busy_s += now - flight.started
        self.state.release(flight.rid, now, ok)
        self._drain_all((flight.request.arrival.model,), now)

    def _end(self, req: SimRequest, now: float, outcome: str) -> None:
        if req.done:
            return
        req.done = True
        self.out.record(req.arrival, outcome, now)

    def _expire(self, _: object, now: float) -> None:
        for waiter in self.state.expire(now):
            self._end(self.requests[waiter.request_id.split("-")[0]], now, "queue_timeout")
        if now < self.end or self.state.reservations or any(len(q) for q in self.state.queues.values()):
            self._push(now + 1.0, EXPIRE, None)

    def _drain_all(self, models: object, now: float) -> None:
        for model in models:  # type: ignore[attr-defined]
            if self.state.depth(model):
                for rr, d in drain(self.state, model, now):
                    req = self.requests[rr.request_id.split("-")[0]]
                    self._start(req, rr.request_id, d, now)


def simulate(arrivals: list[Arrival], scenario: Scenario, config: RoutingConfig) -> Outcomes:
    """Run one policy over ``arrivals`` on the fleet ``scenario`` describes."""
    return Simulation(arrivals, scenario, config).run()
