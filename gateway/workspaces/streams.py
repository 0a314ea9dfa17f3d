"""Blocking byte streams that connect tar code to Docker and HTTP: all of it runs in threads.

``IteratorReader`` turns an iterator of chunks (Docker's ``get_archive``) into a readable file
object for ``tarfile``, and ``open_tar_stream`` reads a tar from such a stream strictly.
``pipe`` connects a producer that writes (``write_tar``) to a consumer that reads (Docker's
``put_archive``, an HTTP response) with a bounded buffer, so a whole archive never sits in
memory and a failure on either side reaches the other.
"""

from __future__ import annotations

import collections
import gzip
import io
import tarfile
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from typing_extensions import Buffer


class IteratorReader(io.RawIOBase):
    """A readable, non-seekable raw stream over an iterator of ``bytes`` chunks.

    Holds at most one chunk. ``close`` also closes the iterator when it can (a generator, or
    Docker's stream), which releases its connection. ``bytes_read`` counts what was consumed.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._source = chunks
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:
        target = memoryview(buffer).cast("B")
        while not self._pending:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return 0
            self._pending = memoryview(chunk).cast("B")
        count = min(len(target), len(self._pending))
        target[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        self.bytes_read += count
        return count

    def close(self) -> None:
        if not self.closed:
            self._pending = memoryview(b"")
            for candidate in (self._chunks, self._source):
                closer = getattr(candidate, "close", None)
                if callable(closer):
                    closer()
                    break
        super().close()


class PipeAborted(Exception):
    """The producer of a pipe failed; the consumer must not take what it read as complete.
    The producer's exception is the ``__cause__``."""


class _Channel:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.cond = threading.Condition()
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.reader_closed = False


class PipeReader(io.RawIOBase):
    """The reading end of ``pipe``. ``read`` blocks until data, end or failure: at the end it
    returns ``b""``; if the producer aborted it raises ``PipeAborted``. Iterating yields the
    chunks as written (not lines), which suits ``StreamingResponse``. Closing it early makes the
    producer's next write raise ``BrokenPipeError``."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self._ch = channel

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:
        target = memoryview(buffer).cast("B")
        data = self._take(len(target))
        target[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()  # to the end, as io promises: the caller asked for it all
        return self._take(size)

    def _take(self, size: int) -> bytes:
        ch = self._ch
        with ch.cond:
            while not ch.chunks and not ch.eof and ch.error is None:
                ch.cond.wait()
            if ch.error is not None:
                raise PipeAborted(f"the producer failed: {ch.error!r}") from ch.error
            if not ch.chunks:
                return b""
            parts: list[bytes] = []
            wanted = size
            while ch.chunks and wanted > 0:
                head = ch.chunks[0]
                if len(head) <= wanted:
                    parts.append(ch.chunks.popleft())
                    wanted -= len(head)
                else:
                    parts.append(head[:wanted])
                    ch.chunks[0] = head[wanted:]
                    wanted = 0
            data = b"".join(parts)
            ch.buffered -= len(data)
            ch.cond.notify_all()
            return data

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        ch = self._ch
        with ch.cond:
            while not ch.chunks and not ch.eof and ch.error is None:
                ch.cond.wait()
            if ch.error is not None:
                raise PipeAborted(f"the producer failed: {ch.error!r}") from ch.error
            if not ch.chunks:
                raise StopIteration
            chunk = ch.chunks.popleft()
            ch.buffered -= len(chunk)
            ch.cond.notify_all()
            return chunk

    def close(self) -> None:
        ch = self._ch
        with ch.cond:
            ch.reader_closed = True
            ch.chunks.clear()
            ch.buffered = 0
            ch.cond.notify_all()
        super().close()


class PipeWriter(io.RawIOBase):
    """The writing end of ``pipe``. ``write`` blocks while the buffer is full and raises
    ``BrokenPipeError`` once the reader is closed. ``close`` marks a clean end; ``abort(exc)``
    a failed one. Used as a context manager it closes on success and aborts on an exception."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self._ch = channel

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer) -> int:
        chunk = bytes(data)  # the caller may reuse its buffer
        if not chunk:
            return 0
        ch = self._ch
        with ch.cond:
            while ch.buffered >= ch.capacity and not ch.reader_closed:
                ch.cond.wait()
            if ch.reader_closed:
                raise BrokenPipeError("the reading end of the pipe is closed")
            if ch.eof or ch.error is not None:
                raise ValueError("write to a closed pipe")
            ch.chunks.append(chunk)
            ch.buffered += len(chunk)
            ch.cond.notify_all()
        return len(chunk)

    def abort(self, exc: BaseException) -> None:
        """End the stream as failed: the reader raises ``PipeAborted`` (after nothing more)."""
        ch = self._ch
        with ch.cond:
            if not ch.eof and ch.error is None:
                ch.error = exc
                ch.chunks.clear()
                ch.buffered = 0
            ch.cond.notify_all()
        super().close()

    def close(self) -> None:
        ch = self._ch
        with ch.cond:
            if ch.error is None:
                ch.eof = True
            ch.cond.notify_all()
        super().close()

    def __del__(self) -> None:
        # io's finalizer would close(), i.e. signal a clean end for a producer that died
        # without saying so: a truncated archive must fail instead.
        if not self.closed:
            self.abort(PipeAborted("the pipe's writer was dropped without being closed"))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        if exc is not None:
            self.abort(exc)
        else:
            self.close()
        return None


def pipe(capacity: int = 1 << 20) -> tuple[PipeReader, PipeWriter]:
    """A connected ``(reader, writer)`` pair buffering at most about ``capacity`` bytes (plus
    one write). Use each end from its own thread::

        reader, writer = pipe()

        def produce() -> None:
            with writer:  # closes on success, aborts (reader raises PipeAborted) on error
                write_tar(entries, store_opener, writer, prefix="workspace/")

        thread = threading.Thread(target=produce)
        thread.start()
        with reader:  # closing it early breaks the producer's next write
            runtime_put_archive(reader)

    An exception in the producer never looks like a clean end of stream to the consumer.
    """
    if capacity < 1:
        raise ValueError("capacity must be positive")
    channel = _Channel(capacity)
    return PipeReader(channel), PipeWriter(channel)


class _StrictTarInfo(tarfile.TarInfo):
    """Headers that fail loudly. ``TarFile.next`` takes an empty, short or corrupt header
    anywhere but at the start as the end of the archive; a truncated save would then look
    like a workspace whose later files were deleted. Only the zero block that really ends an
    archive ends it here."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:  # type: ignore[attr-defined]  # real, not in typeshed
            raise
        except tarfile.HeaderError as exc:
            raise tarfile.ReadError(f"truncated or corrupt archive: {exc}") from None


def open_tar_stream(fileobj: IO[bytes] | io.RawIOBase | gzip.GzipFile) -> tarfile.TarFile:
    """A tar read sequentially (``r|``) from ``fileobj``, where truncation and corrupt headers
    raise ``tarfile.ReadError`` instead of ending the archive early."""
    return tarfile.open(fileobj=fileobj, mode="r|", tarinfo=_StrictTarInfo)
