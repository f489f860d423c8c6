"""Grab the frames nearest to given times from a video, in one pass over it.

The naive way (open, seek, decode for every frame) pays a file open and a decode from the
keyframe for each frame. Here the targets are sorted and read in one forward pass per video:
a seek only when the next target lies beyond the current GOP, decoding forward otherwise; packets
well before the target are decoded with `skip_frame=NONREF`, so B-frames nobody references are
never decoded; and only the chosen frames are converted to RGB, straight at the output size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import av
from PIL import Image

from lego_core.data.resize import output_size

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")


class FrameError(Exception):
    """A frame that cannot be had: past the end, a decode error. Carries a short reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class VideoInfo:
    fps: float
    width: int
    height: int
    duration: float      # seconds, from the container (may be an estimate)


@dataclass
class GrabbedFrame:
    image: Image.Image
    time: float          # the timestamp of the frame taken, seconds from the video's start


class VideoReader:
    """One open video, read forward for increasing target times."""

    def __init__(self, path: str | Path, *, size: int | None = None, resize: str = "short", threads: bool = True):
        try:
            self.container = av.open(str(path))
        except (av.error.FFmpegError, OSError) as e:
            raise FrameError("unreadable video", str(e)) from None
        if not self.container.streams.video:
            self.container.close()
            raise FrameError("no video stream", str(path))
        self.stream = self.container.streams.video[0]
        if threads:
            self.stream.thread_type = "AUTO"
        ctx = self.stream.codec_context
        tb = self.stream.time_base
        rate = self.stream.average_rate or self.stream.guessed_rate or 30
        if self.stream.duration is not None:
            duration = float(self.stream.duration * tb)
        elif self.container.duration is not None:
            duration = self.container.duration / av.time_base
        else:
            duration = math.inf
        self.info = VideoInfo(fps=float(rate), width=ctx.width, height=ctx.height, duration=duration)
        self.start = float(self.stream.start_time * tb) if self.stream.start_time is not None else 0.0
        self.out_size = output_size(ctx.width, ctx.height, size, resize)
        self._dt = 1.0 / self.info.fps
        self._frames = None          # the live decoding generator, None before the first seek
        self._prev = self._cur = None  # the last two decoded frames (time, av.VideoFrame)
        self._target = 0.0           # packets before (target - 1.5 frames) may skip non-ref frames
        self._last_key: float | None = None
        self._gop: float | None = None
        self._path = str(path)
        # A constant-rate video shows frame n at n / fps; a variable-rate one (a phone dropping
        # frames) says so by an average rate other than its base rate, and its frames' times are read
        # from its packets once, when a frame number is first asked for.
        self.constant_rate = self.stream.average_rate is not None and self.stream.average_rate == self.stream.base_rate
        self._frame_times: list[float] | None = None

    def close(self) -> None:
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- decoding -----------------------------------------------------------------------------

    def _decode_from(self, t_seek: float):
        """Seek to the keyframe at or before t_seek and yield (time, frame) in display order."""
        tb = self.stream.time_base
        self.container.seek(max(0, int((t_seek + self.start) / tb)), stream=self.stream, backward=True, any_frame=False)
        ctx = self.stream.codec_context
        for packet in self.container.demux(self.stream):
            if packet.pts is not None:
                early = float(packet.pts * tb) - self.start < self._target - 1.5 * self._dt
                ctx.skip_frame = "NONREF" if early else "DEFAULT"
            for frame in packet.decode():
                if frame.pts is None:
                    continue
                t = float(frame.pts * tb) - self.start
                if frame.key_frame:
                    if self._last_key is not None and t > self._last_key:
                        gap = t - self._last_key
                        self._gop = gap if self._gop is None else min(self._gop, gap)
                    self._last_key = t
                yield t, frame

    def _restart(self, t: float) -> None:
        """Seek for target t; seek further back when the demuxer lands after it (edit lists, B-frames)."""
        back = self._dt
        while True:
            self._frames = self._decode_from(t - back)
            self._prev, self._cur = None, next(self._frames, None)
            if self._cur is None or self._cur[0] <= t + self._dt / 2 or t - back <= 0:
                return
            back = max(2 * back, 1.0)

    def _should_seek(self, t: float) -> bool:
        if self._frames is None or self._cur is None:
            return True
        cur = self._cur[0]
        if t < (self._prev[0] if self._prev else cur):
            return True   # behind us: only happens for unsorted requests
        if t - cur < 0.25:
            return False
        # Decoding on is cheaper than a seek while t lies in the GOP already being decoded.
        return self._last_key is None or self._gop is None or t >= self._last_key + self._gop

    def frame_time(self, n: int) -> float:
        """When frame n (counting from 0 in presentation order, as ffmpeg's select=eq(n,N)) is shown,
        in seconds from the start."""
        if self.constant_rate:
            return n / self.info.fps
        if self._frame_times is None:
            self._frame_times = frame_times(self._path, self.start)
        if n >= len(self._frame_times):
            raise FrameError("frame past the end", f"frame {n} of {len(self._frame_times)}")
        return self._frame_times[n]

    def frame_at(self, t: float) -> GrabbedFrame:
        """The frame whose timestamp is nearest to t (seconds from the start)."""
        if t < 0:
            raise FrameError("negative time", f"{t:.3f}s")
        if t > self.info.duration + self._dt:
            raise FrameError("target past the end", f"{t:.3f}s > {self.info.duration:.3f}s")
        self._target = t
        try:
            if self._should_seek(t):
                self._restart(t)
            while self._cur is not None and self._cur[0] < t:
                nxt = next(self._frames, None)
                if nxt is None:
                    break
                self._prev, self._cur = self._cur, nxt
        except av.error.FFmpegError as e:
            self._frames = None
            raise FrameError("decode error", str(e)) from None
        candidates = [c for c in (self._prev, self._cur) if c is not None]
        if not candidates:
            raise FrameError("no frames decoded", f"at {t:.3f}s")
        best_t, frame = min(candidates, key=lambda c: abs(c[0] - t))
        if abs(best_t - t) > self._dt:
            raise FrameError("target past the end", f"{t:.3f}s, last frame at {best_t:.3f}s")
        w, h = self.out_size
        image = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_image()
        return GrabbedFrame(image=image, time=best_t)


def frame_times(path: str | Path, start: float = 0.0) -> list[float]:
    """Every frame's presentation time (seconds from `start`), in order, from the packets alone:
    the file is read through once, nothing is decoded."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            tb = stream.time_base
            times = [float(p.pts * tb) - start for p in container.demux(stream) if p.pts is not None and p.size]
    except (av.error.FFmpegError, OSError) as e:
        raise FrameError("unreadable video", str(e)) from None
    return sorted(times)


def grab_frames(path: str | Path, times: Sequence[float], *, size: int | None = None,
                resize: str = "short") -> list[GrabbedFrame | FrameError]:
    """The nearest frame for each time (any order), in one pass; errors are returned in place."""
    results: list[GrabbedFrame | FrameError] = [FrameError("not read")] * len(times)
    with VideoReader(path, size=size, resize=resize) as reader:
        for i in sorted(range(len(times)), key=lambda i: times[i]):
            try:
                results[i] = reader.frame_at(times[i])
            except FrameError as e:
                results[i] = e
    return results
