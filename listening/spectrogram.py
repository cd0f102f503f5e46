"""A sample's spectrogram as a PNG beside its WAV, for comparing models by eye as well as by ear."""

from pathlib import Path

import soundfile


def write_spectrogram(wav_path, title) -> Path:
    """WAV -> PNG of its log-power spectrogram (0 to 11 kHz, where the music is); returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    from matplotlib.figure import Figure  # a figure object, not pyplot's global state: requests run in threads

    audio, rate = soundfile.read(wav_path, dtype="float32")
    figure = Figure(figsize=(6, 2.4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    # A few codec frames per column (hop 512): enough time resolution for onsets, enough bins for pitch.
    axes.specgram(audio + 1e-7, NFFT=1024, Fs=rate, noverlap=512, cmap="magma", scale="dB", vmin=-120)
    axes.set_ylim(0, 11025)
    axes.set_xlabel("seconds")
    axes.set_ylabel("Hz")
    axes.set_title(title, fontsize=10)
    png_path = Path(wav_path).with_suffix(".png")
    figure.savefig(png_path)
    return png_path

