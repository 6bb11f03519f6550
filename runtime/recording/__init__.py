"""Recording and replay: `--record DIR` writes each stream's CNN features, recurrent states and
results in chunks (format.py, readable with numpy alone); `edge-run replay DIR` runs a head
engine over them offline (replay.py)."""
from runtime.recording.format import chunk_files, load_chunk, read_stream_chunks
from runtime.recording.recorder import Recorder, chunk_bytes, state_sizes

__all__ = ["Recorder", "chunk_bytes", "chunk_files", "load_chunk", "read_stream_chunks", "state_sizes"]
