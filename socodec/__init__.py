"""SoCodec speech codec."""
