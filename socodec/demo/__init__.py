"""The web demo of ``socodec demo`` (the ``[demo]`` extra: gradio, matplotlib).

:mod:`~socodec.demo.app` holds what the buttons do as plain functions (no gradio), and builds and
launches the Gradio app around them.
"""
