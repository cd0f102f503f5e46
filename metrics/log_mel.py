"""Log-mel spectrograms: the codec-independent view of audio that needs no download. It serves the codec benchmark
(how far a round trip is from the original: L1 in dB and correlation) and the offline FAD embedding (one log-mel
vector per frame).

128 mel bands (Slaney-style triangles on the HTK mel scale), 2048-sample Hann windows, hop 512 at 44.1 kHz, power in
dB floored 80 dB below the clip's loudest bin, so silence in one clip and near-silence in the other cost at most
80 dB, not infinity.
"""

import numpy as np
import torch

SAMPLE_RATE = 44100
N_FFT = 2048
HOP_LENGTH = 512
NUM_MELS = 128
DYNAMIC_RANGE_DB = 80.0


def mel_filterbank(num_mels=NUM_MELS, n_fft=N_FFT, sample_rate=SAMPLE_RATE):
    """(num_mels, n_fft // 2 + 1) triangular filters evenly spaced in mel between 0 Hz and Nyquist."""
    def to_mel(hz):
        return 2595 * np.log10(1 + hz / 700)

    mel_points = np.linspace(0, to_mel(sample_rate / 2), num_mels + 2)
    hz_points = 700 * (10 ** (mel_points / 2595) - 1)
    bin_frequencies = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    rising = (bin_frequencies - lower) / (centre - lower)
    falling = (upper - bin_frequencies) / (upper - centre)
    return np.maximum(0, np.minimum(rising, falling))


_FILTERBANK = mel_filterbank()


def log_mel(waveform):
    """A mono 44.1 kHz waveform (n,) -> (frames, 128) float64 log-mel power in dB, floored at max - 80 dB."""
    waveform = torch.as_tensor(np.asarray(waveform, dtype=np.float64).reshape(-1))
    spectrum = torch.stft(waveform, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT, dtype=torch.float64),
                          center=True, pad_mode="constant", return_complex=True)
    power = _FILTERBANK @ spectrum.abs().square().numpy()
    decibels = 10 * np.log10(np.maximum(power, 1e-20))
    return np.maximum(decibels, decibels.max() - DYNAMIC_RANGE_DB).T


def log_mel_distance(reference, reconstruction):
    """(mean absolute difference in dB, Pearson correlation) of two clips' log-mel spectrograms, over the frames of
    the shorter; the reconstruction is floored at the reference's floor, so both share one 80 dB range."""
    first, second = log_mel(reference), log_mel(reconstruction)
    frames = min(len(first), len(second))
    first, second = first[:frames], np.maximum(second[:frames], first.min())
    return float(np.abs(first - second).mean()), float(np.corrcoef(first.reshape(-1), second.reshape(-1))[0, 1])
