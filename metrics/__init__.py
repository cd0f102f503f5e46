"""Metrics of generated audio: the Frechet Audio Distance as an `evaluate` module (frechet_audio_distance/) and the
embeddings it compares (audio_embeddings.py)."""
