"""Decode codes to audio while they are still being generated, in overlapping windows.

The codec decoder is convolutional: the audio of frame t depends on a few frames either
side. Each chunk is therefore decoded together with `context_frames` frames before and
after it and only the chunk's own samples are kept; with a context at least as wide as
the decoder's receptive field the result equals a one-shot decode of the whole sequence.
The price is latency: a frame's audio is ready once `context_frames` later frames exist.

A codec that renders whole clips (the fitted codec: its phases run from the clip's start and its level is set for
the whole clip; `renders_whole_clips`) is decoded once, at flush, so that no chunk seam can be heard.
"""

import numpy as np
import torch

# The DAC 44.1 kHz decoder's output for frame t depends on frames t - 10 ... t + 10 (measured by perturbing one
# frame); a little more context makes chunked decoding equal to a one-shot decode.
DECODER_CONTEXT_FRAMES = 16


class ChunkedDecoder:
    """Collects frames (B, K, t) as they arrive and returns the audio (B, n) that has become final.

    Frames before `start_frame` (a prompt) are decoding context only: no audio is returned for them.
    """

    def __init__(self, codec, chunk_frames=86, context_frames=DECODER_CONTEXT_FRAMES, start_frame=0):
        if chunk_frames < 1 or context_frames < 0:
            raise ValueError(
                f"chunk_frames must be positive and context_frames non-negative, got {chunk_frames}, {context_frames}"
            )
        self.codec = codec
        self.hop_length = codec.identity["hop_length"]
        self.chunk_frames = chunk_frames
        self.context_frames = context_frames
        self.emitted_frames = start_frame
        self._chunks = []
        self._num_frames = 0
        self.whole_clips = getattr(codec, "renders_whole_clips", False)

    def push(self, codes):
        """Add frames; returns the audio of every chunk that now has its full right context (maybe none)."""
        self._chunks.append(codes.detach().to("cpu", torch.long))
        self._num_frames += codes.shape[-1]
        audio = []
        while (not self.whole_clips
               and self._num_frames - self.emitted_frames >= self.chunk_frames + self.context_frames):
            audio.append(self._decode_until(self.emitted_frames + self.chunk_frames))
        return self._concatenate(audio)

    def flush(self):
        """The audio of all remaining frames (the sequence has ended, so there is no right context to wait for)."""
        if self._num_frames <= self.emitted_frames:
            return self._concatenate([])
        return self._decode_until(self._num_frames)

    def _decode_until(self, end_frame):
        codes = torch.cat(self._chunks, dim=-1)
        self._chunks = [codes]
        window_start = 0 if self.whole_clips else max(0, self.emitted_frames - self.context_frames)
        window_end = min(self._num_frames, end_frame + self.context_frames)
        with torch.no_grad():
            audio = self.codec.decode(codes[..., window_start:window_end])
        first = (self.emitted_frames - window_start) * self.hop_length
        last = (end_frame - window_start) * self.hop_length
        self.emitted_frames = end_frame
        return audio[:, first:last].float().cpu().numpy()

    def _concatenate(self, pieces):
        if not pieces:
            batch = self._chunks[0].shape[0] if self._chunks else 0
            return np.zeros((batch, 0), dtype=np.float32)
        return np.concatenate(pieces, axis=1)
