"""Support code of generate_audio.py: checking a request, generating codes, decoding them to audio in chunks
while they arrive, and writing WAV files that stay valid while they grow."""
