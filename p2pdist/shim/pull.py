"""The Docker shim: ``p2pdist pull`` — an image's blobs through the swarm, into Docker.

1. resolve the reference to one platform's config and layers (registry, manifests only);
2. if Docker already has an image whose Id is the config digest: fetch nothing, tag it;
3. else start every blob's download at once (through the local peer daemon, or a peer in
   this process), and stream a docker-archive into ``docker load`` in order as the bytes
   land: a worker thread runs the docker SDK, fed through a bounded memory channel, so no
   whole layer is ever held in memory; each blob's sha256 is checked on the way
   (a mismatch aborts the load);
4. check that Docker's image Id is the config digest, then tag it.

Composition root: :func:`pull`. Blocking Docker calls go through ``trio.to_thread`` with a
``CapacityLimiter``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from p2pdist.core.digest import Digest
from p2pdist.core.errors import IntegrityError, P2PError
from p2pdist.core.task import TaskSpec
from p2pdist.peer.localapi import BlobStream, LocalApiClient
from p2pdist.shim.archive import TAR_END, Member, archive_members, member_header, tar_padding
from p2pdist.shim.loader import ImageLoader, LoadFailed
from p2pdist.shim.resolve import ResolvedImage

CHANNEL_DEPTH = 8  # pieces in flight between trio and the loader thread (each ≤ PIECE)
PIECE = 1024 * 1024
PROGRESS_EVERY = 0.25


class BlobSource(Protocol):
    """Where blobs come from: a peer daemon's local API or an in-process peer."""

    async def start(self, spec: TaskSpec) -> None:
        """Begin the download in the background (single flight per digest)."""

    def open(self, spec: TaskSpec) -> AbstractAsyncContextManager[BlobStream]:
        """The blob's bytes in order, as they land."""

    async def progress(self, spec: TaskSpec) -> tuple[int, int | None, bool]:
        """(bytes held, size or None, finished)."""


class DaemonSource:
    def __init__(self, client: LocalApiClient):
        self.client = client

    async def start(self, spec: TaskSpec) -> None:
        await self.client.start_task(spec)

    def open(self, spec: TaskSpec) -> AbstractAsyncContextManager[BlobStream]:
        return self.client.fetch(spec)

    async def progress(self, spec: TaskSpec) -> tuple[int, int | None, bool]:
        return _progress_of(await self.client.task(spec.task_id))


