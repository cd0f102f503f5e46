"""Support code of app.py, the listening page: the checkpoints it serves, the conditions a page offers, rendering
in the background, blind A/B preferences, spectrograms, and the Gradio page itself."""
