"""A small seeded music generator: chords, bass, melody and drums in a random key, mode and tempo.

It gives the pipeline (and the demo) real musical structure to tokenize with no download:
the same (seed, index) always renders the same track. It knows what it played, so each track comes with a true
description in words (style, key, mode, tempo, instruments): the captions of an offline text-conditioning run."""

from dataclasses import dataclass

import numpy as np

from processing_music_hybrid import HOP_LENGTH, SAMPLE_RATE

# tempo range (BPM), bass notes and hats per beat, melody note probability per eighth, kick on every beat
STYLES = {
    "Ballad": {"tempo": (66, 84), "bass_per_beat": 1, "hats_per_beat": 1, "melody_density": 0.45, "kick_all": 0},
    "Pop": {"tempo": (96, 124), "bass_per_beat": 2, "hats_per_beat": 2, "melody_density": 0.6, "kick_all": 0},
    "Rock": {"tempo": (108, 150), "bass_per_beat": 2, "hats_per_beat": 2, "melody_density": 0.55, "kick_all": 0},
    "Electronic": {"tempo": (118, 134), "bass_per_beat": 4, "hats_per_beat": 4, "melody_density": 0.7, "kick_all": 1},
}
BEATS_PER_BAR = 2
BARS_PER_CHORD = 2
# harmonic amplitudes and envelope (attack, decay, sustain, release) of the three pitched parts
PAD = {"harmonics": [1, 0.3, 0.1], "attack": 0.15, "decay": 0.3, "sustain": 0.8, "release": 0.6}
BASS = {"harmonics": [1, 0, 0.11, 0, 0.04], "attack": 0.005, "decay": 0.2, "sustain": 0.5, "release": 0.03}
LEAD = {"harmonics": [1, 0.5, 0.33, 0.25, 0.2, 0.17], "attack": 0.01, "decay": 0.15, "sustain": 0.6, "release": 0.05}
# How the description names each style, note and subdivision of the beat.
STYLE_PHRASES = {"Ballad": "A ballad", "Pop": "A pop song", "Rock": "A rock song", "Electronic": "An electronic track"}
NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
NOTE_VALUES = {1: "on every beat", 2: "in eighth notes", 4: "in sixteenth notes"}
SCALES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10]}
# Chord roots as scale degrees (I-V-vi-IV and friends).
PROGRESSIONS = [[0, 4, 5, 3], [0, 5, 3, 4], [5, 3, 0, 4], [0, 3, 4, 4], [0, 3, 0, 4]]


@dataclass(frozen=True)
class TrackPlan:
    """What track `index` plays, drawn before anything is rendered (so its description costs no audio)."""

    style: str
    beat_frames: int  # a beat lasts a whole number of codec frames
    tonic: int  # MIDI pitch
    mode: str  # a key of SCALES
    progression: list
    motif: list

    @property
    def tempo(self) -> float:
        """Beats per minute, as played (the drawn tempo rounded to whole frames per beat)."""
        return 60.0 * SAMPLE_RATE / (self.beat_frames * HOP_LENGTH)

    def description(self) -> str:
        """A true description of the track in words: style, key, mode, tempo and what each instrument plays."""
        style = STYLES[self.style]
        drums = ("a kick on every beat and a snare on every second beat" if style["kick_all"]
                 else "kick and snare alternating on the beats")
        return (
            f"{STYLE_PHRASES[self.style]} in {NOTE_NAMES[self.tonic % 12]} {self.mode} at {round(self.tempo)} BPM: "
            f"sustained pad chords, bass {NOTE_VALUES[style['bass_per_beat']]}, a lead synth melody, {drums}, "
            f"hi-hats {NOTE_VALUES[style['hats_per_beat']]}"
        )


