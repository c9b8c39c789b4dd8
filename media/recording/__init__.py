"""Call recording (opt-in per call): each party's encoded frames muxed into its own Matroska
file, never decoded or re-encoded (DESIGN §6).

- ``recorder``: ``CallRecorder``, what the SFU starts and closes; taps publications on the
  event loop and feeds the writer's thread.
- ``writer``: ``RecordingWriter``, the muxing (PyAV), one file per party.
- ``timeline``: arrival-anchored, RTP-smoothed pts and the jitter-buffer release delay.
- ``bitstream``: the codec parameters the muxer needs, read from encoded frames.
- ``files``: file naming and layout, ``Recording``, ``scan_recordings``.
"""
