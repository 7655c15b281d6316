"""Training images that stay in host memory (the set is larger than the GPU), fed to the device
so that gathering and copying overlap the training steps.

``HostBatches(images, device, batch)`` owns a few reused batch buffers (page-locked on CUDA,
so a copy from them is a DMA transfer that does not block the host). For each epoch a
background thread gathers each step's images into a free buffer, in the epoch's order; the
main thread starts each buffer's copy to the device on a side stream one step ahead, and the
compute stream waits for that copy only where the step uses it. A buffer is refilled once its
copy has finished. On a CPU the thread still gathers ahead, and the buffer itself is the batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import torch

DEPTH = 3  # buffers: one being copied, one gathered ahead, one spare for the thread


class HostBatches:
    def __init__(
        self, images: torch.Tensor, device: torch.device, batch: int, *, depth: int = DEPTH
    ) -> None:
        if batch < 1 or depth < 2:
            raise ValueError(f"batch must be >= 1 and depth >= 2, but got {batch=}, {depth=}")
        self.images, self.device, self.batch = images, device, batch
        self.cuda = device.type == "cuda"
        shape = (min(batch, len(images)), *images.shape[1:])
        self.buffers = [
            torch.empty(shape, dtype=images.dtype, pin_memory=self.cuda) for _ in range(depth)
        ]
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def epoch(self, order: torch.Tensor, steps: int) -> Iterator[torch.Tensor]:
        """The images of steps ``0..steps-1``, step i being ``images[order[i*batch:(i+1)*batch]]``,
        on the device (on a CPU: a buffer valid until the next one is asked for)."""
        order = order.cpu()
        free: queue.Queue = queue.Queue()
        ready: queue.Queue = queue.Queue()
        for buf in self.buffers:
            free.put((buf, None))
        stop = threading.Event()
        worker = threading.Thread(
            target=self._gather, args=(order, steps, free, ready, stop), daemon=True
        )
        worker.start()
        try:
            if not self.cuda:
                for _ in range(steps):
                    buf = _take(ready)
                    yield buf
                    free.put((buf, None))  # the caller has made its own copy by now
                return
            upcoming = self._copy(_take(ready), free)
            for i in range(steps):
                images, done = upcoming
                upcoming = self._copy(_take(ready), free) if i + 1 < steps else None
                compute = torch.cuda.current_stream(self.device)
                compute.wait_event(done)  # the step waits for its copy, the host does not
                images.record_stream(compute)  # made on the side stream, freed after its use
                yield images
        finally:
            stop.set()
            worker.join()

    def _copy(self, buf: torch.Tensor, free: queue.Queue) -> tuple[torch.Tensor, torch.cuda.Event]:
        """Start copying ``buf`` to the device on the side stream; the buffer goes back to the
        thread with the event that marks the copy's end."""
        with torch.cuda.stream(self.stream):
            images = buf.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        free.put((buf, done))
        return images, done

    def _gather(
        self,
        order: torch.Tensor,
        steps: int,
        free: queue.Queue,
        ready: queue.Queue,
        stop: threading.Event,
    ) -> None:
        b = self.batch
        if self.cuda and self.device.index is not None:
            torch.cuda.set_device(self.device)  # this thread's events belong to that GPU
        try:
            for i in range(steps):
                while True:
                    try:
                        buf, copied = free.get(timeout=0.05)
                        break
                    except queue.Empty:
                        if stop.is_set():
                            return
                if copied is not None:
                    copied.synchronize()  # its copy to the device has finished
                idx = order[i * b : (i + 1) * b]
                out = buf[: len(idx)]
                torch.index_select(self.images, 0, idx, out=out)
                ready.put(out)
        except BaseException as exc:  # handed to the training loop, which raises it
            ready.put(exc)


def _take(ready: queue.Queue) -> torch.Tensor:
    item = ready.get()
    if isinstance(item, BaseException):
        raise item
    return item


__all__ = ["HostBatches"]
