"""A 16-bit PCM WAV writer that keeps the file valid while it grows.

Audio is appended chunk by chunk; after every chunk the RIFF and data sizes in the header
are rewritten and the file is flushed and fsynced, so a reader (soundfile, Python's `wave`)
opening it at any moment, even after the writing process was killed, sees a well-formed
WAV holding every chunk completed so far.
"""

import os
import struct

import numpy as np

_HEADER_BYTES = 44
_RIFF_SIZE_OFFSET = 4
_DATA_SIZE_OFFSET = 40
_BYTES_PER_SAMPLE = 2
_PCM_FORMAT = 1
# The RIFF size field is 32 bits: about 6.7 hours of 44.1 kHz mono.
_MAX_DATA_BYTES = 0xFFFFFFFF - (_HEADER_BYTES - 8)


class StreamingWavWriter:
    """Append float audio in [-1, 1] (shape (n,) or (n, channels)) to a WAV file, crash-safe after each append."""

    def __init__(self, path, sample_rate, channels=1):
        self.path = os.fspath(path)
        self.sample_rate = sample_rate
        self.channels = channels
        self.data_bytes = 0
        # The empty WAV takes its name only once its header is on disk: the path never holds a 0-byte file.
        empty = self.path + ".new"
        try:
            with open(empty, "wb") as file:
                file.write(self._header())
                file.flush()
                os.fsync(file.fileno())
            os.replace(empty, self.path)
        except BaseException:  # interrupted: leave nothing
            if os.path.exists(empty):
                os.remove(empty)
            raise
        self._file = open(self.path, "r+b")

    @property
    def num_frames(self):
        """Samples per channel written so far."""
        return self.data_bytes // (_BYTES_PER_SAMPLE * self.channels)

    def append(self, samples):
        pcm = _to_pcm16(samples, self.channels)
        if self.data_bytes + len(pcm) > _MAX_DATA_BYTES:
            raise ValueError(f"{self.path}: a WAV file cannot hold more than 4 GiB of audio")
        self._file.seek(0, os.SEEK_END)
        self._file.write(pcm)
        self.data_bytes += len(pcm)
        # Data first, sizes after: a kill in between leaves the previous, still consistent sizes.
        self._sync()
        self._file.seek(_RIFF_SIZE_OFFSET)
        self._file.write(struct.pack("<I", _HEADER_BYTES - 8 + self.data_bytes))
        self._file.seek(_DATA_SIZE_OFFSET)
        self._file.write(struct.pack("<I", self.data_bytes))
        self._sync()

    def close(self):
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _header(self):
        block_align = self.channels * _BYTES_PER_SAMPLE
        return b"".join(
            [
                b"RIFF",
                struct.pack("<I", _HEADER_BYTES - 8 + self.data_bytes),
                b"WAVE",
                b"fmt ",
                struct.pack(
                    "<IHHIIHH",
                    16,
                    _PCM_FORMAT,
                    self.channels,
                    self.sample_rate,
                    self.sample_rate * block_align,
                    block_align,
                    8 * _BYTES_PER_SAMPLE,
                ),
                b"data",
                struct.pack("<I", self.data_bytes),
            ]
        )

    def _sync(self):
        self._file.flush()
        os.fsync(self._file.fileno())


def write_wav(path, samples, sample_rate):
    """Write a whole WAV file via a temporary name, so an interruption never leaves a partial file at `path`."""
    samples = np.asarray(samples)
    temporary = f"{os.fspath(path)}.partial"
    with StreamingWavWriter(temporary, sample_rate, channels=1 if samples.ndim == 1 else samples.shape[1]) as writer:
        writer.append(samples)
    os.replace(temporary, path)


def _to_pcm16(samples, channels):
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2 or samples.shape[1] != channels:
        raise ValueError(f"expected audio of shape (n,) or (n, {channels}), got {samples.shape}")
    # Symmetric scaling by 32767 so that +1.0 and -1.0 both map exactly, as soundfile does.
    return np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
