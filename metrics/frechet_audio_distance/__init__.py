"""The Frechet Audio Distance `evaluate` module: `evaluate.load("metrics/frechet_audio_distance")`."""
