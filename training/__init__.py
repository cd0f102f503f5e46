"""Support code of run_clm_audio.py: the Accelerate training loop, random crops and their order, evaluation,
resumable checkpoints, the model card and the training plots."""
