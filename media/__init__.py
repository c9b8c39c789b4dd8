"""The SFU: peer connections, encoded-media forwarding, recording. Never imports signalling."""
