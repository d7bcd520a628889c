"""Dynamic batching of sampling: concurrent requests for the same model share one forward pass (issue 20).

Every sampling entry point (``GET /jobs/{id}/sample``, ``GET /sample``, ``POST /v2/.../infer`` and gRPC
``ModelInfer``) renders through :func:`api.compute.sample_on_loop`, on the event-loop thread. A request that
is eligible (below) comes here instead. The first one for a model opens a batch and *leads* it:

1. It yields to the event loop once. Requests whose bytes have already arrived are parsed in that loop
   iteration and join the open batch. A lone request loses only that one yield, a few microseconds.
2. Only when this model's previous batch had more than one request, and ended less than
   :data:`RECENT_S` ago (the server is under concurrent load), does the leader wait longer: until as many
   requests as that batch had have joined, or ``window_s`` has passed, whichever is first. So a lone
   request never waits for the window, and a loaded server forms batches of about its concurrency.
3. It closes the batch, concatenates the members' latents (each drawn from its own seed, exactly as
   :meth:`MinedGenerator.sample` draws them), runs one forward pass x = G(M(u)) (Eq. 3-4), splits the
   images and hands each member its own. Each request then encodes its own response, as before.

**Same bytes as alone.** A member's images must be the ones its seed gives alone, byte for byte, and a
float kernel is free to compute a row differently when the batch around it changes shape. On this CPU,
torch's linear layers (the generator's first layer and the miner) do exactly that for batches of 1-11 rows
that are not a multiple of 4; conv layers did not. So a request is eligible only when:

* its model is a single mined generator (:class:`MinedGenerator`; families and multi-GAN mixtures draw
  member indices first and are rendered alone);
* ``n`` is a multiple of 4 (every member then starts at a row offset that is a multiple of 4) and at most
  one render piece (``chunk``) and ``max_images``, so alone it is one forward pass of exactly these latents;
* and :meth:`SampleBatcher._limit` has checked, once per model and ``n`` on this thread, that ``n`` rows
  forwarded alone equal the same rows forwarded inside larger batches (at the start, the end and the middle
  of batches of up to :meth:`SampleBatcher.cap` rows). Where they differ, that ``n`` is rendered alone, always.

**Only batches that pay.** Batching saves work only where a larger forward pass costs less per image. On a CPU
that is not a given (``mnist-no-9``'s generator and miner cost about the same per image from 32 to 128 images,
and in one measurement more at 64 and 128 than at 16), so the first time a model meets a request size,
:meth:`SampleBatcher._cheapest` also times its forward pass at that size doubled up to the cap and limits batches
to the cheapest per image. Where larger batches keep getting cheaper, as expected on a GPU (not measured here),
that is the cap.

The check samples a few batch shapes; it is evidence, not a proof for every shape. tests/api/test_batching.py
tests/test_oip.py and benchmarks/batching.py compare the bytes of concurrently batched requests with the same requests alone.
``sample_batch_window_ms=0`` turns batching off.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass, field

import torch
from prometheus_client import Histogram

from core.mining import MinedGenerator

log = logging.getLogger(__name__)

BATCH = Histogram("minegan_sample_batch_requests", "Sample requests served by one batched forward pass",
                  buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32))

RECENT_S = 0.05  # a previous batch this recent with several members means concurrent load: wait for the window


@dataclass
class _Batch:
    want: int  # members to wait for (the previous batch's), 1: do not wait
    limit: int  # most images in this batch (SampleBatcher._limit)
    latents: list[torch.Tensor] = field(default_factory=list)  # each member's u [n_i, z_dim], in order
    futures: list[asyncio.Future[torch.Tensor] | None] = field(default_factory=list)  # None: the leader's own
    images: int = 0
    grown: asyncio.Event = field(default_factory=asyncio.Event)


class SampleBatcher:
    """Batches of concurrent sample requests per model; one per app (``Services.batcher``), used on the event loop."""

    def __init__(self, window_s: float, max_images: int = 128, measure: bool = True) -> None:
        self.window_s, self.max_images, self.measure = window_s, max_images, measure  # measure=False: batch up to the cap
        self._open: dict[int, _Batch] = {}  # id(model) -> the batch still taking members
        self._last: dict[int, tuple[int, float]] = {}  # id(model) -> (members of its last batch, when it ran)
        self._checked: weakref.WeakKeyDictionary[MinedGenerator, dict[int, int]] = weakref.WeakKeyDictionary()
        self.batches = 0  # forward passes run here, and requests they served (tests and the benchmark read them)
        self.requests = 0

    def eligible(self, model: object, n: int, chunk: int) -> bool:
        return (self.window_s > 0 and isinstance(model, MinedGenerator) and n % 4 == 0
                and 0 < n <= min(chunk, self.max_images))

    def cap(self, chunk: int) -> int:
        """Most images in one batch: ``max_images``, and at most 4 render pieces of ``chunk`` images, so that one
        batched forward pass holds the event loop for about as long as 4 pieces of a lone render (api/compute.py)."""
        return max(4, min(self.max_images, 4 * chunk) // 4 * 4)

    async def sample(self, model: MinedGenerator, n: int, seed: int, chunk: int) -> torch.Tensor:
        """``model.sample(n, seed)`` for an :meth:`eligible` request, possibly computed inside a batch."""
        u = next(model.latent_blocks(n, seed))  # n <= 256: the one block [n, z_dim]
        limit = self._limit(model, n, self.cap(chunk))
        if limit <= n:  # rows not batch-invariant, or no larger batch is cheaper per image
            return model.decode(u)
        key = id(model)
        batch = self._open.get(key)
        if batch is not None and batch.images + n <= batch.limit:
            fut: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
            batch.latents.append(u)
            batch.futures.append(fut)
            batch.images += n
            if len(batch.latents) >= batch.want or batch.images >= batch.limit:
                batch.grown.set()
            return await fut
        last, when = self._last.get(key, (1, 0.0))
        batch = _Batch(want=last if time.monotonic() - when < RECENT_S else 1, limit=limit, latents=[u], futures=[None], images=n)
        self._open[key] = batch
        try:
            await asyncio.sleep(0)  # requests already read from their sockets join now
            if len(batch.latents) < batch.want:
                try:
                    async with asyncio.timeout(self.window_s):
                        await batch.grown.wait()
                except TimeoutError:
                    pass
        except asyncio.CancelledError:  # the leader's client went away: still serve the members, then stop
            self._close(key, batch)
            self._run(model, batch)
            raise
        self._close(key, batch)
        return self._run(model, batch)

    def _close(self, key: int, batch: _Batch) -> None:
        if self._open.get(key) is batch:
            del self._open[key]

    def _run(self, model: MinedGenerator, batch: _Batch) -> torch.Tensor:
        """One forward pass for every member; each joined member's future gets its rows. Returns the leader's."""
        members = len(batch.latents)
        try:
            x = model.decode(batch.latents[0] if members == 1 else torch.cat(batch.latents))  # [sum n_i, C, H, W]
        except BaseException as e:
            for f in batch.futures[1:]:
                if f is not None and not f.done():
                    f.set_exception(e)
            raise
        self._last[id(model)] = (members, time.monotonic())
        self.batches += 1
        self.requests += members
        BATCH.observe(members)
        start = 0
        for u, f in zip(batch.latents, batch.futures, strict=True):
            part, start = x[start : start + len(u)], start + len(u)
            if f is not None and not f.done():
                f.set_result(part)
        return x[: len(batch.latents[0])]

    def _limit(self, model: MinedGenerator, n: int, cap: int) -> int:
        """Most images a batch led by a request of ``n`` may hold, decided once per model and ``n``: 0 when ``n``
        rows forwarded inside batches do not give the bits they give alone (:meth:`_check`); else the batch size,
        ``n`` times a power of two up to ``cap``, whose forward pass costs least per image, timed here. On a CPU
        larger batches need not be cheaper: ``mnist-no-9``'s generator costs about the same per image from 16 to
        32 images and more from 64 on (docs/benchmarks.md, "batching"); a GPU is cheaper per image up to large
        batches."""
        seen = self._checked.setdefault(model, {})
        if n not in seen:
            seen[n] = (self._cheapest(model, n, cap) if self.measure else cap) if self._check(model, n, cap) else 0
        return seen[n]

    @staticmethod
    def _cheapest(model: MinedGenerator, n: int, cap: int) -> int:
        per_image = forward_cost(model, [n << k for k in range(8) if n << k <= cap])
        best = min(per_image.values())
        limit = max(s for s, t in per_image.items() if t <= 1.05 * best)  # the largest within 5 % of the cheapest
        log.info("sample batching: requests of %d images share forward passes of up to %d (ms per image by batch size: %s)",
                 n, limit, ", ".join(f"{s}: {1000 * t:.3f}" for s, t in per_image.items()))
        return limit

    @staticmethod
    def _check(model: MinedGenerator, n: int, total: int) -> bool:
        u = torch.randn(total, model.z_dim, generator=torch.Generator().manual_seed(n))  # [total, z_dim]
        alone = model.decode(u[:n])
        wide = model.decode(u)  # n rows at the start of the largest batch
        if not torch.equal(wide[:n], alone):
            return False
        end = torch.cat([u[n:], u[:n]])  # ... at its end
        if total > n and not torch.equal(model.decode(end)[-n:], alone):
            return False
        if total >= 2 * n + 4:  # ... in the middle of a batch of another size
            mid = torch.cat([u[n : n + 4], u[:n], u[n + 4 : 2 * n + 4]])
            if not torch.equal(model.decode(mid)[4 : 4 + n], alone):
                return False
        return True


def forward_cost(model: MinedGenerator, sizes: list[int], reps: int = 7) -> dict[int, float]:
    """Seconds per image of one forward pass x = G(M(u)) of each batch size: the fastest of ``reps`` timings after a
    warm-up, the sizes interleaved (one pass of each size per repetition), so that a stretch of load on a shared
    machine falls on every size alike instead of making one size look cheapest, and the fastest (the least
    disturbed) timing of each size counts. (Timed one size after another, a
    benchmark's server once never batched, most likely for that reason; docs/benchmarks.md, "batching".)"""
    u = torch.randn(max(sizes), model.z_dim, generator=torch.Generator().manual_seed(0))
    for s in sizes:
        model.decode(u[:s])  # warm
    times: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(reps):
        for s in sizes:
            t0 = time.perf_counter()
            model.decode(u[:s])
            times[s].append(time.perf_counter() - t0)
    return {s: min(t) / s for s, t in times.items()}
