"""Writes a 440 Hz tone as a WAV file and reads it back, from the env galley built."""
import sys

import numpy as np
import soundfile as sf

rate = 16000
tone = (np.sin(np.linspace(0, 440 * 2 * np.pi, rate)) * 0.5).astype("float32")
sf.write("tone.wav", tone, rate)
back, got_rate = sf.read("tone.wav", dtype="float32")
assert got_rate == rate and np.allclose(back, tone, atol=1e-4)
print(f"wrote and read back tone.wav with numpy {np.__version__} and libsndfile {sf.__libsndfile_version__}")
print(f"python {sys.version.split()[0]} from {sys.prefix}")
