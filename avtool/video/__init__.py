"""Shared video building blocks: probing, the FFmpeg binary, decoding."""