def generate_track(seed, index, seconds=8.0):
    """(mono float32 samples at 44.1 kHz, its TrackPlan) of track `index` for `seed`.

    The track is a sequence of bars, each chord of the progression held for BARS_PER_CHORD bars. A bar lasts a whole
    number of codec frames and is rendered once per chord (sounds that ring past its end wrap around to its start),
    so a held chord's bars are sample-identical and their codes repeat exactly: structure that a model can only
    predict from context, never from code frequencies alone."""
    rng = np.random.default_rng([seed, index])
    plan = _draw_plan(rng)
    style = STYLES[plan.style]
    beat = plan.beat_frames * HOP_LENGTH / SAMPLE_RATE
    drums = {"kick": _kick(), "snare": _snare(rng), "hat": _hat(rng)}  # one sound each, so bars can repeat exactly

    def pitch(degree, octave=0):
        scale = SCALES[plan.mode]
        return plan.tonic + 12 * (octave + degree // 7) + scale[degree % 7]

    bar_samples = BEATS_PER_BAR * plan.beat_frames * HOP_LENGTH
    bars = {
        root: _render_bar(root, beat, bar_samples, style, plan.motif, drums, pitch) for root in set(plan.progression)
    }
    num_samples = round(seconds * SAMPLE_RATE)
    num_bars = -(-num_samples // bar_samples)
    progression = plan.progression
    mix = np.concatenate([bars[progression[(bar // BARS_PER_CHORD) % len(progression)]] for bar in range(num_bars)])
    track = mix[:num_samples]
    return (0.8 * track / max(np.max(np.abs(track)), 1e-9)).astype(np.float32), plan


def track_plan(seed, index) -> TrackPlan:
    """The TrackPlan of track `index` without rendering it."""
    return _draw_plan(np.random.default_rng([seed, index]))


def _draw_plan(rng) -> TrackPlan:
    style_name = list(STYLES)[rng.integers(len(STYLES))]
    style = STYLES[style_name]
    beat_frames = round(60.0 / rng.uniform(*style["tempo"]) * SAMPLE_RATE / HOP_LENGTH)
    tonic = int(rng.integers(45, 57))  # A2..G#3
    mode = str(rng.choice(list(SCALES)))
    progression = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
    return TrackPlan(style_name, beat_frames, tonic, mode, progression, _draw_motif(rng, style))


def _draw_motif(rng, style):
    """The melody of one bar as (eighth, offset from the chord's root in scale steps, eighths held), used in every
    bar on the chord of the moment."""
    motif, degree = [], 7 + int(rng.integers(5))
    for eighth in range(2 * BEATS_PER_BAR):
        if rng.random() > style["melody_density"]:
            continue
        degree = min(max(degree + int(rng.integers(-2, 3)), 5), 14)
        if eighth % 2 == 0:  # strong beats land on a chord tone
            chord_tones = [tone + 7 * octave for tone in (0, 2, 4) for octave in (0, 1, 2)]
            degree = min(chord_tones, key=lambda tone: abs(tone - degree))
        motif.append((eighth, degree, 2 if rng.random() < 0.25 else 1))
    return motif


def _render_bar(root, beat, bar_samples, style, motif, drums, pitch):
    """One bar on chord `root`, as a loop: what rings past the bar's end is added to its start."""
    mix = np.zeros(3 * bar_samples, dtype=np.float64)  # room for tails: a bar lasts > 0.7 s
    for degree in (root, root + 2, root + 4):
        _add(mix, 0.0, _tone(pitch(degree, 1), BEATS_PER_BAR * beat, PAD), 0.07)
    bass_length = beat / style["bass_per_beat"]
    for step in range(BEATS_PER_BAR * style["bass_per_beat"]):
        _add(mix, step * bass_length, _tone(pitch(root, -1), bass_length * 0.9, BASS), 0.3)
    for eighth, degree, held in motif:
        _add(mix, eighth * beat / 2, _tone(pitch(root + degree, 1), held * beat / 2 * 0.95, LEAD), 0.12)
    for beat_index in range(BEATS_PER_BAR):
        time = beat_index * beat
        if style["kick_all"] or beat_index % 2 == 0:
            _add(mix, time, drums["kick"], 0.7)
        if beat_index % 2 == 1:
            _add(mix, time, drums["snare"], 0.35)
        for hat in range(style["hats_per_beat"]):
            _add(mix, time + hat * beat / style["hats_per_beat"], drums["hat"], 0.12)
    return mix.reshape(-1, bar_samples).sum(axis=0)


def _add(mix, time, sound, gain):
    start = round(time * SAMPLE_RATE)
    if start < mix.size:
        end = min(mix.size, start + sound.size)
        mix[start:end] += gain * sound[: end - start]


def _envelope(num_samples, attack, decay, sustain, release):
    """Attack to 1, exponential decay towards `sustain`, linear release over the last `release` seconds."""
    time = np.arange(num_samples) / SAMPLE_RATE
    shape = sustain + (1 - sustain) * np.exp(-time / decay)
    shape *= np.minimum(1.0, time / attack)
    release_samples = min(num_samples, int(release * SAMPLE_RATE))
    shape[num_samples - release_samples :] *= np.linspace(1, 0, release_samples)
    return shape


def _tone(midi_pitch, seconds, instrument):
    frequency = 440.0 * 2 ** ((midi_pitch - 69) / 12)
    time = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = np.zeros_like(time)
    for harmonic, amplitude in enumerate(instrument["harmonics"], start=1):
        wave += amplitude * np.sin(2 * np.pi * frequency * harmonic * time)
    shape = [instrument[key] for key in ("attack", "decay", "sustain", "release")]
    return wave * _envelope(time.size, *shape)


def _kick():
    time = np.arange(int(0.35 * SAMPLE_RATE)) / SAMPLE_RATE
    frequency = 45 + 110 * np.exp(-time / 0.04)  # the falling pitch that makes a kick
    phase = 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE
    return np.sin(phase) * np.exp(-time / 0.12)


def _snare(rng):
    time = np.arange(int(0.25 * SAMPLE_RATE)) / SAMPLE_RATE
    noise = rng.standard_normal(time.size) * np.exp(-time / 0.05)
    return 0.6 * noise + np.sin(2 * np.pi * 185 * time) * np.exp(-time / 0.03)


def _hat(rng):
    time = np.arange(int(0.06 * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.diff(rng.standard_normal(time.size + 1))  # differencing tilts white noise to the highs
    return noise * np.exp(-time / 0.015)