def _progress_of(summary: dict[str, Any]) -> tuple[int, int | None, bool]:
    size, held, total = summary.get("size"), summary.get("chunks_held") or 0, summary.get("chunks_total")
    done = summary.get("state") in ("complete", "failed")
    if not isinstance(size, int):
        return 0, None, done
    if done or not isinstance(total, int) or total == 0:
        return (size if summary.get("state") == "complete" else 0), size, done
    return min(size, size * held // total), size, done


class PeerSource:
    """A peer engine running in this process (``peer.service.serve``)."""

    def __init__(self, peer: Any):
        self.peer = peer

    async def start(self, spec: TaskSpec) -> None:
        self.peer.start_download(spec)

    @asynccontextmanager
    async def open(self, spec: TaskSpec) -> AsyncIterator[BlobStream]:
        d = self.peer.start_download(spec)
        size = await d.wait_size()
        yield BlobStream(d.task_id, size, d.iter_bytes())

    async def progress(self, spec: TaskSpec) -> tuple[int, int | None, bool]:
        return _progress_of(self.peer.start_download(spec).summary())


@dataclass
class PullResult:
    image_id: str
    names: list[str]
    fetched: bool  # False: Docker already had it
    bytes_streamed: int = 0


@dataclass
class _Feed:
    """What the trio side hands the loader thread: bytes, plus where a blob starts/ends."""

    failed: BaseException | None = None
    streamed: int = 0


class _Begin:
    pass


@dataclass(frozen=True)
class _End:
    digest: Digest


def repo_tag(image: ResolvedImage) -> tuple[str, str] | None:
    """``(repository, tag)`` to tag the image with; None for a digest-only reference."""
    ref = image.reference
    return (ref.familiar_name, ref.tag) if ref.tag is not None else None


async def pull(image: ResolvedImage, specs_for: Callable[[ResolvedImage], Awaitable[dict[Digest, TaskSpec]]],
               source: BlobSource, loader: ImageLoader, *, limiter: trio.CapacityLimiter | None = None,
               on_progress: Callable[[dict[Digest, tuple[int, int | None]]], None] | None = None) -> PullResult:
    """Load ``image`` into ``loader`` (see the module docstring). ``specs_for``: every
    blob's task (e.g. :func:`p2pdist.shim.resolve.blob_specs`), asked only when something
    is to be fetched. Raises :class:`LoadFailed` when
    Docker refuses or loads something else, the download's error when a blob fails."""
    limiter = limiter or trio.CapacityLimiter(2)
    config_id = str(image.config.digest)
    name = repo_tag(image)
    names = [f"{name[0]}:{name[1]}"] if name else []

    async def docker(fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args), limiter=limiter)

    if await docker(loader.image_id, config_id) == config_id:
        if name:
            await docker(loader.tag, config_id, *name)
        return PullResult(config_id, names, fetched=False)

    specs = await specs_for(image)
    for b in image.blobs:  # every download under way before the first byte is streamed
        await source.start(specs[b.digest])
    send, recv = trio.open_memory_channel[bytes | _Begin | _End](CHANNEL_DEPTH)
    feed = _Feed()

    async def produce() -> None:
        # an error here closes the channel; the loader thread then aborts the upload, and
        # this error (not Docker's "unexpected EOF") is what the caller sees
        try:
            async with send:
                for m in archive_members(image):
                    await _send_member(m, send, specs, source, feed)
                await send.send(TAR_END)
        except trio.BrokenResourceError:
            return  # the loader gave up first; its own error says why
        except Exception as exc:
            feed.failed = exc

    def archive() -> Iterator[bytes]:
        sha: Any = None
        while True:
            try:
                item = trio.from_thread.run(recv.receive)
            except trio.EndOfChannel:
                if feed.failed is not None:
                    raise LoadFailed("archive aborted: a blob could not be fetched") from None
                return
            if isinstance(item, _Begin):
                sha = hashlib.sha256()
            elif isinstance(item, _End):
                got = Digest(sha.hexdigest())
                sha = None
                if got != item.digest:
                    raise IntegrityError(f"blob {item.digest} arrived as {got}")
            else:
                if sha is not None:
                    sha.update(item)  # in this worker thread: hashing never blocks the event loop
                yield item

    loaded: list[str | None] = []

    async def load() -> None:
        async with recv:
            loaded.append(await trio.to_thread.run_sync(loader.load, archive(), limiter=limiter))

    load_error: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        if on_progress is not None:
            nursery.start_soon(_report, image, specs, source, on_progress)
        try:
            await load()
        except Exception as exc:  # raised below, outside the nursery: no exception group
            load_error = exc
        nursery.cancel_scope.cancel()
    if feed.failed is not None:
        raise feed.failed  # the blob's own error says more than Docker's "unexpected EOF"
    if load_error is not None:
        raise load_error
    image_id = loaded[0] if loaded and loaded[0] else await docker(loader.image_id, config_id)
    if image_id != config_id:
        raise LoadFailed(f"Docker loaded the archive as image {image_id}, expected {config_id}"
                         " (the config digest); not tagging it")
    if name:
        await docker(loader.tag, config_id, *name)
    return PullResult(config_id, names, fetched=True, bytes_streamed=feed.streamed)


async def _send_member(m: Member, send: trio.MemorySendChannel[Any], specs: dict[Digest, TaskSpec],
                       source: BlobSource, feed: _Feed) -> None:
    await send.send(member_header(m))
    if m.blob is None:
        if m.data:
            await send.send(m.data)
        await send.send(tar_padding(len(m.data or b"")))
        return
    spec = specs[m.blob.digest]
    n = 0
    async with source.open(spec) as stream:
        if stream.size is not None and stream.size != m.blob.size:
            raise IntegrityError(f"blob {m.blob.digest} is {stream.size} bytes, the manifest says {m.blob.size}")
        await send.send(_Begin())
        async for piece in stream.pieces:
            n += len(piece)
            if n > m.blob.size:
                raise IntegrityError(f"blob {m.blob.digest} is longer than the manifest's {m.blob.size} bytes")
            feed.streamed += len(piece)
            view = memoryview(piece)
            for i in range(0, len(view), PIECE):  # bounded memory: ≤ CHANNEL_DEPTH × PIECE queued
                await send.send(bytes(view[i:i + PIECE]))
    if n != m.blob.size:
        raise IntegrityError(f"blob {m.blob.digest}: got {n} of {m.blob.size} bytes")
    await send.send(_End(m.blob.digest))
    await send.send(tar_padding(n))


async def _report(image: ResolvedImage, specs: dict[Digest, TaskSpec], source: BlobSource,
                  on_progress: Callable[[dict[Digest, tuple[int, int | None]]], None]) -> None:
    """Poll every blob's progress until all are finished (progress is best effort)."""
    done: dict[Digest, tuple[int, int | None]] = {}
    pending = {b.digest for b in image.blobs}
    while pending:
        for digest in list(pending):
            try:
                held, size, finished = await source.progress(specs[digest])
            except P2PError:
                continue
            done[digest] = (held, size)
            if finished:
                pending.discard(digest)
        on_progress(dict(done))
        await trio.sleep(PROGRESS_EVERY)
